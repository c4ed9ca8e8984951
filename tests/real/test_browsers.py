"""Real browsers end to end: compute matches onnxruntime, faults really happen and are observed.

Each test launches its own browser(s) and cleans them up; the session fixture in conftest.py
asserts that no browser process of this session is left at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest

from real.browsers import BrowserPool, leftover_browser_pids
from shardtwin.errors import RealRunError
from real.protocol import FaultApplied, Heartbeat
from real.server import MessageReceived, WorkerConnected, WorkerDisconnected, WorkerRejected, WorkerReportedError

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]
X = np.random.default_rng(1).standard_normal((1, 16, 32)).astype(np.float32)


def run(coro, timeout: float = 75):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _compute(conn, srv, name, ref, backend, shard):
    loaded = await conn.load_shard(shard, srv.shard_url(name), backend)
    result = await conn.run(100 + shard, shard, 0, {"x": X})
    err = float(np.abs(result.tensors["y"] - ref(X)).max())
    return loaded, result, err


@pytest.mark.parametrize("kind,launcher", [("chromium", "process"), ("firefox", "process"),
                                           ("chromium", "playwright"), ("firefox", "playwright")])
def test_wasm_matches_onnxruntime_and_webgpu_runs_or_falls_back(kind, launcher, tiny_model, session_factory,
                                                                record_property, need):
    need(kind)
    shard_dir, name, ref = tiny_model

    async def body():
        async with session_factory(kind, shard_dir, launcher=launcher) as (srv, handle, conn, rec):
            if kind == "firefox":
                with pytest.raises(RealRunError, match="CDP"):
                    await handle.set_cpu_throttle(2.0)
            wasm = await _compute(conn, srv, name, ref, "wasm", 0)
            gpu = await _compute(conn, srv, name, ref, "webgpu", 1)
            return handle.launcher, conn.capabilities, wasm, gpu
    launched_by, caps, (w_loaded, w_res, w_err), (g_loaded, g_res, g_err) = run(body())
    assert launched_by == launcher
    record_property("webgpu", f"{g_loaded.backend_used} {g_loaded.fallback_reason}")
    assert caps["browser"] == kind and caps["cross_origin_isolated"] is True
    assert w_loaded.backend_used == "wasm" and w_loaded.fallback_reason is None
    assert w_err < 1e-5 and w_res.ms > 0
    # WebGPU either really ran, or fell back to wasm and said why
    assert (g_loaded.backend_used, g_loaded.fallback_reason is None) in (("webgpu", True), ("wasm", False))
    assert g_err < 1e-4


def test_injected_shard_error_and_memory_pressure(tiny_model, session_factory, need):
    need("chromium")
    shard_dir, name, ref = tiny_model

    async def body():
        async with session_factory("chromium", shard_dir) as (srv, handle, conn, rec):
            await conn.load_shard(0, srv.shard_url(name), "wasm")
            await handle.set_cpu_throttle(3.0)  # CDP over the debugging pipe (process launcher)
            slow = await conn.run(2, 0, 0, {"x": X})
            await handle.set_cpu_throttle(1.0)
            await conn.send_inject("shard_error", shard=0, count=1)
            with pytest.raises(WorkerReportedError) as info:
                await conn.run(1, 0, 0, {"x": X})
            again = await conn.run(1, 0, 1, {"x": X})
            await asyncio.sleep(0.3)
            rss0 = handle.rss_mb()
            await conn.send_inject("memory_pressure", mb=96)
            ack = await rec.wait(lambda e: isinstance(e, MessageReceived) and isinstance(e.message, FaultApplied)
                                 and e.message.fault == "memory_pressure", 20)
            rss1 = handle.rss_mb()
            return info.value.report, again, ack.message, rss1 - rss0, slow
    report, again, ack, grew, slow = run(body())
    assert np.abs(slow.tensors["y"] - ref(X)).max() < 1e-5
    assert report.kind == "shard_error" and report.injected and report.req == 1
    assert np.abs(again.tensors["y"] - ref(X)).max() < 1e-5
    assert ack.held_mb == 96 and grew > 30  # touched pages are resident; V8 GC frees other garbage meanwhile


def test_sigkill_is_observed_as_close_within_2s_and_leaves_no_process(tiny_model, session_factory, record_property, need):
    need("chromium")

    async def body():
        async with session_factory("chromium", tiny_model[0], launcher="playwright") as (srv, handle, conn, rec):
            await handle.set_cpu_throttle(2.0)  # the `slow` fault's CDP path through Playwright
            await handle.set_cpu_throttle(1.0)
            pids = handle.pids()
            t0 = time.monotonic()
            handle.kill()
            closed = await rec.wait(lambda e: isinstance(e, WorkerDisconnected), 2.0)
            latency = closed.t - t0
            assert await handle.wait_exited(2.0)
            await asyncio.sleep(0.2)
            alive = [p for p in pids if p in leftover_browser_pids() or _alive(p)]
            return latency, closed, pids, alive, handle
    latency, closed, pids, alive, handle = run(body())
    record_property("sigkill_to_close_ms", round(latency * 1000, 1))
    assert closed.browser_id == "w0" and latency < 2.0
    assert len(pids) > 1 and alive == []


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_sigkilled_chromium_leaves_neither_its_profile_nor_its_socket_dir(need):
    """Chromium's ProcessSingleton puts its socket in /tmp/org.chromium.Chromium.*/ (SingletonSocket
    in the profile links there); a SIGKILLed Chromium cannot remove it, so close() must."""
    need("chromium")

    async def body():
        async with BrowserPool() as pool:
            h = await pool.launch("chromium", "about:blank")
            link = h.profile_dir / "SingletonSocket"
            deadline = time.monotonic() + 10
            while not link.is_symlink() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            socket_dir = Path(os.readlink(link)).parent
            existed = socket_dir.is_dir()
            h.kill()
            assert await h.wait_exited(5)
            await h.close()
            return h.profile_dir, socket_dir, existed
    profile, socket_dir, existed = run(body())
    assert socket_dir.name.startswith("org.chromium.Chromium.") and existed
    assert not socket_dir.exists() and not profile.exists()


def test_hang_stops_heartbeats_then_they_resume(tiny_model, session_factory, need):
    need("chromium")

    async def body():
        async with session_factory("chromium", tiny_model[0], heartbeat_ms=100) as (srv, handle, conn, rec):
            await asyncio.sleep(0.5)
            t_inject = time.monotonic()
            await conn.send_inject("hang", ms=1500)
            await asyncio.sleep(2.3)
            return t_inject, [e.t for e in rec.of(MessageReceived, "w0") if isinstance(e.message, Heartbeat)]
    t_inject, beats = run(body())
    gaps = np.diff(beats)
    before = [b for b in beats if b < t_inject]
    after = [b for b in beats if b > t_inject + 1.4]
    assert len(before) >= 3 and gaps[: len(before) - 1].max() < 0.5
    assert 1.3 < gaps.max() < 2.5  # the page's main thread was really blocked
    assert len(after) >= 3          # and heartbeats resumed


def test_disconnect_then_reconnect_with_same_id(tiny_model, session_factory, need):
    need("chromium")

    async def body():
        async with session_factory("chromium", tiny_model[0], heartbeat_ms=100) as (srv, handle, conn, rec):
            t0 = time.monotonic()
            await conn.send_inject("disconnect", delay_ms=600)
            closed = await rec.wait(lambda e: isinstance(e, WorkerDisconnected), 3)
            back = await rec.wait(lambda e: isinstance(e, WorkerConnected) and e.reconnect, 5)
            beat = await rec.wait(lambda e: isinstance(e, MessageReceived) and e.t > back.t
                                  and isinstance(e.message, Heartbeat), 2)
            return t0, closed, back, beat, srv.connections.get("w0")
    t0, closed, back, beat, live = run(body())
    assert closed.browser_id == back.browser_id == "w0" and closed.code == 4001
    assert back.t - closed.t >= 0.5
    assert live is back.conn and beat.browser_id == "w0"


def test_wrong_secret_is_rejected(tiny_model, session_factory, need):
    need("chromium")

    async def body():
        async with session_factory("chromium", tiny_model[0], url_secret="guess", connect=False) as (srv, h, _, rec):
            rejected = await rec.wait(lambda e: isinstance(e, WorkerRejected), 20)
            await asyncio.sleep(0.3)
            return rejected, rec.of(WorkerConnected), dict(srv.connections)
    rejected, connected, conns = run(body())
    assert rejected.browser_id == "w0" and "secret" in rejected.reason
    assert connected == [] and conns == {}


def test_page_stops_when_the_server_goes_away(tiny_model, session_factory, need):
    need("chromium")

    async def body():
        async with session_factory("chromium", tiny_model[0]) as (srv, handle, conn, rec):
            await srv.__aexit__(None, None, None)  # the coordinator side vanishes
            await asyncio.sleep(1.0)
            # the page closed its own window: no page is left (a debugging-pipe Chromium stays up,
            # idle, until the pool or the parent-death signal ends it)
            targets = (await handle._cdp.send("Target.getTargets"))["targetInfos"]
            return [t for t in targets if t["type"] == "page"]
    assert run(body()) == []


ORPHAN_CHILD = """
import asyncio, sys
import real.browsers as b
b.MARKER_PREFIX = sys.argv[3]
from real.server import WorkerServer
async def main():
    async with WorkerServer(sys.argv[4], "s", on_event=lambda e: None) as srv, b.BrowserPool(launcher=sys.argv[2]) as pool:
        h = await pool.launch(sys.argv[1], srv.worker_url("w1"), browser_id="w1")
        await srv.wait_connected("w1", 30)
        print(",".join(map(str, h.pids())), flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.mark.parametrize("launcher", ["process", "playwright"])
def test_browser_dies_when_shardtwin_is_kill_9d(launcher, tiny_model, need):
    import os
    import signal
    import subprocess
    import sys

    import real.browsers as browsers
    need("chromium")
    child = subprocess.Popen([sys.executable, "-c", ORPHAN_CHILD, "chromium", launcher, browsers.MARKER_PREFIX,
                              str(tiny_model[0])], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pids = [int(p) for p in child.stdout.readline().strip().split(",") if p]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(pids) > 1 and [p for p in pids if _alive(p)] == []

"""Remote browsers (real/remote.py): join URLs opened by a browser shardtwin did not launch, and
browsers launched through a Playwright connect endpoint.

The "second host" is Chromium started here as a plain process in its own session and process
group, with its own profile outside shardtwin's marker prefix (so BrowserPool knows nothing of
it), given only the join URL printed by the run - what a person on another machine would do.
It shares this machine's loopback (no network namespace: that needs privileges these tests do
not assume; a second machine needs --bind or ssh -L, see the README).

- join: MiniLM 2 shards, chromium-0 local + chromium-1 remote; the remote slot's browser_crash is
  delivered in-page (socket closed with 4002, the page stops itself), detected as a closed
  connection and recovered by failover to chromium-0 (the slot is then relaunched as a spare:
  a rejoin URL the second host opens again) or by restart (fence, rejoin URL, shard reloaded
  there). Every request completes and matches the onnxruntime reference (cosine >= 0.99999).
- --bind to this host's non-loopback address: the join works, but the page is no secure
  context there (no navigator.gpu, no cross-origin isolation): webgpu falls back to WASM.
- the CLI prints one join URL per remote slot on stderr and records them in the result JSON.
- join timeout: nobody opens the URL -> BrowserExited "remote did not join within ...".
- fencing / stale secrets: a page with a revoked join secret is refused at its hello.
- Playwright endpoint: `playwright launch-server` from the Python package's own driver (same
  version as the client: connect() needs matching major.minor) with Debian Chromium; a short
  MiniLM run through --playwright-endpoint, and its browser_crash (connection closed abruptly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

import real.browsers as browsers
from events.scenario import parse_scenario
from events.schema import EventKind as K
from real.remote import FENCE_CODE, RemoteOptions, split_browser_spec, last_slots, bind_warning
from real.run import run_real
from sim.profile import DEFAULT_PROFILE

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SEQ = 32


@pytest.fixture(autouse=True)
def _chromium(need):
    need("chromium")


class SecondHost:
    """Plain Chromium processes, each in its own session, each opening one URL; all killed at close."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.root = Path(tempfile.mkdtemp(prefix="shardtwin-secondhost-"))
        self.opened: list[str] = []

    def open(self, url: str) -> None:
        exe = browsers.find_executable("chromium")
        profile = self.root / f"p{len(self.procs)}"
        self.opened.append(url)
        self.procs.append(subprocess.Popen(
            ["nice", "-n", "15", exe, "--headless=new", *browsers.CHROMIUM_ARGS, f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    def pids(self) -> list[int]:
        marker = str(self.root)
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE and any(marker in a for a in p.info["cmdline"] or ()):
                    out.append(p.pid)
        return out

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(5)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for profile in self.root.glob("p*"):   # SIGKILLed: Chromium left its /tmp socket dir behind
            browsers._remove_profile(profile)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def second_host():
    host = SecondHost()
    yield host
    host.close()
    assert not host.pids(), "second-host browser processes left behind"


def _scenario(faults=(), iterations=8, browsers_=("chromium", "chromium"), strategy="failover", **extra):
    return parse_scenario({
        "model": "all-MiniLM-L6-v2", "shards": 2, "browsers": list(browsers_),
        "fault_tolerance_level": "low", "recovery_strategy": strategy,
        "tolerance": {"detector_timeout_ms": 30000.0},
        "workload": {"kind": "iterations", "iterations": iterations, "seq_len": SEQ},
        "faults": list(faults), **extra})


def _assert_mid_run(run) -> None:
    """The fault hit while requests were still being served (not after the workload ended)."""
    ev = run.log.events
    t_fault = [e.t_ms for e in ev if e.kind == K.FAULT_INJECTED]
    assert t_fault and any(e.kind == K.REQUEST_COMPLETED and e.t_ms > t_fault[0] for e in ev), "fault after the work"


def _assert_all_correct(run) -> None:
    ev = run.log.events
    submitted = sorted(e.request_id for e in ev if e.kind == K.REQUEST_SUBMITTED)
    completed = sorted(e.request_id for e in ev if e.kind == K.REQUEST_COMPLETED)
    assert submitted and completed == submitted, (submitted, completed)
    cosines = run.shards.reference_cosines()
    assert set(completed) <= set(cosines), (completed, sorted(cosines))
    assert all(c >= 0.99999 for c in cosines.values()), cosines


def _no_own_browsers_left() -> None:
    assert not browsers.leftover_browser_pids(), browsers.leftover_browser_pids()


# --- pure parts ------------------------------------------------------------------------

def test_browser_spec_and_slots():
    assert split_browser_spec(["chromium", "remote", "remote:firefox"]) == (["chromium", "chromium", "firefox"], (1, 2))
    assert last_slots(3, 2) == (1, 2)
    with pytest.raises(Exception):
        last_slots(2, 3)
    with pytest.raises(Exception):
        split_browser_spec(["chromium:x"])
    assert bind_warning("127.0.0.1") is None and bind_warning("::1") is None
    assert "reachable" in bind_warning("0.0.0.0")


# --- join URL ------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["failover", "restart"])
def test_remote_slot_joins_crashes_in_page_recovers_and_rejoins(second_host, strategy):
    """failover: shards move to chromium-0, the slot rejoins later as a spare; restart: the
    coordinator fences the slot and relaunches it, i.e. announces a rejoin URL and waits for it."""
    joins: list[dict] = []

    def on_join(entry: dict) -> None:
        joins.append(entry)
        second_host.open(entry["url"])

    s = _scenario([{"type": "browser_crash", "at_ms": 1500.0, "browser": "chromium-1"}], iterations=30,
                  strategy=strategy)
    t0 = time.monotonic()
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=300,
                   remote=RemoteOptions(remote_slots=(1,), join_timeout_s=60, on_join=on_join, announce=False))
    wall = time.monotonic() - t0
    ev = run.log.events
    summary = [(round(e.t_ms), str(e.kind), e.browser, None if e.kind == K.BROWSER_READY else e.detail) for e in ev
               if e.kind in (K.BROWSER_READY, K.FAULT_INJECTED, K.FAILURE_DETECTED, K.RECOVERY_COMPLETED,
                             K.CONNECTION_CLOSED, K.BROWSER_CRASHED, K.REQUEST_FAILED, K.BROWSER_LAUNCH_REQUESTED)]
    assert run.aborted is None, summary
    # the remote slot was announced (not launched) and became READY through its join URL
    assert joins[0]["browser"] == "chromium-1" and joins[0]["incarnation"] == 1
    assert joins[0]["url"].startswith("http://127.0.0.1:") and "/worker.html?id=chromium-1" in joins[0]["url"]
    assert "#secret=" in joins[0]["url"]
    ready = [e for e in ev if e.kind == K.BROWSER_READY and e.browser == "chromium-1"]
    assert ready, summary
    assert not [e for e in ev if e.kind == K.PROCESS_OBSERVED and e.browser == "chromium-1"]
    # the in-page crash closed its socket (4002), was detected and failed over to chromium-0
    assert any(e.kind == K.CONNECTION_CLOSED and e.browser == "chromium-1" for e in ev), summary
    assert any(e.kind == K.FAILURE_DETECTED and e.browser == "chromium-1" for e in ev), summary
    done = [e.details() for e in ev if e.kind == K.RECOVERY_COMPLETED and e.browser == "chromium-1"]
    assert done and done[0]["action"] == strategy, summary
    t_fault = next(e.t_ms for e in ev if e.kind == K.FAULT_INJECTED)
    assert any(e.kind == K.SHARD_COMPLETED and e.browser == "chromium-1" and e.t_ms < t_fault for e in ev), \
        "the remote slot computed nothing before its crash"
    _assert_mid_run(run)
    _assert_all_correct(run)
    # failover relaunches the failed slot as a spare, restart relaunches it: a rejoin URL, a new secret
    assert len(joins) >= 2 and joins[1]["incarnation"] == 2 and joins[1]["url"] != joins[0]["url"], joins
    if strategy == "restart":   # the restarted slot took its shard back and computed again
        t_rejoin = [e.t_ms for e in ev if e.kind == K.BROWSER_READY and e.browser == "chromium-1"][1]
        assert any(e.kind == K.SHARD_COMPLETED and e.browser == "chromium-1" and e.t_ms > t_rejoin for e in ev)
    print(f"\nremote join run: {wall:.1f} s wall, join wait {ready[0].value:.0f} ms, joins {len(joins)}; "
          f"{json.dumps(summary)[:3000]}", file=sys.stderr)
    _no_own_browsers_left()


def test_remote_slot_that_nobody_opens_times_out():
    s = _scenario(iterations=1)
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=120,
                   remote=RemoteOptions(remote_slots=(1,), join_timeout_s=3, announce=False))
    exits = [e.details()["reason"] for e in run.log.events if e.kind == K.BROWSER_CRASHED and e.browser == "chromium-1"]
    assert exits and exits[0] == "remote did not join within 3 s", [(str(e.kind), e.browser, e.detail)
                                                                    for e in run.log.events][-30:]
    _no_own_browsers_left()


def test_fenced_join_is_refused_and_a_new_join_works(tiny_model, second_host):
    """KillBrowser on a join slot: its socket closes with 4003 and its secret is revoked, so its
    page (or anyone holding that URL) is refused at the hello; the next incarnation's URL works."""
    from real.remote import JoinSlot
    from real.server import WorkerConnected, WorkerRejected, WorkerServer
    from tests.real.conftest import SECRET, Recorder
    shard_dir, _, _ = tiny_model

    async def main():
        rec = Recorder()
        async with WorkerServer(shard_dir, SECRET, on_event=rec) as srv:
            old = JoinSlot("chromium", "r1", srv, 60, rejoin=False)
            second_host.open(old.url)
            joined = await rec.wait(lambda e: isinstance(e, WorkerConnected) and e.browser_id == "r1", 60)
            old.mark_joined(joined.conn)
            old.kill()
            await asyncio.wait_for(joined.conn.closed.wait(), 10)
            assert old.closed_with == FENCE_CODE and old.exit_reason == "fenced"
            second_host.open(old.url)   # a stale page with the revoked secret
            bad = await rec.wait(lambda e: isinstance(e, WorkerRejected) and e.browser_id == "r1", 60)
            assert "secret" in bad.reason
            new = JoinSlot("chromium", "r1", srv, 60, rejoin=True)
            assert new.url != old.url
            assert not srv._secret_ok("r2", new.url.split("#secret=")[1])   # a join secret names one id
            second_host.open(new.url)
            conn = await srv.wait_connected("r1", 60)
            assert await conn.ping() < 1000
            new.kill()
    asyncio.run(main())


def _non_loopback_ipv4() -> str | None:
    import ipaddress
    import socket
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return None


def test_join_over_a_non_loopback_address_has_no_webgpu_and_falls_back_to_wasm(second_host):
    """--bind <this host's address>: the page is no secure context there (no navigator.gpu, no
    cross-origin isolation), so a webgpu run falls back to WASM on that slot - and stays correct."""
    addr = _non_loopback_ipv4()
    if addr is None:
        pytest.skip("this host has no non-loopback IPv4 address to bind")
    s = _scenario(iterations=2, backend="webgpu")
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=300,
                   remote=RemoteOptions(bind=addr, remote_slots=(1,), join_timeout_s=60,
                                        on_join=lambda e: second_host.open(e["url"]), announce=False))
    assert second_host.opened[0].startswith(f"http://{addr}:")
    ready = {e.browser: dict(e.details()["capabilities"]) for e in run.log.events if e.kind == K.BROWSER_READY}
    assert ready["chromium-1"]["cross_origin_isolated"] is False
    assert json.loads(ready["chromium-1"]["webgpu"])["available"] is False
    assert ready["chromium-0"]["cross_origin_isolated"] is True   # the local browser still uses loopback
    fell = [e for e in run.log.events if e.kind == K.BACKEND_FALLBACK]
    assert [e.browser for e in fell] == ["chromium-1"] and fell[0].details()["got"] == "wasm"
    _assert_all_correct(run)
    _no_own_browsers_left()


def test_cli_prints_join_urls_and_records_them(second_host, tmp_path):
    """`shardtwin real --browsers chromium,remote --json`: one join URL per remote slot on stderr,
    the same URLs under result["remote"]["joins"]; a browser opening it makes the run complete."""
    import re
    cmd = [sys.executable, "-m", "experiments.cli", "real", "--model", "all-MiniLM-L6-v2", "--shards", "2",
           "--browsers", "chromium,remote", "--iterations", "3", "--seq-len", str(SEQ), "--json",
           "--db", str(tmp_path / "r.duckdb"), "--join-timeout", "60", "--timeout", "240"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    urls, err = [], []
    for line in p.stderr:
        err.append(line)
        if m := re.search(r"remote slot (\S+) \(join\): open (http://\S+)", line):
            urls.append((m.group(1), m.group(2)))
            second_host.open(m.group(2))
    out = p.stdout.read()
    assert p.wait(60) == 0, "".join(err)[-2000:]
    res = json.loads(out)
    assert [(u["browser"], u["url"]) for u in res["remote"]["joins"]] == urls == [("chromium-1", urls[0][1])]
    assert res["requests"]["completed"] == 3 and res["requests"]["lost"] == 0
    assert any("port-forward" in line for line in err)   # loopback-only join URLs are said to be so
    _no_own_browsers_left()


# --- Playwright connect endpoint -------------------------------------------------------

def _driver_cli() -> tuple[str, str]:
    import playwright
    d = Path(playwright.__file__).parent / "driver"
    node, cli = d / "node", d / "package" / "cli.js"
    if not node.exists() or not cli.exists():
        pytest.skip(f"the playwright package has no bundled driver at {d}")
    return str(node), str(cli)


@contextlib.contextmanager
def playwright_server(tmp_path: Path):
    """`playwright launch-server` (BrowserType.launchServer) with Debian Chromium; yields its ws endpoint.
    Its TMPDIR is a private dir, removed at the end: SIGKILLed, neither the server nor its Chromium
    removes its playwright-artifacts-*, playwright_chromiumdev_profile-* or org.chromium.Chromium.* dirs."""
    node, cli = _driver_cli()
    cfg = tmp_path / "launch.json"
    cfg.write_text(json.dumps({"executablePath": browsers.find_executable("chromium"), "headless": True,
                               "args": [a for a in browsers.CHROMIUM_ARGS], "host": "127.0.0.1", "port": 0}))
    tmp = tempfile.mkdtemp(prefix="stp", dir="/tmp")   # short: Chromium's socket paths have a length limit
    try:
        proc = subprocess.Popen(["nice", "-n", "15", node, cli, "launch-server", "--browser", "chromium",
                                 "--config", str(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "TMPDIR": tmp})
        try:
            line = ""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not line.startswith("ws://"):
                line = proc.stdout.readline().strip()
                if proc.poll() is not None:
                    pytest.skip(f"playwright launch-server did not start: {proc.stderr.read()[-500:]}")
            assert line.startswith("ws://"), line
            yield line, proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    finally:
        # the server's Chromium can outlive the group kill by a moment (its zygotes leave the group)
        # and write into its profile while the dir is removed: end every process that names the dir first
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [p for p in psutil.process_iter(["cmdline"])
                    if any(tmp in a for a in (p.info["cmdline"] or ()))]
            if not left:
                break
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            time.sleep(0.1)
        shutil.rmtree(tmp, ignore_errors=True)


def _server_browser_pids(proc) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


def test_run_through_playwright_endpoint_with_crash(tmp_path):
    with playwright_server(tmp_path) as (endpoint, proc):
        s = _scenario([{"type": "browser_crash", "at_ms": 1500.0, "browser": "chromium-1"}], iterations=30)
        t0 = time.monotonic()
        run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=300,
                       remote=RemoteOptions(playwright_endpoint=endpoint, announce=False))
        wall = time.monotonic() - t0
        ev = run.log.events
        summary = [(round(e.t_ms), str(e.kind), e.browser, None if e.kind == K.BROWSER_READY else e.detail)
                   for e in ev if e.kind in (K.BROWSER_READY, K.FAULT_INJECTED, K.FAILURE_DETECTED, K.RECOVERY_COMPLETED,
                                 K.CONNECTION_CLOSED, K.BROWSER_CRASHED, K.REQUEST_FAILED, K.BROWSER_LAUNCH_REQUESTED)]
        assert run.aborted is None, summary
        assert {e.browser for e in ev if e.kind == K.BROWSER_READY} >= {"chromium-0", "chromium-1"}, summary
        assert not [e for e in ev if e.kind == K.PROCESS_OBSERVED], "connected browsers have no local pid"
        assert any(e.kind == K.FAILURE_DETECTED and e.browser == "chromium-1" for e in ev), summary
        _assert_mid_run(run)
        _assert_all_correct(run)
        print(f"\nplaywright-endpoint run: {wall:.1f} s wall; {json.dumps(summary)[:3000]}", file=sys.stderr)
        _no_own_browsers_left()
        # the server's browser survives our connections (launchServer shares one); no page of ours is left
        assert proc.poll() is None
    assert not _server_browser_pids(proc)

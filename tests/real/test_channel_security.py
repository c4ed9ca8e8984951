"""The worker channel under hostile input: loopback only, per-run secret, strict frames.

- Static: the server binds 127.0.0.1; the worker page carries a CSP without 'unsafe-eval'
  and worker.js never evaluates or loads anything named by the wire.
- A fake worker (Python aiohttp client, no browser) holding the secret: duplicated,
  replayed and never-asked result frames are dropped and reported, and the connection
  keeps working.
- A real all-MiniLM-L6-v2 run while an aiohttp client bursts wrong secrets, another run's
  secret, malformed JSON, unknown types, binary garbage, duplicated/replayed results and an
  oversize frame at the run's own server: every request completes with correct outputs and
  every rejection is in the event log as MESSAGE_REJECTED.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import secrets
import threading
import time

import aiohttp
import numpy as np
import pytest

import real.driver as driver_mod
from events.scenario import parse_scenario
from events.schema import EventKind as K
from real.protocol import FrameKind, Hello, TensorFrame, encode_control, encode_tensors
from real.server import PAGE_CSP, WEB_DIR, MessageReceived, WorkerRejected, WorkerServer

SECRET = "chan-secret-0123456789"


def arun(coro):
    return asyncio.run(coro)


# --- static -------------------------------------------------------------------------------

def test_worker_js_runs_only_its_fixed_protocol():
    src = (WEB_DIR / "worker.js").read_text()
    code = re.sub(r"//[^\n]*", "", src)   # comments may name what the code must not do
    for banned in (r"\beval\s*\(", r"\bnew\s+Function\b", r"\bFunction\s*\(", r"\bimportScripts\b",
                   r"\bimport\s*\(", r"setTimeout\s*\(\s*['\"`]", r"setInterval\s*\(\s*['\"`]",
                   r"\.innerHTML\b", r"document\.write", r"new\s+Worker\s*\(", r"\blocation\s*=",
                   r"\bwindow\.open\b", r"postMessage\s*\("):
        assert not re.search(banned, code), banned
    # the only module import is the fixed ORT bundle; control frames dispatch on a closed set
    assert re.findall(r"^import .*$", code, re.M) == ["import * as ort from '/ort/ort.webgpu.min.mjs';"]
    assert set(re.findall(r"case '(\w+)':", code)) >= {"welcome", "load_shard", "unload_shard", "inject", "ping"}
    assert "default: sendError('bad_message'" in code


def test_csp_and_loopback_bind(tmp_path):
    assert "'unsafe-eval'" not in PAGE_CSP.replace("'wasm-unsafe-eval'", "")
    assert "script-src 'self'" in PAGE_CSP and "object-src 'none'" in PAGE_CSP

    async def body():
        async with WorkerServer(tmp_path, SECRET, on_event=lambda e: None) as srv:
            socks = [s.getsockname() for site in srv._runner.sites for s in site._server.sockets]
            async with aiohttp.ClientSession() as http, http.get(srv.base_url + "/worker.html") as r:
                return socks, r.status, dict(r.headers)
    socks, status, headers = arun(body())
    assert socks and all(addr[0] == "127.0.0.1" for addr in socks)
    assert status == 200 and headers["Content-Security-Policy"] == PAGE_CSP
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


# --- a fake worker holding the secret ------------------------------------------------------

def _result(req: int, shard: int, attempt: int, value: float = 1.0) -> bytes:
    return encode_tensors(TensorFrame(FrameKind.RESULT, req, shard, attempt,
                                      {"y": np.full((2, 3), value, np.float32)}, 1.0))


def test_duplicate_replayed_and_unasked_results_are_rejected_and_the_worker_keeps_working(tmp_path):
    events: list = []

    async def body():
        async with WorkerServer(tmp_path, SECRET, on_event=events.append) as srv, \
                aiohttp.ClientSession() as http, http.ws_connect(srv.base_url + "/ws") as ws:
            await ws.send_str(encode_control(Hello("w1", SECRET, {})))
            await ws.receive()                                    # welcome
            conn = await srv.wait_connected("w1", 5)
            x = {"x": np.zeros((2, 3), np.float32)}
            first = asyncio.create_task(conn.run(5, 0, 1, x))
            await ws.receive()                                    # the run frame
            await ws.send_bytes(_result(5, 0, 1, 2.0))            # the answer
            await ws.send_bytes(_result(5, 0, 1, 9.0))            # duplicate
            await ws.send_bytes(_result(5, 0, 0, 9.0))            # an attempt never sent
            await ws.send_bytes(_result(77, 1, 0, 9.0))           # never asked
            got = await first
            await asyncio.sleep(0.1)
            second = asyncio.create_task(conn.run(6, 0, 0, x))    # the connection still works
            await ws.receive()
            await ws.send_bytes(_result(6, 0, 0, 3.0))
            await ws.send_bytes(_result(5, 0, 1, 2.0))            # replay of an old answer
            return got, await second, ws.closed
    got, second, closed = arun(body())
    assert float(got.tensors["y"][0, 0]) == 2.0 and float(second.tensors["y"][0, 0]) == 3.0 and not closed
    time.sleep(0.05)
    rejected = [e for e in events if isinstance(e, WorkerRejected)]
    assert len(rejected) == 4 and all("unexpected result" in e.reason for e in rejected), rejected
    delivered = [e for e in events if isinstance(e, MessageReceived) and isinstance(e.message, TensorFrame)]
    assert [(m.message.req, m.message.attempt) for m in delivered] == [(5, 1), (6, 0)]


# --- a real run under a concurrent burst -------------------------------------------------

SEQ = 32
MAX_MSG = 1 << 20   # the run's server limit in this test (real frames here are ~50 KB)


async def _burst(port: int, secret: str, report: dict) -> None:
    url = f"http://127.0.0.1:{port}/ws"
    other_run = secrets.token_urlsafe(24)
    async with aiohttp.ClientSession() as http:
        async def first_frame(send) -> None:
            async with http.ws_connect(url) as ws:
                await send(ws)
                msg = await ws.receive()
                report.setdefault("pre_hello_closes", []).append(ws.close_code or msg.type.name)

        sends = [
            lambda ws: ws.send_str(encode_control(Hello("chromium-0", "wrong", {}))),     # wrong secret
            lambda ws: ws.send_str(encode_control(Hello("firefox-1", other_run, {}))),    # another run's secret
            lambda ws: ws.send_str(json.dumps({"v": 1, "type": "hello", "id": "x"})),     # no secret
            lambda ws: ws.send_str("{not json"),                                          # malformed JSON
            lambda ws: ws.send_bytes(secrets.token_bytes(200)),                           # binary garbage
            lambda ws: ws.send_bytes(_result(0, 0, 0)),                                   # a result, no hello
        ]
        await asyncio.gather(*(first_frame(s) for s in sends * 2))
        # holding the secret, but no browser of this run: every frame it sends is refused
        async with http.ws_connect(url) as ws:
            await ws.send_str(encode_control(Hello("intruder-0", secret, {})))
            report["welcome"] = json.loads((await ws.receive()).data)["type"]
            bad = [json.dumps({"v": 1, "type": "eval", "code": "alert(1)"}), "{oops",
                   json.dumps({"v": 1, "type": "shard_loaded", "shard": "0"}), json.dumps([1, 2, 3])]
            for text in bad:
                await ws.send_str(text)
            await ws.send_bytes(secrets.token_bytes(333))
            for req in range(4):                      # results for keys real browsers answer
                for shard in (0, 1):
                    await ws.send_bytes(_result(req, shard, 0))
                    await ws.send_bytes(_result(req, shard, 0))   # and their duplicates
            await asyncio.sleep(0.3)
            await ws.send_bytes(bytes(MAX_MSG + 1024))  # oversize: the server closes this socket
            msg = await ws.receive()
            report["oversize_close"] = ws.close_code or msg.type.name
        report["sent_post_hello"] = len(bad) + 1 + 16 + 1


@pytest.mark.browser
@pytest.mark.slow
def test_real_run_completes_correctly_under_a_burst_of_hostile_frames(need, monkeypatch):
    need("chromium")
    need("firefox")
    from real.run import run_real
    from sim.profile import DEFAULT_PROFILE
    monkeypatch.setattr(driver_mod, "WorkerServer", functools.partial(WorkerServer, max_msg_bytes=MAX_MSG))
    s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "browsers": ["chromium", "firefox"],
                        "fault_tolerance_level": "medium",
                        "workload": {"kind": "closed_loop", "concurrency": 2, "duration_s": 6.0,
                                     "seq_len": SEQ}})
    holder: dict = {}
    report: dict = {}

    def attacker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            coord, srv = holder.get("coord"), holder.get("server")
            if coord is not None and srv is not None and coord.st.workload_started is not None:
                try:
                    t0 = time.monotonic()
                    asyncio.run(_burst(srv.port, srv.secret, report))
                    report["done_at_ms"] = (time.monotonic() - t0) * 1000.0
                except Exception as exc:   # noqa: BLE001 - reported to the assertions below
                    report["error"] = repr(exc)
                return
            time.sleep(0.01)

    t = threading.Thread(target=attacker, daemon=True)
    t.start()
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240, on_coordinator=lambda c: holder.setdefault("coord", c),
                   on_server=lambda srv: holder.setdefault("server", srv))
    t.join(30)
    assert "error" not in report, report
    ev = run.log.events
    assert run.aborted is None
    submitted = sorted(e.request_id for e in ev if e.kind == K.REQUEST_SUBMITTED)
    completed = sorted(e.request_id for e in ev if e.kind == K.REQUEST_COMPLETED)
    assert submitted == completed and len(submitted) >= 10
    assert not [e for e in ev if e.kind in (K.FAILURE_DETECTED, K.REQUEST_FAILED, K.CONNECTION_CLOSED)]
    assert report["pre_hello_closes"] == [1008] * 12 and report["welcome"] == "welcome"
    assert report["oversize_close"] == 1009
    rejected = [e.details().get("reason", "") for e in ev if e.kind == K.MESSAGE_REJECTED]
    # every refused frame is one record: 12 before a hello, the unknown id, 22 after its hello
    assert report["done_at_ms"] < s.workload.duration_s * 1000.0   # the burst ended inside the workload
    assert sum("secret" in r for r in rejected) == 6, rejected
    assert sum("first frame must be a text hello" in r for r in rejected) == 4, rejected
    assert sum("unknown browser id 'intruder-0'" in r for r in rejected) == 1, rejected
    assert sum("unexpected result" in r for r in rejected) == 16, rejected
    assert len(rejected) == 12 + 1 + report["sent_post_hello"], rejected
    _outputs_match_reference(run)


def _outputs_match_reference(run) -> None:
    cosines = run.shards.reference_cosines()
    assert cosines and all(c >= 0.99999 for c in cosines.values()), cosines

"""Worker server without a browser: headers, MIME types, name validation, the hello handshake."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from real.protocol import (FrameKind, Heartbeat, Hello, ShardLoaded, TensorFrame, decode_tensors,
                           encode_control, encode_tensors)
from real.server import (MessageReceived, WorkerConnected, WorkerDisconnected, WorkerGoneError,
                         WorkerRejected, WorkerReportedError, WorkerServer)

SECRET = "unit-secret"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _serve(tmp_path, **kw):
    (tmp_path / "a.onnx").write_bytes(b"onnx-bytes")
    (tmp_path / "secret.txt").write_text("no")
    events: list = []
    return WorkerServer(tmp_path, SECRET, on_event=events.append, **kw), events


def test_static_files_carry_isolation_headers_and_mime(tmp_path):
    async def body():
        srv, _ = await _serve(tmp_path)
        async with srv, aiohttp.ClientSession() as http:
            out = {}
            for path in ("/worker.html", "/worker.js", "/ort/ort.webgpu.min.mjs",
                         "/ort/ort-wasm-simd-threaded.jsep.wasm", "/shards/a.onnx"):
                async with http.get(srv.base_url + path) as r:
                    out[path] = (r.status, r.headers.get("Content-Type", ""), dict(r.headers))
            return out
    out = run(body())
    for path, (status, ctype, headers) in out.items():
        assert status == 200, path
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert headers["Cross-Origin-Resource-Policy"] == "same-origin"
    assert out["/worker.js"][1].startswith("text/javascript")
    assert out["/ort/ort.webgpu.min.mjs"][1].startswith("text/javascript")
    assert out["/ort/ort-wasm-simd-threaded.jsep.wasm"][1] == "application/wasm"
    assert "Content-Security-Policy" in out["/worker.html"][2]


@pytest.mark.parametrize("path", ["/shards/secret.txt", "/shards/..%2Fsecret.txt", "/shards/%2E%2E%2Fa.onnx",
                                  "/shards/.hidden.onnx", "/shards/missing.onnx", "/ort/..%2F..%2Fpackage.json",
                                  "/ort/", "/package.json"])
def test_path_traversal_and_unknown_names_are_404(tmp_path, path):
    async def body():
        srv, _ = await _serve(tmp_path)
        async with srv, aiohttp.ClientSession() as http:
            async with http.get(srv.base_url + path) as r:
                return r.status
    assert run(body()) == 404


def _hello(secret: str, browser_id: str = "w1") -> str:
    return encode_control(Hello(browser_id, secret, {"browser": "test"}))


@pytest.mark.parametrize("first", ["wrong", "missing", "binary", "garbage"])
def test_bad_hello_is_rejected_with_policy_close(tmp_path, first):
    async def body():
        srv, events = await _serve(tmp_path)
        async with srv, aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.base_url + "/ws") as ws:
                if first == "wrong":
                    await ws.send_str(_hello("not-the-secret"))
                elif first == "missing":
                    await ws.send_str(json.dumps({"v": 1, "type": "hello", "id": "w1", "capabilities": {}}))
                elif first == "binary":
                    await ws.send_bytes(b"\x00" * 40)
                else:
                    await ws.send_str("{oops")
                msg = await ws.receive()
                return msg.type, ws.close_code, events, srv.connections
    mtype, code, events, conns = run(body())
    assert mtype in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and code == 1008
    rejected = [e for e in events if isinstance(e, WorkerRejected)]
    assert len(rejected) == 1 and not conns and not any(isinstance(e, WorkerConnected) for e in events)
    if first == "wrong":
        assert rejected[0].browser_id == "w1" and "secret" in rejected[0].reason


def test_handshake_messages_results_and_close_are_reported(tmp_path):
    async def body():
        srv, events = await _serve(tmp_path, heartbeat_interval_ms=50)
        async with srv, aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.base_url + "/ws") as ws:
                await ws.send_str(_hello(SECRET))
                welcome = json.loads((await ws.receive()).data)
                conn = await srv.wait_connected("w1", 5)
                await ws.send_str(encode_control(Heartbeat(0, 1.0)))
                # a load answered by the fake worker
                load = asyncio.create_task(conn.load_shard(0, srv.shard_url("a.onnx"), "webgpu"))
                req = json.loads((await ws.receive()).data)
                await ws.send_str(encode_control(ShardLoaded(0, 5.0, 1.0, 4.0, 10, "webgpu", "wasm",
                                                              "no adapter", ["x"], ["y"])))
                loaded = await load
                # a run: inputs arrive as a binary frame, the result goes back as one
                x = np.arange(6, dtype=np.float32).reshape(2, 3)
                run_task = asyncio.create_task(conn.run(7, 0, 1, {"x": x}))
                frame = decode_tensors((await ws.receive()).data)
                y = frame.tensors["x"] * 2
                await ws.send_bytes(encode_tensors(TensorFrame(FrameKind.RESULT, 7, 0, 1, {"y": y}, 3.5)))
                result = await run_task
                # an error reply fails the matching request
                run2 = asyncio.create_task(conn.run(8, 0, 0, {"x": x}))
                await ws.receive()
                await ws.send_str(json.dumps({"v": 1, "type": "error", "kind": "shard_error", "message": "boom",
                                              "req": 8, "shard": 0, "attempt": 0, "injected": True}))
                with pytest.raises(WorkerReportedError, match="boom"):
                    await run2
                pending = asyncio.create_task(conn.run(9, 0, 0, {"x": x}))
                await ws.receive()
            await asyncio.sleep(0.1)
            with pytest.raises(WorkerGoneError):
                await pending
            return welcome, req, loaded, result, events
    welcome, req, loaded, result, events = run(body())
    assert welcome == {"v": 1, "type": "welcome", "heartbeat_interval_ms": 50, "server_t": welcome["server_t"]}
    assert req["type"] == "load_shard" and req["url"] == "/shards/a.onnx" and req["backend"] == "webgpu"
    assert loaded.fallback_reason == "no adapter"
    assert result.ms == 3.5 and result.tensors["y"].tolist() == [[0, 2, 4], [6, 8, 10]]
    kinds = [type(e) for e in events]
    assert kinds[0] is WorkerConnected and kinds[-1] is WorkerDisconnected
    assert any(isinstance(e, MessageReceived) and isinstance(e.message, Heartbeat) for e in events)
    assert events[-1].browser_id == "w1"


def test_oversized_frame_closes_the_connection(tmp_path):
    async def body():
        srv, events = await _serve(tmp_path, max_msg_bytes=4096)
        async with srv, aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.base_url + "/ws") as ws:
                await ws.send_str(_hello(SECRET))
                await ws.receive()
                await ws.send_bytes(bytes(10_000))
                await ws.receive()
            await asyncio.sleep(0.05)
            return ws.close_code, events
    code, events = run(body())
    assert code == 1009
    assert any(isinstance(e, WorkerRejected) for e in events) and isinstance(events[-1], WorkerDisconnected)


def test_second_connection_with_same_id_supersedes_the_first(tmp_path):
    async def body():
        srv, events = await _serve(tmp_path)
        async with srv, aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.base_url + "/ws") as ws1, http.ws_connect(srv.base_url + "/ws") as ws2:
                await ws1.send_str(_hello(SECRET))
                await ws1.receive()
                first = await srv.wait_connected("w1", 5)
                await ws2.send_str(_hello(SECRET))
                await ws2.receive()
                closing = await ws1.receive()
                await asyncio.sleep(0.05)
                return first, closing, srv.connections["w1"], events
    first, closing, live, events = run(body())
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4000 and live is not first
    connected = [e for e in events if isinstance(e, WorkerConnected)]
    gone = [e for e in events if isinstance(e, WorkerDisconnected)]
    assert [c.reconnect for c in connected] == [False, True] and gone[0].conn is first

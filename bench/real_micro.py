"""Micro-benchmarks of the real-browser transport (python -m bench.real_micro [--json out.json]).

Measures, per real browser: launch-to-hello, a 128x768 @ 768x3072 MatMul on WASM (1 and 2
threads) and WebGPU (GFLOPS from the page's own compute ms, WebGPU readback included),
the WebSocket round trip of a 128x384 fp32 tensor through an Identity graph, and the
latency from SIGKILL of the browser's process group to the server seeing the socket close.
Everything here ran in a real browser; nothing is estimated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from real.browsers import BrowserPool, find_executable
from real.server import WorkerDisconnected, WorkerServer
from shardtwin.errors import BrowserUnavailableError

M, K, N = 128, 768, 3072
FLOP = 2 * M * K * N


def build_models(d: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def save(name: str, nodes, inputs, outputs, inits) -> None:
        g = helper.make_graph(nodes, name, inputs, outputs, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, d / f"{name}.onnx")

    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32) * 0.05
    save("matmul", [helper.make_node("MatMul", ["a", "w"], ["y"])],
         [helper.make_tensor_value_info("a", TensorProto.FLOAT, [M, K])],
         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])], [numpy_helper.from_array(w, "w")])
    save("identity", [helper.make_node("Identity", ["x"], ["y"])],
         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 384])],
         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 384])], [])


async def matmul_gflops(conn, srv, backend: str, shard: int, reps: int) -> dict:
    loaded = await conn.load_shard(shard, srv.shard_url("matmul.onnx"), backend, timeout=120)
    a = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
    ms = []
    for i in range(reps + 2):
        r = await conn.run(i, shard, 0, {"a": a}, timeout=120)
        ms.append(r.ms)
    best = statistics.median(ms[2:])
    return {"backend_used": loaded.backend_used, "fallback_reason": loaded.fallback_reason,
            "create_ms": round(loaded.create_ms, 1), "median_ms": round(best, 2),
            "gflops": round(FLOP / best / 1e6, 2), "wasm_threads": loaded.wasm_threads}


async def round_trip(conn, srv, reps: int) -> dict:
    await conn.load_shard(99, srv.shard_url("identity.onnx"), "wasm")
    x = np.random.default_rng(2).standard_normal((128, 384)).astype(np.float32)
    wall, page = [], []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        r = await conn.run(1000 + i, 99, 0, {"x": x})
        wall.append((time.perf_counter() - t0) * 1000)
        page.append(r.ms)
        assert np.array_equal(r.tensors["y"], x)
    return {"median_ms": round(statistics.median(wall[3:]), 3), "p90_ms": round(sorted(wall[3:])[int(0.9 * reps)], 3),
            "page_run_ms": round(statistics.median(page[3:]), 3), "ping_ms": round(await conn.ping(), 3)}


async def one_browser(kind: str, launcher: str, shard_dir: Path, reps: int, webgpu: bool) -> dict:
    out: dict = {"kind": kind}
    events: list = []
    async with WorkerServer(shard_dir, "bench-secret", on_event=events.append) as srv, \
            BrowserPool(launcher=launcher) as pool:
        for threads in (1, 2):
            bid = f"{kind}-t{threads}"
            h = await pool.launch(kind, srv.worker_url(bid, threads=threads), browser_id=bid)
            conn = await srv.wait_connected(bid, 60)
            out[f"launch_to_hello_s_t{threads}"] = round(conn.connected_at - h.launched_at, 3)
            out["launcher"] = h.launcher
            out[f"wasm_{threads}t"] = await matmul_gflops(conn, srv, "wasm", 0, reps)
            if threads == 2:
                if webgpu:
                    out["webgpu"] = await matmul_gflops(conn, srv, "webgpu", 1, reps)
                out["ws_round_trip_128x384_f32"] = await round_trip(conn, srv, 30)
                out["rss_mb"], out["pss_mb"] = round(h.rss_mb(), 1), round(h.pss_mb(), 1)
                out["capabilities"] = {k: conn.capabilities.get(k) for k in
                                       ("browser_version", "cross_origin_isolated", "webgpu", "webnn")}
                t0 = srv.clock()
                h.kill()
                while not any(isinstance(e, WorkerDisconnected) and e.browser_id == bid for e in events):
                    await asyncio.sleep(0.001)
                out["sigkill_to_close_ms"] = round((events[-1].t - t0) * 1000, 1)
            await h.close()
    return out


async def main_async(args: argparse.Namespace) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="shardtwin-bench-") as d:
        build_models(Path(d))
        for kind in args.browsers:
            try:
                find_executable(kind)
            except BrowserUnavailableError as exc:
                results.append({"kind": kind, "skipped": str(exc)})
                continue
            results.append(await one_browser(kind, args.launcher, Path(d), args.reps, not args.no_webgpu))
            print(json.dumps(results[-1]), file=sys.stderr)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--browsers", nargs="+", default=["chromium", "firefox"])
    ap.add_argument("--launcher", default="process", choices=["auto", "playwright", "process"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-webgpu", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = asyncio.run(main_async(args))
    text = json.dumps(results, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

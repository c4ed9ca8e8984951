"""Real-browser pipeline benchmark: where the time of a sharded request goes, and how fast failures heal.

    nice -n 15 .venv/bin/python bench/real_pipeline.py [--quick] [--json OUT.json]

Everything here ran in real headless browsers (source=real); nothing is estimated unless a
column says so. Per configuration (model x browser x backend; one browser holds every shard,
so a browser's speed is not mixed with another's), from the run's event log:

- compute ms per shard: the page's own measure around session.run (SHARD_COMPLETED value),
  median over warm requests (the first requests are dropped: Chromium's WASM tiers up);
- transfer per shard run (TRANSFER_COMPLETED, coordinator clock): `in` = feeds gathered,
  encoded and written to the socket; `out` = the rest of the round trip outside page compute
  (both network legs, the page's decode/queue/encode, our decode). The page sends no timestamps,
  so the two network legs cannot be told apart; `rt-compute` = SHARD_STARTED -> SHARD_COMPLETED
  minus compute. A hop k->k+1 costs out(k) + in(k+1);
- pipeline overhead: (end-to-end request latency - sum of its shards' compute) / end-to-end;
- GFLOPS: the plan's GFLOPs per shard (per request at this shape) / compute ms, next to native
  onnxruntime (CPU EP, 1 thread and all threads) on the same shard files in this process;
- failures (MiniLM, chromium + firefox, level medium, one short run each): detection ms
  (FAULT_INJECTED -> FAILURE_DETECTED) and recovery ms (RECOVERY_COMPLETED value: detection ->
  every lost shard serving again), the recovery action, and whether every request completed.

The host is shared (2 cores): other work changes these figures; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from events.scenario import parse_scenario  # noqa: E402
from events.schema import EventKind as K  # noqa: E402
from real.run import run_real  # noqa: E402
from sim.profile import DEFAULT_PROFILE  # noqa: E402

SEQ = 32
CONFIGS_FULL = [("all-MiniLM-L6-v2", 2, 6), ("bert-base-uncased", 3, 3)]   # model, layer shards, requests
CONFIGS_QUICK = [("all-MiniLM-L6-v2", 2, 5)]
QUICK_EXTRA = [("bert-base-uncased", 3, 3, "chromium", "wasm")]
FAULTS = {
    "browser_crash": {"type": "browser_crash", "at_ms": 300.0, "browser": "firefox"},
    "disconnect": {"type": "disconnect", "at_ms": 300.0, "browser": "firefox", "reconnect_delay_ms": 300.0},
    "hang": {"type": "hang", "at_ms": 300.0, "browser": "firefox", "duration_ms": 20000.0},
    "shard_error": {"type": "shard_error", "at_ms": 300.0, "shard": 1},
    "memory_pressure": {"type": "memory_pressure", "at_ms": 300.0, "browser": "firefox", "level": "medium"},
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def scenario(model, shards, browsers, backend, n, level="none", faults=(), tolerance=None):
    return parse_scenario({"model": model, "shards": shards, "shard_type": "layer", "browsers": browsers,
                           "backend": backend, "fault_tolerance_level": level,
                           "tolerance": tolerance or {"detector_timeout_ms": 30000.0},
                           "workload": {"kind": "iterations", "iterations": n, "seq_len": SEQ},
                           "faults": list(faults)})


# --- one pipeline run ---------------------------------------------------------------------

def pipeline_figures(run, skip: int) -> dict:
    ev = run.log.events
    fallback = {e.browser: e.details().get("got") for e in ev if e.kind == K.BACKEND_FALLBACK}
    started = {(e.request_id, e.shard, e.attempt): e.t_ms for e in ev if e.kind == K.SHARD_STARTED}
    done = [e for e in ev if e.kind == K.SHARD_COMPLETED and e.request_id >= skip]
    xfer = {}
    for e in ev:
        if e.kind == K.TRANSFER_COMPLETED and e.request_id >= skip:
            xfer.setdefault((e.shard, e.details()["direction"]), []).append((e.details()["ms"], e.value))
    loads = {e.shard: e.value for e in ev if e.kind == K.SHARD_LOADED}
    shards = []
    for sh in run.plan.shards:
        mine = [e for e in done if e.shard == sh.index]
        comp = med([e.value for e in mine])
        rt = med([e.t_ms - started[(e.request_id, e.shard, e.attempt)] - e.value for e in mine])
        shards.append({"shard": sh.index, "gflops_per_request": sh.gflops, "weight_mb": sh.weight_mb,
                       "load_ms": loads.get(sh.index), "compute_ms": comp,
                       "first_compute_ms": next((e.value for e in ev if e.kind == K.SHARD_COMPLETED
                                                 and e.shard == sh.index), None),
                       "in_ms": med([m for m, _ in xfer.get((sh.index, "in"), [])]),
                       "out_ms": med([m for m, _ in xfer.get((sh.index, "out"), [])]),
                       "in_bytes": med([b for _, b in xfer.get((sh.index, "in"), [])]),
                       "out_bytes": med([b for _, b in xfer.get((sh.index, "out"), [])]),
                       "rt_minus_compute_ms": rt,
                       "gflops": sh.gflops / (comp / 1000.0) if comp and comp == comp else float("nan")})
    e2e, over = [], []
    for e in ev:
        if e.kind == K.REQUEST_COMPLETED and e.request_id >= skip:
            comp = sum(d.value for d in done if d.request_id == e.request_id)
            e2e.append(e.value)
            over.append((e.value - comp) / e.value)
    return {"shards": shards, "e2e_ms": med(e2e), "overhead_ratio": med(over), "fallback": fallback,
            "completed": sum(1 for e in ev if e.kind == K.REQUEST_COMPLETED), "aborted": run.aborted}


def native_gflops(run, reps: int = 5) -> list[dict]:
    """onnxruntime CPU on the same shard files and inputs: 1 thread and default threads."""
    from models.onnx_builder import chain_feeds
    from models.reference import session
    out = []
    prev: dict = {}
    req = run.shards.request_inputs(0)
    for sh, f in zip(run.plan.shards, run.shards.files):
        row = {"shard": sh.index}
        for threads in (1, 0):
            s = session(str(f.path), threads=threads)
            names = [o.name for o in s.get_outputs()]
            feeds = chain_feeds(prev, req, [i.name for i in s.get_inputs()])
            s.run(names, feeds)
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                res = s.run(names, feeds)
                ts.append((time.perf_counter() - t) * 1000)
            row[f"ms_t{threads}"] = statistics.median(ts)
            row[f"gflops_t{threads}"] = sh.gflops / (statistics.median(ts) / 1000.0)
        prev = dict(zip(names, res))
        out.append(row)
    return out


def bench_pipeline(model, shards, n, browser, backend) -> dict:
    t = time.monotonic()
    run = run_real(scenario(model, shards, [browser], backend, n), profile=DEFAULT_PROFILE, timeout_s=600)
    wall = time.monotonic() - t
    fig = pipeline_figures(run, skip=min(2, n - 1))
    fig.update({"model": model, "browser": browser, "backend": backend, "weights": run.shards.weights,
                "backend_used": fig["fallback"].get(f"{browser}-0", backend), "wall_s": wall,
                "native": native_gflops(run)})
    return fig


# --- failures ----------------------------------------------------------------------------------

def bench_failure(name: str, fault: dict) -> dict:
    tol = {"detector_timeout_ms": 2000.0}
    s = scenario("all-MiniLM-L6-v2", 2, ["chromium", "firefox"], "wasm", 8, level="medium", faults=[fault],
                 tolerance=tol)
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240)
    ev = run.log.events
    inj = next((e for e in ev if e.kind == K.FAULT_INJECTED), None)
    det = next((e for e in ev if e.kind == K.FAILURE_DETECTED and inj and e.t_ms >= inj.t_ms), None)
    rec = next((e for e in ev if e.kind == K.RECOVERY_COMPLETED and det and e.t_ms >= det.t_ms), None)
    sub = sum(1 for e in ev if e.kind == K.REQUEST_SUBMITTED)
    comp = sum(1 for e in ev if e.kind == K.REQUEST_COMPLETED)
    row = {"fault": name, "browser": inj.browser if inj else None,
           "detected_by": det.details().get("cause") if det else None,
           "detection_ms": det.t_ms - inj.t_ms if det and inj else None,
           "recovery_ms": rec.value if rec else None, "action": rec.details().get("action") if rec else None,
           "completed": f"{comp}/{sub}", "aborted": run.aborted}
    if name == "memory_pressure" and inj:
        pss = [(e.t_ms, e.value) for e in ev if e.kind == K.MEMORY_SAMPLED and e.browser == inj.browser
               and e.value != 768.0]
        before = [v for t, v in pss if t < inj.t_ms]
        after = [v for t, v in pss if t > inj.t_ms]
        row["pss_growth_mb"] = (max(after) - med(before)) if before and after else None
    return row


# --- printing ----------------------------------------------------------------------------------

def _f(v, spec=".1f"):
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def print_pipelines(rows: list[dict]) -> None:
    print("\n== Per-shard compute and transfer (medians over warm requests; ms) ==")
    print(f"{'model':18} {'browser':8} {'backend':7} {'used':6} {'sh':>2} {'GFLOP':>6} {'load':>7} "
          f"{'1st':>7} {'compute':>8} {'in':>6} {'out':>6} {'rt-cmp':>7} {'in KB':>6} {'out KB':>6} "
          f"{'GFLOPS':>7} {'ort1t':>7} {'ortNt':>7}")
    for r in rows:
        for s, nat in zip(r["shards"], r["native"]):
            print(f"{r['model'][:18]:18} {r['browser']:8} {r['backend']:7} {r['backend_used']:6} {s['shard']:>2} "
                  f"{s['gflops_per_request']:6.2f} {_f(s['load_ms'], '7.0f')} {_f(s['first_compute_ms'], '7.1f')} "
                  f"{_f(s['compute_ms'], '8.1f')} {_f(s['in_ms'], '6.1f')} {_f(s['out_ms'], '6.1f')} "
                  f"{_f(s['rt_minus_compute_ms'], '7.1f')} {_f(s['in_bytes'] / 1024 if s['in_bytes'] == s['in_bytes'] else None, '6.1f')} "
                  f"{_f(s['out_bytes'] / 1024 if s['out_bytes'] == s['out_bytes'] else None, '6.1f')} "
                  f"{_f(s['gflops'], '7.2f')} {nat['gflops_t1']:7.1f} {nat['gflops_t0']:7.1f}")
    print("\n== Hops (coordinator <-> page; out(k) + in(k+1); ms) and pipeline overhead ==")
    print(f"{'model':18} {'browser':8} {'backend':7} {'hops':40} {'e2e ms':>8} {'overhead':>8} {'done':>5} {'wall s':>6}")
    for r in rows:
        sh = r["shards"]
        hops = [sh[0]["in_ms"]] + [sh[k]["out_ms"] + sh[k + 1]["in_ms"] for k in range(len(sh) - 1)] + [sh[-1]["out_ms"]]
        print(f"{r['model'][:18]:18} {r['browser']:8} {r['backend']:7} {' / '.join(_f(h) for h in hops):40} "
              f"{_f(r['e2e_ms'], '8.1f')} {_f(100 * r['overhead_ratio'], '7.1f')}% {r['completed']:>5} {r['wall_s']:6.1f}")


def print_failures(rows: list[dict]) -> None:
    print("\n== Failures (MiniLM, chromium + firefox, wasm, level medium, detector 2 s; ms) ==")
    print(f"{'fault':16} {'browser':10} {'detected by':18} {'detect':>7} {'recover':>8} {'action':10} {'completed':>9} extra")
    for r in rows:
        extra = f"PSS +{r['pss_growth_mb']:.0f} MB" if r.get("pss_growth_mb") is not None else ""
        print(f"{r['fault']:16} {str(r['browser']):10} {str(r['detected_by']):18} {_f(r['detection_ms'], '7.0f')} "
              f"{_f(r['recovery_ms'], '8.0f')} {str(r['action']):10} {r['completed']:>9} {extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="MiniLM both browsers/backends, bert-base on chromium wasm, "
                                                         "every failure type (~2-3 min)")
    ap.add_argument("--json", metavar="OUT", help="write every figure here too")
    ap.add_argument("--skip-failures", action="store_true")
    args = ap.parse_args()
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (shared machine)")
    plan = [(m, s, n, b, be) for m, s, n in (CONFIGS_QUICK if args.quick else CONFIGS_FULL)
            for b in ("chromium", "firefox") for be in ("wasm", "webgpu")]
    if args.quick:
        plan += QUICK_EXTRA
    t0 = time.monotonic()
    pipes = []
    for m, s, n, b, be in plan:
        print(f"... {m} {s} layer shards on {b}/{be}, {n} requests", file=sys.stderr, flush=True)
        pipes.append(bench_pipeline(m, s, n, b, be))
    fails = []
    if not args.skip_failures:
        for name, fault in FAULTS.items():
            print(f"... failure {name}", file=sys.stderr, flush=True)
            fails.append(bench_failure(name, fault))
    print_pipelines(pipes)
    if fails:
        print_failures(fails)
    print(f"\nweights: " + ", ".join(sorted({f"{r['model']}={r['weights']}" for r in pipes}))
          + f"; seq {SEQ}, batch 1; total {time.monotonic() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"pipelines": pipes, "failures": fails}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

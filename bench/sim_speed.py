"""Simulator speed: raw SimPy vs shardtwin's simulator, single process and pooled sweeps.

    python bench/sim_speed.py [--scenarios 1000] [--workers N] [--single 100] [--raw-events 1000000]

Measures in one run:
  (a) raw SimPy: a chain of env.timeout callbacks (the event loop's ceiling), and a
      process yielding timeouts (for reference);
  (b) shardtwin sim: simulated events/s = sum(SimRun.sim_events) / wall, and log events/s
      (len(log.events) / wall), over a family of scenarios: bert-base-uncased, 3 layer shards,
      200 requests (iterations), fault tolerance medium, 1-3 faults each drawn from all
      failure types with a seeded RNG;
  (c) scenarios/s in a single process (simulation only, and simulation + result JSON);
  (d) the wall time of a sweep of --scenarios such scenarios over the process pool
      (no storage), and again with DuckDB storage (--events summary and all).
Targets: sim events/s >= 50% of raw SimPy; 1,000 scenarios <= 15 s on 2 cores.
When a target is missed, a cProfile of --single scenarios prints the top hotspots.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import simpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events.scenario import parse_scenario                       # noqa: E402
from events.store import Store                                    # noqa: E402
from experiments.sweep import LocalPoolRunner, PointTask, execute, point_result   # noqa: E402
from experiments.sweep_spec import Sweep, SweepPoint              # noqa: E402
from shardtwin.vocab import FailureType, PressureLevel            # noqa: E402
from sim.profile import DEFAULT_PROFILE                           # noqa: E402
from sim.run import run_scenario                                  # noqa: E402

EVENT_RATE_TARGET = 0.5       # of raw SimPy callback events/s
SWEEP_TARGET_S = 15.0         # for 1,000 scenarios on 2 cores
BROWSERS = ("chromium-0", "firefox-1", "chromium-2")


# --- (a) raw SimPy ---

def raw_callbacks(n: int) -> float:
    env = simpy.Environment()
    left = [n]

    def tick(_ev) -> None:
        left[0] -= 1
        if left[0] > 0:
            env.timeout(1).callbacks.append(tick)
    env.timeout(1).callbacks.append(tick)
    t = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t)


def raw_process(n: int) -> float:
    env = simpy.Environment()

    def loop(env):
        for _ in range(n):
            yield env.timeout(1)
    env.process(loop(env))
    t = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t)


# --- the scenario family ---

def random_fault(rng: np.random.Generator) -> dict:
    t = FailureType(rng.choice([f.value for f in FailureType]))
    f: dict = {"type": t.value, "at_ms": round(float(rng.uniform(0, 120_000)), 1)}
    browser = str(rng.choice(BROWSERS))
    dur = round(float(rng.uniform(1_000, 20_000)), 1)
    match t:
        case FailureType.SHARD_ERROR:
            f["shard"] = int(rng.integers(3))
        case FailureType.BROWSER_CRASH:
            f["browser"] = browser
        case FailureType.DISCONNECT:
            f["browser"] = browser
            f["reconnect_delay_ms"] = None if rng.random() < 0.3 else round(float(rng.uniform(200, 8_000)), 1)
        case FailureType.HANG:
            f.update(browser=browser, duration_ms=dur)
        case FailureType.SLOW:
            f.update(browser=browser, duration_ms=dur, factor=round(float(rng.uniform(2, 8)), 2))
        case FailureType.MEMORY_PRESSURE:
            f.update(browser=browser, duration_ms=dur, level=str(rng.choice([p.value for p in PressureLevel])))
        case FailureType.CASCADE:
            shard = int(rng.integers(3))
            f.update(shard=shard, interval_ms=round(float(rng.uniform(500, 5_000)), 1),
                     count=int(rng.integers(1, 3 - shard + 1)))
    return f


def family(n: int, seed: int = 2024) -> Sweep:
    rng = np.random.default_rng(seed)
    points = []
    for i in range(n):
        faults = [random_fault(rng) for _ in range(int(rng.integers(1, 4)))]
        s = parse_scenario({"model": "bert-base-uncased", "shards": 3, "shard_type": "layer",
                            "fault_tolerance_level": "medium", "workload": {"iterations": 200},
                            "faults": faults, "seed": i})
        points.append(SweepPoint(i, s, DEFAULT_PROFILE, {"faults": len(faults)}))
    return Sweep("sim_speed", {"bench": "sim_speed", "n": n, "seed": seed}, tuple(points), ("faults",))


# --- (b), (c) single process ---

def single_process(sweep: Sweep, k: int) -> dict:
    pts = sweep.points[:k]
    run_scenario(pts[0].scenario, pts[0].profile)            # warm caches (plans, imports)
    sim_events = log_events = 0
    t, cpu = time.perf_counter(), time.process_time()
    runs = []
    for p in pts:
        r = run_scenario(p.scenario, p.profile)
        sim_events += r.sim_events
        log_events += len(r.log.events)
        runs.append(r)
    sim_wall, sim_cpu = time.perf_counter() - t, time.process_time() - cpu
    t = time.perf_counter()
    for p, r in zip(pts, runs):
        point_result(r, p)
    result_wall = time.perf_counter() - t
    return {"n": k, "sim_wall": sim_wall, "sim_cpu": sim_cpu, "result_wall": result_wall, "sim_events": sim_events,
            "log_events": log_events}


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def sweep_wall(sweep: Sweep, workers: int, events: str | None) -> tuple[float, float]:
    """(wall s, CPU s of parent + workers) for the whole sweep (pool start included); events None = no storage."""
    t, c = time.perf_counter(), _cpu()
    with LocalPoolRunner(workers) as runner:
        if events is None:
            outs, _ = execute(sweep, runner)
        else:
            with tempfile.TemporaryDirectory() as d, Store(Path(d) / "bench.duckdb") as st:
                outs, _ = execute(sweep, runner, store=st, events=events)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    bad = [o for o in outs if o.status != "finished"]
    if bad:
        print(f"WARNING: {len(bad)} aborted points, first: {bad[0].result}", file=sys.stderr)
    return wall, cpu


def hotspots(sweep: Sweep, k: int, top: int = 25) -> str:
    from experiments.sweep import run_point
    prof = cProfile.Profile()
    prof.enable()
    for p in sweep.points[:k]:
        run_point(PointTask(p, "bench", "none"))
    prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out).strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--single", type=int, default=100, help="scenarios for the single-process figures")
    ap.add_argument("--raw-events", type=int, default=1_000_000)
    ap.add_argument("--no-storage", action="store_true", help="skip the sweeps with DuckDB storage")
    ap.add_argument("--profile", action="store_true", help="always print the cProfile hotspots")
    a = ap.parse_args()

    raw_cb, raw_proc = raw_callbacks(a.raw_events), raw_process(a.raw_events)
    sweep = family(a.scenarios)
    sp = single_process(sweep, min(a.single, a.scenarios))
    sim_rate = sp["sim_events"] / sp["sim_wall"]
    log_rate = sp["log_events"] / sp["sim_wall"]
    walls = {"pool, no storage": sweep_wall(sweep, a.workers, None)}
    if not a.no_storage:
        for mode in ("none", "summary", "all"):
            walls[f"pool + DuckDB (--events {mode})"] = sweep_wall(sweep, a.workers, mode)

    scale = 1000 / a.scenarios * (a.workers / 2)      # normalised to 1,000 scenarios on 2 cores
    rows = [
        ("raw SimPy timeout callbacks", f"{raw_cb:,.0f} ev/s", "1.00", ""),
        ("raw SimPy process + timeout", f"{raw_proc:,.0f} ev/s", f"{raw_proc / raw_cb:.2f}", ""),
        ("shardtwin sim events", f"{sim_rate:,.0f} ev/s", f"{sim_rate / raw_cb:.3f}",
         f">= {EVENT_RATE_TARGET:.2f} {'OK' if sim_rate / raw_cb >= EVENT_RATE_TARGET else 'MISSED'}"),
        ("shardtwin log events", f"{log_rate:,.0f} ev/s", f"{log_rate / raw_cb:.3f}", ""),
        ("events per scenario (sim / log)", f"{sp['sim_events'] / sp['n']:.0f} / {sp['log_events'] / sp['n']:.0f}", "", ""),
        ("scenarios/s, 1 process (sim only)", f"{sp['n'] / sp['sim_wall']:.1f}", "", ""),
        ("CPU ms per scenario, 1 process (sim only)", f"{sp['sim_cpu'] / sp['n'] * 1000:.1f}", "", ""),
        ("scenarios/s, 1 process (sim + result)", f"{sp['n'] / (sp['sim_wall'] + sp['result_wall']):.1f}", "", ""),
        ("result JSON share of single-process time", f"{sp['result_wall'] / (sp['sim_wall'] + sp['result_wall']):.0%}", "", ""),
    ]
    for name, (wall, cpu) in walls.items():
        ok = wall * scale <= SWEEP_TARGET_S
        rows.append((f"{a.scenarios} scenarios, {a.workers} workers, {name}", f"{wall:.2f} s wall",
                     f"{a.scenarios / wall:.1f}/s", (f"<= {SWEEP_TARGET_S:.0f} s {'OK' if ok else 'MISSED'}; "
                     if name == "pool, no storage" else "") + f"CPU {cpu:.1f} s (= {cpu / a.workers:.1f} s "
                     f"wall on {a.workers} idle cores)"))
    print(f"python {sys.version.split()[0]}, simpy {simpy.__version__}, {os.cpu_count()} cpus, "
          f"load avg {os.getloadavg()[0]:.2f}")
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'value':>18}  {'ratio':>9}  target")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>18}  {r[2]:>9}  {r[3]}")
    missed = sim_rate / raw_cb < EVENT_RATE_TARGET or walls["pool, no storage"][0] * scale > SWEEP_TARGET_S
    if missed or a.profile:
        print("\ncProfile of", min(a.single, 50), "scenarios (run_point: simulation + result JSON):")
        print(hotspots(sweep, min(a.single, 50)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

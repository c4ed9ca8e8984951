"""`shardtwin soak`: a long real run (closed loop) with a random fault every ~K seconds.

Rules:
- The faults are drawn up front from one seeded RNG (stream SOAK_STREAM of the scenario
  seed) into the scenario's `faults` list, so a soak is a normal, replayable scenario
  (`shardtwin replay RUN_ID` reruns it). Every failure type except cascade is drawn: the
  first six faults are a shuffled permutation of them, later ones uniform. Faults target a
  shard (the browser holding its primary when the fault fires), so they always hit a worker.
- Figures come from the run's event log (requests, recovery, latency), except memory,
  sampled by a thread of this process every --sample-every seconds: this process's RSS
  (the coordinator) and the PSS of every process in our browsers' sessions. The soak's
  browsers get a profile prefix of their own (MARKER_PREFIX + 'soak<pid>-'), so neither the
  sampling nor the leftover check ever counts another process's browsers.
- Memory growth compares the MEDIAN of the samples in a start window and in an end window of
  the workload (window = max(3 s, 10 % of --duration); the start window begins after a
  warm-up of max(3 s, 10 % of --duration)); samples taken while a memory_pressure fault is
  in effect (+2 s) are excluded, since that memory is the injected fault, not growth. The
  browser target is PSS per live browser (restarts and failovers change how many there are);
  the total is reported too.
- Targets: lost == 0, recovery success >= 99 %, memory growth <= 10 % (both), browser
  processes left afterwards == 0. Exit 1 when one is missed (each named on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from typing import Any, Iterator

import numpy as np
import psutil

from events.scenario import Scenario, parse_scenario
from shardtwin.errors import InputError

SOAK_STREAM = 7      # spawn index of the fault-drawing RNG (compile uses 0)
FAULT_TYPES = ("browser_crash", "disconnect", "hang", "slow", "memory_pressure", "shard_error")
TARGETS = {"lost": 0, "recovery_success_rate": 0.99, "memory_growth": 0.10, "leftover_processes": 0}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="long real run with a random fault every ~K s; checks loss, recovery, "
                                    "memory growth and leftover browsers")
    p.add_argument("--duration", type=float, default=120.0, metavar="SECONDS", help="workload length")
    p.add_argument("--concurrency", type=int, default=50, metavar="N", help="closed-loop clients")
    p.add_argument("--fault-every", type=float, default=10.0, metavar="SECONDS", help="mean time between faults")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--level", default="medium", help="fault-tolerance level (default medium)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-every", type=float, default=1.0, metavar="SECONDS", help="memory sampling period")
    p.add_argument("--launcher", choices=["auto", "playwright", "process"], default="auto")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="whole-run limit (default duration + 300)")
    p.add_argument("--db", default="shardtwin.duckdb", metavar="PATH", help="DuckDB file (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_soak)


# --- the scenario ---------------------------------------------------------------------

def draw_faults(rng: np.random.Generator, duration_s: float, every_s: float, shards: int) -> list[dict[str, Any]]:
    """Fault dicts at ~every_s intervals (uniform 0.5-1.5 x every_s) over the workload."""
    faults: list[dict[str, Any]] = []
    order = list(rng.permutation(FAULT_TYPES))
    t = float(rng.uniform(0.5, 1.5)) * every_s
    while t < duration_s - 1.0:
        kind = order.pop(0) if order else str(rng.choice(FAULT_TYPES))
        f: dict[str, Any] = {"type": kind, "at_ms": round(t * 1000.0, 1), "shard": int(rng.integers(shards))}
        if kind == "disconnect":   # mostly back within the reconnect timeout, sometimes not
            f["reconnect_delay_ms"] = round(float(rng.uniform(200.0, 1500.0)), 1)
        elif kind == "hang":
            f["duration_ms"] = round(float(rng.uniform(1000.0, 4000.0)), 1)
        elif kind == "slow":
            f["duration_ms"] = round(float(rng.uniform(2000.0, 5000.0)), 1)
            f["factor"] = round(float(rng.uniform(2.0, 4.0)), 2)
        elif kind == "memory_pressure":
            f["duration_ms"] = round(float(rng.uniform(2000.0, 5000.0)), 1)
            f["level"] = str(rng.choice(["low", "medium"]))
        faults.append(f)
        t += float(rng.uniform(0.5, 1.5)) * every_s
    return faults


def soak_scenario(a: argparse.Namespace) -> Scenario:
    if not (a.duration > 0 and a.fault_every > 0 and a.concurrency >= 1 and a.sample_every > 0):
        raise InputError("--duration, --fault-every, --sample-every must be > 0 and --concurrency >= 1")
    if not 1 <= a.shards <= 2:
        raise InputError(f"--shards {a.shards}: a soak runs at most 3 browsers here (2 shards + 1 standby); use 1 or 2")
    rng = np.random.default_rng(np.random.SeedSequence(a.seed).spawn(SOAK_STREAM + 1)[SOAK_STREAM])
    return parse_scenario({
        "model": a.model, "shards": a.shards, "fault_tolerance_level": a.level, "seed": a.seed,
        "name": f"soak {a.duration:g}s c{a.concurrency} fault~{a.fault_every:g}s",
        "workload": {"kind": "closed_loop", "concurrency": a.concurrency, "duration_s": a.duration,
                     "seq_len": a.seq_len},
        "faults": draw_faults(rng, a.duration, a.fault_every, a.shards)})


# --- memory and processes -------------------------------------------------------------

def browser_sessions(prefix: str) -> set[int]:
    """Session ids of our browsers (each is launched in its own session, sid = main pid)."""
    from real.browsers import leftover_browser_pids
    sids = set()
    for pid in leftover_browser_pids(prefix):
        with contextlib.suppress(OSError):
            sids.add(os.getsid(pid))
    sids.discard(os.getsid(0))
    return sids


def session_procs(sids: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(p.pid) in sids and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


class Sampler(threading.Thread):
    """Every `every` s: (t since workload start, coordinator RSS MB, browser PSS MB, browsers)."""

    def __init__(self, every: float, prefix: str) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.every, self.prefix = every, prefix
        self.coord: Any = None
        self.t0: float | None = None
        self.samples: list[dict[str, float]] = []
        self.seen: dict[int, float] = {}   # pid -> create_time of every browser process seen
        self.stop = threading.Event()
        self._me = psutil.Process()

    def attach(self, coord: Any) -> None:
        self.coord = coord

    def run(self) -> None:
        while not self.stop.wait(self.every):
            with contextlib.suppress(Exception):   # a sample lost to a race is only a gap
                self._sample()

    def _sample(self) -> None:
        coord = self.coord
        started = None if coord is None else coord.st.workload_started
        sids = browser_sessions(self.prefix)
        procs = session_procs(sids)
        pss = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(p.pid, p.create_time())
                pss += p.memory_full_info().pss
        if started is None or self.t0 is None:
            return
        t_s = (time.monotonic() - self.t0) - started / 1000.0
        self.samples.append({"t_s": round(t_s, 3), "coordinator_rss_mb": self._me.memory_info().rss / 2**20,
                             "browser_pss_mb": pss / 2**20, "browsers": len(sids)})


def still_alive(seen: dict[int, float]) -> list[int]:
    out = []
    for pid, created in seen.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
    return sorted(out)


def memory_growth(samples: list[dict[str, float]], s: Scenario) -> dict[str, Any]:
    """Median of the start and end windows (module rules), per series, and their growth."""
    dur = s.workload.duration_s
    win = max(3.0, 0.1 * dur)
    warm = max(3.0, 0.1 * dur)
    busy = [(f.at_ms / 1000.0, (f.at_ms + (f.duration_ms or 0.0)) / 1000.0 + 2.0)
            for f in s.faults if str(f.type) == "memory_pressure"]
    ok = [x for x in samples if not any(a <= x["t_s"] <= b for a, b in busy)]
    start = [x for x in ok if warm <= x["t_s"] <= warm + win]
    end = [x for x in ok if dur - win <= x["t_s"] <= dur]
    out: dict[str, Any] = {"start_window_s": [warm, warm + win], "end_window_s": [dur - win, dur],
                           "excluded_memory_pressure_s": [[round(a, 1), round(b, 1)] for a, b in busy],
                           "start_samples": start, "end_samples": end}
    for x in samples:
        x["browser_pss_mb_per_browser"] = x["browser_pss_mb"] / x["browsers"] if x["browsers"] else 0.0
    out["browsers_start"] = sorted({x["browsers"] for x in start})
    out["browsers_end"] = sorted({x["browsers"] for x in end})
    for key in ("coordinator_rss_mb", "browser_pss_mb", "browser_pss_mb_per_browser"):
        if not start or not end:
            out[key] = {"start": None, "end": None, "growth": None}
            continue
        a = float(np.median([x[key] for x in start]))
        b = float(np.median([x[key] for x in end]))
        out[key] = {"start": round(a, 1), "end": round(b, 1), "growth": round((b - a) / a, 4) if a else None}
    return out


# --- the run --------------------------------------------------------------------------

def run_soak(s: Scenario, db: str, sample_every: float = 1.0, launcher: str = "auto",
             timeout_s: float | None = None) -> dict[str, Any]:
    """Run the soak scenario for real, store it, and return the report (see module rules)."""
    import real.browsers as browsers
    original = browsers.MARKER_PREFIX
    browsers.MARKER_PREFIX = f"{original}soak{os.getpid()}-"   # this soak's browsers only
    try:
        return _run_soak(s, db, sample_every, launcher, timeout_s)
    finally:
        browsers.MARKER_PREFIX = original


def _run_soak(s: Scenario, db: str, sample_every: float, launcher: str, timeout_s: float | None) -> dict[str, Any]:
    import real.browsers as browsers
    from events.store import Store
    from experiments.runner import run_real_stored
    from sim.profile import DEFAULT_PROFILE

    sampler = Sampler(sample_every, browsers.MARKER_PREFIX)

    def on_server(server: Any) -> None:
        sampler.t0 = time.monotonic()   # the driver's clock started a few ms earlier (server start)

    @contextlib.contextmanager
    def sampling() -> Iterator[None]:
        sampler.start()
        try:
            yield
        finally:
            sampler.stop.set()
            sampler.join(10)

    with Store(db) as store:   # opened (and checked writable) before any browser starts
        stored = run_real_stored(store, s, extra=lambda run: {"weights": run.shards.weights, "aborted": run.aborted},
                                 around=sampling(), launcher=launcher, on_coordinator=sampler.attach,
                                 on_server=on_server, timeout_s=timeout_s or s.workload.duration_s + 300.0,
                                 profile=DEFAULT_PROFILE)
        stored.finish()
    res, run = stored.result, stored.run
    time.sleep(0.5)   # the pool ended every browser; give the kernel a moment to reap
    left = sorted(set(browsers.leftover_browser_pids()) | set(still_alive(sampler.seen)))
    return report(s, res, run, sampler, left)


def report(s: Scenario, res: dict[str, Any], run: Any, sampler: Sampler, left: list[int]) -> dict[str, Any]:
    from events.schema import EventKind as K
    ev = run.log.events
    injected = [e for e in ev if e.kind == K.FAULT_INJECTED]
    by_type: dict[str, int] = {}
    for e in injected:
        by_type[e.details().get("fault", "?")] = by_type.get(e.details().get("fault", "?"), 0) + 1
    mem = memory_growth(sampler.samples, s)
    rate = res["recovery_metrics"]["recovery_success_rate"]
    out = {
        "run_id": res["run_id"], "scenario": s.summary(), "scenario_hash": res["scenario_hash"],
        "weights": res.get("weights"), "aborted": run.aborted,
        "requests": {"accepted": res["requests"]["submitted"], "completed": res["requests"]["completed"],
                     "failed": res["requests"]["failed"], "failed_reasons": res["requests"]["failed_reasons"],
                     "lost": res["requests"]["lost"]},
        "faults": {"scheduled": len(s.faults), "injected": len(injected),
                   "hit_a_live_browser": sum(1 for e in injected if e.browser), "by_type": by_type,
                   "failures_detected": res["recovery_metrics"]["failures_detected"],
                   "recoveries_completed": sum(1 for e in ev if e.kind == K.RECOVERY_COMPLETED),
                   "recoveries_failed": sum(1 for e in ev if e.kind == K.RECOVERY_FAILED)},
        "recovery_success_rate": rate,
        "detections_without_a_fault": unprovoked(ev, s),
        "latency_ms": {"p50": res["latency_ms"]["p50"], "p99": res["latency_ms"]["p99"],
                       "mean": res["latency_ms"]["mean"], "max": res["latency_ms"]["max"]},
        "throughput_rps": res["throughput_rps"],
        "memory": mem, "memory_samples": len(sampler.samples),
        "browser_processes_left": left, "outputs_checked": check_outputs(run, s),
        "targets": TARGETS,
    }
    out["missed"] = missed_targets(out)
    return out


def unprovoked(ev: Any, s: Scenario) -> int:
    """Failure detections of a browser no fault hit in the 10 s before (plus the fault's duration):
    false suspicions (e.g. heartbeats starved on a loaded host). Informational, not a target."""
    from events.schema import EventKind as K
    hits = [(e.browser, e.t_ms, e.details()) for e in ev if e.kind == K.FAULT_INJECTED and e.browser]
    n = 0
    for e in ev:
        if e.kind != K.FAILURE_DETECTED:
            continue
        near = [t for b, t, d in hits if b == e.browser and
                t <= e.t_ms <= t + 10_000.0 + float(dict(d.get("params", [])).get("duration_ms") or 0.0)]
        n += not near
    return n


def check_outputs(run: Any, s: Scenario) -> dict[str, Any]:
    """Cosine of the kept requests' sentence embeddings vs unsharded onnxruntime (BERT family)."""
    try:
        cos = list(run.shards.reference_cosines().values())
        return {"requests": len(cos), "min_cosine": min(cos) if cos else None}
    except Exception as exc:   # a model without a reference path: say so, never guess
        return {"requests": 0, "min_cosine": None, "skipped": f"{type(exc).__name__}: {exc}"[:200]}


def missed_targets(r: dict[str, Any]) -> list[str]:
    miss = []
    if r["aborted"]:
        miss.append(f"run aborted ({r['aborted']})")
    if r["requests"]["lost"] != 0:
        miss.append(f"lost requests: {r['requests']['lost']} (target 0)")
    rate = r["recovery_success_rate"]
    if rate is not None and rate < TARGETS["recovery_success_rate"]:
        miss.append(f"recovery success {rate:.2%} < 99%")
    for key in ("coordinator_rss_mb", "browser_pss_mb_per_browser"):
        g = r["memory"][key]["growth"]
        if g is None:
            miss.append(f"{key}: no start/end samples to compare")
        elif g > TARGETS["memory_growth"]:
            miss.append(f"{key} grew {g:.1%} > 10% ({r['memory'][key]['start']} -> {r['memory'][key]['end']} MB)")
    if r["browser_processes_left"]:
        miss.append(f"browser processes left: {r['browser_processes_left']}")
    oc = r["outputs_checked"]
    if oc.get("min_cosine") is not None and oc["min_cosine"] < 0.99999:
        miss.append(f"wrong outputs: min cosine {oc['min_cosine']:.6f} < 0.99999")
    return miss


def text_lines(r: dict[str, Any]) -> list[str]:
    q, m, lat = r["requests"], r["memory"], r["latency_ms"]

    def f(v: Any, fmt: str = ".1f") -> str:
        return "n/a" if v is None else format(v, fmt)
    return [
        f"soak {r['run_id']}: {r['scenario']}",
        f"requests: accepted {q['accepted']}, completed {q['completed']}, failed {q['failed']} "
        f"{q['failed_reasons'] or ''}, lost {q['lost']}",
        f"faults: {r['faults']['injected']} injected {r['faults']['by_type']}, detected "
        f"{r['faults']['failures_detected']} ({r['detections_without_a_fault']} with no fault nearby), "
        f"recovery success {f(r['recovery_success_rate'], '.2%')}",
        f"latency: p50 {f(lat['p50'])} ms, p99 {f(lat['p99'])} ms; throughput {f(r['throughput_rps'], '.2f')} req/s",
        f"coordinator RSS {m['coordinator_rss_mb']['start']} -> {m['coordinator_rss_mb']['end']} MB "
        f"({f(m['coordinator_rss_mb']['growth'], '+.1%')}); browser PSS {m['browser_pss_mb']['start']} -> "
        f"{m['browser_pss_mb']['end']} MB, per browser {m['browser_pss_mb_per_browser']['start']} -> "
        f"{m['browser_pss_mb_per_browser']['end']} MB ({f(m['browser_pss_mb_per_browser']['growth'], '+.1%')}; "
        f"browsers {m['browsers_start']} -> {m['browsers_end']}); medians of windows "
        f"{m['start_window_s']} vs {m['end_window_s']} s after workload start",
        f"outputs checked: {r['outputs_checked'].get('requests')} (min cosine {f(r['outputs_checked'].get('min_cosine'), '.7f')})",
        f"browser processes left: {len(r['browser_processes_left'])}",
        "targets met" if not r["missed"] else "targets MISSED: " + "; ".join(r["missed"]),
    ]


def cmd_soak(args: argparse.Namespace) -> int:
    import json
    s = soak_scenario(args)
    r = run_soak(s, args.db, args.sample_every, args.launcher, args.timeout)
    sys.stdout.write(json.dumps(r, indent=2, default=str) + "\n" if args.json else "\n".join(text_lines(r)) + "\n")
    if r["aborted"] in ("interrupted", "terminated"):
        sys.stderr.write(f"shardtwin: {r['aborted']}; the soak run is stored as aborted with its events\n")
        return 130 if r["aborted"] == "interrupted" else 143
    if r["missed"]:
        sys.stderr.write("shardtwin: soak targets missed: " + "; ".join(r["missed"]) + "\n")
    return 1 if r["missed"] else 0

"""`shardtwin timeouts`: detector settings from measured heartbeat gaps, then a sim sweep.

Rules:
- Gaps come from HEARTBEAT_RECEIVED events of stored real runs: consecutive heartbeats of one
  browser incarnation, outside shard loads (the detector does not suspect a loading page).
  Each gap is classed idle / load (a shard run of that page overlaps it) / pressure (a
  memory_pressure fault on that page is active). Jitter is additive: a gap measured at
  interval h0 becomes h + (gap - h0) at interval h.
- QoS (Chen, Toueg, Aguilera 2002) of a detector that suspects after silence T since the
  last heartbeat: mistake rate lambda_M = 3600e3 / E[gap] * P(gap > T) per browser-hour;
  detection time after a crash/hang at a random moment T_D = T - E[A], where A, the age of
  the last heartbeat at the fault, has E[A] = E[gap^2] / (2 E[gap]) (inspection paradox).
  P(gap > T) beyond the data uses an exponential tail fitted to the top 20% of gaps (peaks
  over threshold). phi-accrual's T is what coordinator.detector.suspicion_delay computes
  from the same gaps. The budget is checked against the worst gap class.
- A setting that breaks heartbeat interval < detector timeout < request timeout is refused
  with coordinator.settings.check's reason, never evaluated.
- Recommendation per level: among settings inside the budget, the sim (calibrated profile,
  a crash and a hang) picks the interval, detector and strategy with the lowest mean outage
  (fault -> recovery completed); ties by fewer heartbeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from coordinator.detector import suspicion_delay
from coordinator.settings import LEVELS, Settings, check
from events.store import DEFAULT_DB_PATH, Store
from shardtwin.errors import ConfigError, InputError
from shardtwin.vocab import FaultToleranceLevel, RecoveryStrategy

INTERVALS_MS = (100.0, 200.0, 250.0, 500.0, 1000.0)
TIMEOUT_MULTIPLES = (1.5, 2.0, 3.0, 4.0, 6.0, 10.0)
PHI_THRESHOLDS = (1.0, 2.0, 3.0, 5.0, 8.0, 12.0)
STRATEGIES = (RecoveryStrategy.RESTART, RecoveryStrategy.FAILOVER, RecoveryStrategy.PROGRESSIVE,
              RecoveryStrategy.PARALLEL)
CLASSES = ("idle", "load", "pressure")


# --- gaps ----------------------------------------------------------------------------

def measured_gaps(store: Store, run_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """{'interval_ms': median interval of the runs, 'extra': {class: [gap - interval, ...]},
    'startup_ms': [browser ready -> first heartbeat (spans the first load), ...]}."""
    from coordinator.settings import resolve
    runs = list(run_ids) if run_ids else [r.run_id for r in store.runs(source="real")]
    extra: dict[str, list[float]] = {c: [] for c in CLASSES}
    startup: list[float] = []
    intervals: list[float] = []
    for run_id in runs:
        rec = store.run(run_id)
        s = store.load_scenario(rec.scenario_hash)
        h = resolve(s.fault_tolerance_level, s.recovery_strategy, s.tolerance).heartbeat_interval_ms
        got = classify_gaps(store.query("SELECT t_ms, kind, browser, detail FROM events WHERE run_id = ? ORDER BY seq",
                                        [run_id]))
        if any(got.values()):
            intervals.append(h)
        for c in CLASSES:
            extra[c] += [g - h for g in got[c]]
        startup += got["startup"]
    return {"interval_ms": float(np.median(intervals)) if intervals else None, "extra": extra, "runs": runs,
            "startup_ms": startup}


def classify_gaps(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Heartbeat gaps of one run's events (dicts with t_ms, kind, browser, detail), by class."""
    out: dict[str, list[float]] = {c: [] for c in (*CLASSES, "startup")}
    last: dict[str, float] = {}
    ready: dict[str, float] = {}            # browser ready, no heartbeat yet (its first gap spans the load)
    loading: set[str] = set()
    running: dict[str, int] = {}
    busy_since: dict[str, float] = {}       # last time a shard run was in flight on the browser
    pressure: set[str] = set()
    for e in events:
        k, b, t = e["kind"], e["browser"], e["t_ms"]
        if k == "shard_load_started":
            loading.add(b)
            last.pop(b, None)
        elif k in ("shard_loaded", "shard_load_failed"):
            loading.discard(b)
            last.pop(b, None)
        elif k in ("browser_ready", "browser_crashed", "connection_closed", "connection_restored", "browser_closed"):
            last.pop(b, None)
            ready.pop(b, None)
            if k == "browser_ready":
                ready[b] = t
            running[b] = 0
            pressure.discard(b)
        elif k == "shard_started":
            running[b] = running.get(b, 0) + 1
            busy_since[b] = t
        elif k in ("shard_completed", "shard_failed"):
            running[b] = max(running.get(b, 0) - 1, 0)
            busy_since[b] = t
        elif k == "fault_injected" and b:
            d = json.loads(e["detail"] or "{}")
            if d.get("fault") == "memory_pressure":
                pressure.add(b)
            elif d.get("fault") in ("hang", "browser_crash", "disconnect"):
                last.pop(b, None)
                loading.add(b) if d.get("fault") == "hang" else None   # a hang's silence is no gap sample
        elif k == "fault_cleared" and b:
            pressure.discard(b)
            loading.discard(b)
            last.pop(b, None)
        elif k == "heartbeat_received":
            if b in ready:
                out["startup"].append(t - ready.pop(b))
            if b in last and b not in loading:
                cls = "pressure" if b in pressure else \
                    "load" if running.get(b, 0) > 0 or busy_since.get(b, -1e18) >= last[b] else "idle"
                out[cls].append(t - last[b])
            last[b] = t
    return out


# --- QoS -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class QoS:
    timeout_ms: float            # silence after the last heartbeat that means failure
    mistake_rate_per_h: float    # false suspicions per browser-hour
    detection_ms: float          # expected fault -> suspicion
    p_exceed: float


def tail_prob(gaps: np.ndarray, t: float) -> float:
    """P(gap > t): empirical inside the data, exponential peaks-over-threshold tail beyond."""
    g = np.sort(np.asarray(gaps, dtype=float))
    n = len(g)
    if n == 0:
        return math.nan
    u = float(np.quantile(g, 0.8))
    exc = g[g > u] - u
    if t <= u or len(exc) < 2:
        return float(np.mean(g > t))
    beta = max(float(np.mean(exc)), 1e-3)
    return float(len(exc) / n * math.exp(-(t - u) / beta))


def qos(gaps: Iterable[float], timeout_ms: float) -> QoS:
    g = np.asarray(list(gaps), dtype=float)
    mean = float(np.mean(g))
    age = float(np.mean(g ** 2) / (2 * mean))
    p = tail_prob(g, timeout_ms)
    return QoS(timeout_ms, 3600e3 / mean * p, max(timeout_ms - age, 0.0), p)


def phi_timeout(gaps: list[float], s: Settings) -> float:
    """The silence at which phi-accrual suspects, given a window of gaps (coordinator code)."""
    return suspicion_delay(list(gaps)[-100:], s)


@dataclass(frozen=True, slots=True)
class Candidate:
    settings: Settings
    qos: dict[str, QoS]          # per gap class
    worst_rate: float
    detection_ms: float

    def label(self) -> str:
        s = self.settings
        det = f"fixed {s.detector_timeout_ms:g} ms" if s.detector == "fixed" else \
            f"phi {s.phi_threshold:g} (<= {s.detector_timeout_ms:g} ms)"
        return f"hb {s.heartbeat_interval_ms:g} ms, {det}"


def candidates(level: FaultToleranceLevel, extra: dict[str, list[float]], request_timeout_ms: float | None = None,
               intervals=INTERVALS_MS) -> tuple[list[Candidate], list[str]]:
    """Every grid setting for a level with its QoS per gap class; refused settings with reasons."""
    base = LEVELS[level]
    rt = request_timeout_ms or base.request_timeout_ms
    out, refused = [], []
    classes = {c: v for c, v in extra.items() if len(v) >= 5}
    if not classes:
        raise InputError("too few heartbeat gaps measured (need >= 5 in some class); run `shardtwin timeouts --collect`")
    for h in intervals:
        grid = [dataclasses.replace(base, heartbeat_interval_ms=h, detector="fixed", detector_timeout_ms=h * m,
                                    request_timeout_ms=rt) for m in TIMEOUT_MULTIPLES]
        grid += [dataclasses.replace(base, heartbeat_interval_ms=h, detector="phi", phi_threshold=ph,
                                     detector_timeout_ms=max(min(h * 10, rt * 0.9), h * 1.01), request_timeout_ms=rt)
                 for ph in PHI_THRESHOLDS]
        for s in grid:
            try:
                check(s)
            except ConfigError as exc:
                refused.append(str(exc))
                continue
            q = {}
            for c, ex in classes.items():
                gaps = [max(h + x, 1.0) for x in ex]
                t = s.detector_timeout_ms if s.detector == "fixed" else phi_timeout(gaps, s)
                q[c] = qos(gaps, t)
            out.append(Candidate(s, q, max(v.mistake_rate_per_h for v in q.values()),
                                 max(v.detection_ms for v in q.values())))
    return out, refused


# --- sim sweep -----------------------------------------------------------------------

def sweep_scenarios(model: str = "all-MiniLM-L6-v2") -> list[dict[str, Any]]:
    base = {"model": model, "shards": 2, "shard_type": "layer", "browsers": ["chromium", "firefox"], "backend": "wasm",
            "workload": {"kind": "closed_loop", "concurrency": 1, "duration_s": 12.0, "batch_size": 1, "seq_len": 32}}
    return [{**base, "name": "crash", "faults": [{"type": "browser_crash", "at_ms": 1000.0, "browser": "firefox"}]},
            {**base, "name": "hang", "faults": [{"type": "hang", "at_ms": 1000.0, "browser": "firefox"}]}]


def tolerance_of(settings: Settings) -> dict[str, Any]:
    """The scenario tolerance overrides that select `settings`' detector."""
    tol = {"heartbeat_interval_ms": settings.heartbeat_interval_ms, "detector": settings.detector,
           "detector_timeout_ms": settings.detector_timeout_ms, "request_timeout_ms": settings.request_timeout_ms}
    if settings.detector == "phi":
        tol["phi_threshold"] = settings.phi_threshold
    return tol


def sim_outage(settings: Settings, strategy: RecoveryStrategy, profile, scenarios: list[dict]) -> dict[str, Any]:
    from events.metrics import fault_timeline
    from events.scenario import parse_scenario
    from sim.run import run_scenario
    tol = tolerance_of(settings)
    outages, detections, failed = [], [], 0
    for spec in scenarios:
        s = parse_scenario({**spec, "fault_tolerance_level": str(settings.level), "recovery_strategy": str(strategy),
                            "tolerance": tol})
        run = run_scenario(s, profile)
        timeline = fault_timeline(run.log)
        failed += 0 if timeline else 1          # the fault never met a live target
        for f in timeline:
            if f["outage_ms"] is None or not f["recovered"]:
                failed += 1
            else:
                outages.append(f["outage_ms"])
            if f["detection_ms"] is not None:
                detections.append(f["detection_ms"])
        failed += sum(1 for e in run.log.events if str(e.kind) == "request_failed")
    return {"mean_outage_ms": float(np.mean(outages)) if outages else math.inf,
            "mean_detection_ms": float(np.mean(detections)) if detections else math.inf, "failed": failed}


def recommend(extra: dict[str, list[float]], budget_per_h: float, profile, levels: list[FaultToleranceLevel],
              out=None, intervals=INTERVALS_MS, strategies=STRATEGIES,
              request_timeout_ms: float | None = None) -> dict[str, Any]:
    out = out or sys.stdout.write
    recs: dict[str, Any] = {}
    scenarios = sweep_scenarios()
    for level in levels:
        if level == FaultToleranceLevel.NONE:
            continue
        cands, refused = candidates(level, extra, request_timeout_ms, intervals=intervals)
        for reason in sorted(set(refused))[:3]:
            out(f"  {level}: refused: {reason}\n")
        ok = [c for c in cands if c.worst_rate <= budget_per_h]
        if not ok:
            recs[str(level)] = {"error": f"no setting meets {budget_per_h:g} false suspicions/hour"}
            continue
        # per interval and detector kind, the fastest-detecting setting inside the budget
        best: dict[tuple[float, str], Candidate] = {}
        for c in ok:
            key = (c.settings.heartbeat_interval_ms, c.settings.detector)
            if key not in best or c.detection_ms < best[key].detection_ms:
                best[key] = c
        trials = []
        for c in best.values():
            for strat in strategies:
                r = sim_outage(c.settings, strat, profile, scenarios)
                trials.append((r["failed"], r["mean_outage_ms"], -c.settings.heartbeat_interval_ms, c, strat, r))
        trials.sort(key=lambda x: x[:3])
        failed, outage, _, c, strat, r = trials[0]
        recs[str(level)] = {
            "heartbeat_interval_ms": c.settings.heartbeat_interval_ms, "detector": c.settings.detector,
            "detector_timeout_ms": c.settings.detector_timeout_ms, "phi_threshold": c.settings.phi_threshold,
            "strategy": str(strat), "predicted_detection_ms": c.detection_ms,
            "false_suspicions_per_h": c.worst_rate, "sim_mean_outage_ms": outage, "sim_mean_detection_ms":
                r["mean_detection_ms"], "sim_failed": failed, "label": c.label(),
            "refused": len(refused), "candidates_in_budget": len(ok), "candidates": len(cands)}
        out(f"  {level}: {c.label()}, strategy {strat}: predicted detection {c.detection_ms:.0f} ms, "
            f"{c.worst_rate:.3g} false suspicions/h (budget {budget_per_h:g}); sim outage {outage:.0f} ms "
            f"(crash+hang mean), {failed} failed; {len(ok)}/{len(cands)} settings in budget, {len(refused)} refused\n")
    return recs


# --- command -------------------------------------------------------------------------

TIMEOUT_SUITE = (
    {"name": "hb: idle", "workload": {"kind": "closed_loop", "concurrency": 1, "duration_s": 12.0, "think_ms": 1500.0,
                                      "batch_size": 1, "seq_len": 32}},
    {"name": "hb: under load", "workload": {"kind": "closed_loop", "concurrency": 2, "duration_s": 12.0,
                                            "batch_size": 1, "seq_len": 128}},
    {"name": "hb: memory pressure", "workload": {"kind": "closed_loop", "concurrency": 1, "duration_s": 12.0,
                                                 "batch_size": 1, "seq_len": 64},
     "faults": [{"type": "memory_pressure", "at_ms": 500.0, "browser": "0", "level": "medium"},
                {"type": "memory_pressure", "at_ms": 500.0, "browser": "1", "level": "medium"}]},
)


def collect_gaps(db: str, interval_ms: float = 200.0, out=sys.stdout.write) -> list[str]:
    from events.scenario import parse_scenario
    from experiments.cmd_real import real_and_store
    ids = []
    for spec in TIMEOUT_SUITE:
        s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer",
                            "browsers": ["chromium", "firefox"], "backend": "wasm",
                            "tolerance": {"heartbeat_interval_ms": interval_ms, "detector_timeout_ms": 30000.0},
                            **spec})
        res = real_and_store(s, db, timeout_s=120.0)
        out(f"collect: {spec['name']}: run {res['run_id']}\n")
        ids.append(res["run_id"])
    return ids


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("timeouts", help="recommend heartbeat/detector/strategy per level from measured heartbeat gaps")
    p.add_argument("--db", default=str(DEFAULT_DB_PATH), metavar="PATH")
    p.add_argument("--false-failover-budget", type=float, default=1.0, metavar="N",
                   help="false suspicions per browser-hour allowed (default 1)")
    p.add_argument("--level", action="append", choices=[x.value for x in FaultToleranceLevel],
                   help="levels to recommend for (repeat; default low..critical)")
    p.add_argument("--profile", metavar="P", help="sim profile (file or stored name; default: latest 'calibrated')")
    p.add_argument("--runs", nargs="+", metavar="RUN_ID", help="runs to take heartbeat gaps from (default: all real)")
    p.add_argument("--collect", action="store_true", help="measure gaps in real runs first (idle, load, pressure)")
    p.add_argument("--verify", action="store_true", help="run the recommendation for real (crash + hang) and check")
    p.add_argument("--request-timeout", type=float, metavar="SECONDS", help="request timeout the settings must stay under "
                   "(default: the level's)")
    p.add_argument("--check", action="append", metavar="HB_MS:TIMEOUT_MS",
                   help="evaluate a fixed-timeout setting (or see why it is refused); repeat for more")
    p.add_argument("-o", "--output", metavar="FILE", help="write the recommendation JSON here")
    p.set_defaults(func=cmd_timeouts)


def check_setting(spec: str, extra: dict[str, list[float]], level: FaultToleranceLevel,
                  request_timeout_ms: float | None = None) -> str:
    """One line: the QoS of a fixed-timeout setting 'HB_MS:TIMEOUT_MS', or why it is refused."""
    try:
        hb, t = (float(x) for x in spec.split(":"))
    except ValueError:
        raise InputError(f"--check {spec!r}: expected HB_MS:TIMEOUT_MS, e.g. 200:1000") from None
    s = dataclasses.replace(LEVELS[level], heartbeat_interval_ms=hb, detector="fixed", detector_timeout_ms=t,
                            request_timeout_ms=request_timeout_ms or LEVELS[level].request_timeout_ms)
    try:
        check(s)
    except ConfigError as exc:
        return f"{spec}: refused: {exc}"
    parts = []
    for c, ex in extra.items():
        if len(ex) >= 5:
            q = qos([max(hb + x, 1.0) for x in ex], t)
            parts.append(f"{c} {q.mistake_rate_per_h:.3g} false/h, detection {q.detection_ms:.0f} ms")
    return f"{spec}: " + "; ".join(parts)


def _profile(spec: str | None, db: str):
    from experiments.cmd_validate import resolve_profile
    if spec:
        return resolve_profile(spec, db)
    try:
        return resolve_profile("calibrated", db)
    except Exception:
        return resolve_profile(None, db)


def cmd_timeouts(args: argparse.Namespace) -> int:
    out = sys.stdout.write
    runs = list(args.runs or [])
    if args.collect:
        runs += collect_gaps(args.db)
    with Store(args.db) as store:
        g = measured_gaps(store, runs or None)
    extra = g["extra"]
    if sum(len(v) for v in extra.values()) < 5:
        raise InputError(f"no heartbeat gaps in {args.db}; run `shardtwin timeouts --collect --db {args.db}`")
    out(f"heartbeat gaps from {len(g['runs'])} run(s) at interval {g['interval_ms']:g} ms: " + ", ".join(
        f"{c} n={len(v)} extra p50 {np.median(v):.1f} p99 {np.quantile(v, .99):.1f} max {max(v):.1f} ms"
        for c, v in extra.items() if v) + "\n")
    profile = _profile(args.profile, args.db)
    levels = [FaultToleranceLevel(x) for x in (args.level or ["low", "medium", "high", "critical"])]
    rt = args.request_timeout * 1000.0 if args.request_timeout else None
    for spec in args.check or []:
        out(check_setting(spec, extra, levels[0], rt) + "\n")
    out(f"budget: {args.false_failover_budget:g} false suspicions per browser-hour (worst gap class); "
        f"sim profile {profile.name} v{profile.version}\n")
    recs = recommend(extra, args.false_failover_budget, profile, levels, out, request_timeout_ms=rt)
    result = {"budget_per_h": args.false_failover_budget, "gaps": {c: len(v) for c, v in extra.items()},
              "gap_interval_ms": g["interval_ms"], "profile": f"{profile.name} v{profile.version}",
              "recommendations": recs}
    if args.verify:
        level = str(levels[0]) if len(levels) == 1 else "medium"
        if "error" in recs.get(level, {"error": ""}):
            raise InputError(f"no recommendation for level {level} to verify")
        result["verify"] = verify(level, recs[level], args.db, profile, out, extra, g["startup_ms"])
    if args.output:
        from experiments.runner import write_json_atomic
        write_json_atomic(args.output, result)
    return 0 if all("error" not in r for r in recs.values()) and result.get("verify", {}).get("ok", True) else 1


# --- verify ----------------------------------------------------------------------------

def verify_scenario(level: str, rec: dict[str, Any]) -> dict[str, Any]:
    """MiniLM, 2 shards, one client for 20 s: firefox crashes at 1.5 s, chromium hangs (for good) at 9 s."""
    return {"name": f"timeouts --verify {level}", "model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer",
            "browsers": ["chromium", "firefox"], "backend": "wasm", "fault_tolerance_level": level,
            "recovery_strategy": rec["strategy"],
            "tolerance": {k: rec[k] for k in ("heartbeat_interval_ms", "detector", "detector_timeout_ms",
                                               *(("phi_threshold",) if rec["detector"] == "phi" else ()))},
            "workload": {"kind": "closed_loop", "concurrency": 1, "duration_s": 20.0, "batch_size": 1, "seq_len": 32},
            "faults": [{"type": "browser_crash", "at_ms": 1500.0, "browser": "1"},
                       {"type": "hang", "at_ms": 9000.0, "browser": "0"}]}


def false_suspicions(store: Store, run_id: str) -> tuple[int, float]:
    """(heartbeat-timeout detections of browsers with no fault injected before them, browser-hours observed)."""
    ev = store.query("SELECT t_ms, kind, browser, detail FROM events WHERE run_id = ? ORDER BY seq", [run_id])
    faulted: set[str] = set()
    false = 0
    up: dict[str, float] = {}
    hours = 0.0
    for e in ev:
        b, k = e["browser"], e["kind"]
        if k == "fault_injected" and b:
            faulted.add(b)
        elif k == "failure_detected" and json.loads(e["detail"] or "{}").get("cause") == "heartbeat_timeout" \
                and b not in faulted:
            false += 1
        if k == "browser_ready":
            up[b] = e["t_ms"]
        elif k in ("browser_crashed", "browser_closed", "failure_detected") and b in up:
            hours += (e["t_ms"] - up.pop(b)) / 3600e3
    end = ev[-1]["t_ms"] if ev else 0.0
    hours += sum((end - t) / 3600e3 for t in up.values())
    return false, hours


def _recurrence(gaps: Iterable[float]) -> float:
    """Mean forward-recurrence time of a renewal stream with these gaps: E[g^2] / (2 E[g])."""
    g = np.asarray(list(gaps), dtype=float)
    return float(np.mean(g ** 2) / (2 * np.mean(g))) if len(g) else 0.0


def page_activity(events: list[dict[str, Any]], browser: str, at_ms: float, span_ms: float = 2000.0
                  ) -> tuple[float, float, float | None]:
    """Over the span_ms before at_ms, `browser`'s (busy share, expected residual ms of a shard run in
    progress, expected age of its last sign of life (heartbeat or answer) when idle; None: none seen),
    from its SHARD_STARTED -> SHARD_COMPLETED round trips and heartbeats."""
    started: dict[tuple, float] = {}
    spans, life = [], []
    for e in events:
        if e["browser"] != browser or not at_ms - span_ms <= e["t_ms"] < at_ms + 1000.0:
            continue
        key = (e.get("request_id"), e.get("shard"), e.get("attempt"))
        if e["kind"] == "shard_started":
            started[key] = e["t_ms"]
        elif e["kind"] == "shard_completed" and key in started:
            t0, t1 = started.pop(key), e["t_ms"]
            if t1 > at_ms - span_ms and t0 < at_ms:
                spans.append((t0, t1))
        if e["kind"] in ("heartbeat_received", "shard_completed", "shard_loaded") and e["t_ms"] < at_ms:
            life.append(e["t_ms"])
    age = _recurrence(np.diff(life)) if len(life) > 2 else None
    if not spans:
        return 0.0, 0.0, age
    busy = sum(min(t1, at_ms) - max(t0, at_ms - span_ms) for t0, t1 in spans) / span_ms
    return min(max(busy, 0.0), 1.0), _recurrence(t1 - t0 for t0, t1 in spans), age


def window_detection(rec: dict[str, Any], level: str, extra: dict[str, list[float]], startup_ms: list[float],
                     beats: int, busy: float = 0.0, residual_ms: float = 0.0, age_ms: float | None = None) -> float:
    """Expected hang detection when the detector's window holds the startup gap (ready -> first
    heartbeat, which spans Chromium's blocked first load) and `beats` ordinary gaps: the phi
    detector's mean and spread include that long gap until 100 heartbeats pushed it out.
    Silence starts at the page's last sign of life (a heartbeat or any answer). Idle, that is on
    average a forward-recurrence time of those signs before the hang (`age_ms`; default: of the
    heartbeat gaps); busy (share `busy`), the page only hangs once the shard run in progress ends
    and its answer went out, on average `residual_ms` after the hang was sent (measured: 431 ms
    for a 400 ms timeout, where the heartbeat-only formula said 333)."""
    h = rec["heartbeat_interval_ms"]
    ex = extra.get("load") if len(extra.get("load", [])) >= 5 else extra.get("idle", [])
    gaps = [max(h + x, 1.0) for x in ex]
    s = dataclasses.replace(LEVELS[FaultToleranceLevel(level)], heartbeat_interval_ms=h, detector=rec["detector"],
                            detector_timeout_ms=rec["detector_timeout_ms"], phi_threshold=rec["phi_threshold"])
    q = np.quantile(gaps, (np.arange(beats) + 0.5) / max(beats, 1)) if beats else []
    window = ([float(np.median(startup_ms))] if startup_ms and beats < 100 else []) + list(q)
    t = s.detector_timeout_ms if s.detector == "fixed" else phi_timeout(window, s)
    age = _recurrence(gaps) if age_ms is None else age_ms
    return max(t - (1.0 - busy) * age + busy * residual_ms, 0.0)


def verify(level: str, rec: dict[str, Any], db: str, profile, out=sys.stdout.write,
           extra: dict[str, list[float]] | None = None, startup_ms: list[float] | None = None) -> dict[str, Any]:
    """Run the recommendation for real and in sim; measured hang detection and false suspicions vs prediction
    (the steady-state QoS figure, and the one for the detector window the run actually has at the hang)."""
    from scipy.stats import poisson
    from events.scenario import parse_scenario
    from experiments.cmd_real import real_and_store
    from experiments.cmd_sim import simulate_and_store
    s = parse_scenario(verify_scenario(level, rec))
    sim_id = simulate_and_store(s, profile, db)["run_id"]
    real_id = real_and_store(s, db, timeout_s=300.0)["run_id"]
    with Store(db) as store:
        rows = {(r["source"], r["type"]): r for r in store.query(
            "SELECT source, type, detection_ms, recovery_ms FROM fault_recovery WHERE run_id IN (?, ?)",
            [real_id, sim_id])}
        false, hours = false_suspicions(store, real_id)
    measured = (rows.get(("real", "hang")) or {}).get("detection_ms")
    sim_det = (rows.get(("sim", "hang")) or {}).get("detection_ms")
    steady = rec["predicted_detection_ms"]
    pred = steady
    busy = residual = 0.0
    age: float | None = None
    if extra is not None and s.workload.kind.value == "closed_loop":
        hang_at = next(f.at_ms for f in s.faults if f.type == "hang")
        with Store(db) as store:
            ev = store.query("SELECT t_ms, kind, browser, request_id, shard, attempt, detail FROM events "
                             "WHERE run_id = ? ORDER BY seq", [real_id])
        inj = next((e for e in ev if e["kind"] == "fault_injected" and e["browser"]
                    and json.loads(e["detail"] or "{}").get("fault") == "hang"), None)
        if inj is not None:      # how busy the hung page was: the workload's shape, not the outcome
            busy, residual, age = page_activity(ev, inj["browser"], inj["t_ms"])
        pred = window_detection(rec, level, extra, startup_ms or [], int(hang_at // rec["heartbeat_interval_ms"]),
                                busy, residual, age)
    expected = rec["false_suspicions_per_h"] * hours
    det_err = None if measured is None else abs(measured - pred) / pred * 100
    ok_det = det_err is not None and det_err <= 20.0
    ok_false = false <= poisson.ppf(0.975, expected)
    res = {"level": level, "real_run": real_id, "sim_run": sim_id, "measured_hang_detection_ms": measured,
           "predicted_detection_ms": pred, "steady_state_prediction_ms": steady, "hung_page_busy_share": busy,
           "run_residual_ms": residual, "sim_hang_detection_ms": sim_det, "detection_err_pct": det_err,
           "false_suspicions": false, "browser_hours": hours, "expected_false_suspicions": expected,
           "crash_detection_ms": (rows.get(("real", "browser_crash")) or {}).get("detection_ms"),
           "ok_detection": bool(ok_det), "ok_false_suspicions": bool(ok_false), "ok": bool(ok_det and ok_false)}
    out(f"verify {level} (real run {real_id}): hang detected after {_ms(measured)} (predicted {pred:.0f} ms by QoS "
        f"for this run's detector window and a page {busy:.0%} busy, {steady:.0f} ms in steady state, "
        f"{_ms(sim_det)} by sim; error {_pct(det_err)}: {'ok' if ok_det else 'MISS'} within 20%); "
        f"false suspicions {false} in {hours * 3600:.0f} browser-s (expected {expected:.2g}): "
        f"{'ok' if ok_false else 'MISS'}\n")
    return res


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"

"""Metrics from an event log, for both engines: the seed guide's result JSON and extras.

Rules: computed only from events (never from counters inside a driver), so a stored run
gives the same figures as the live one. Anything that cannot be measured is null, never
a made-up number (e.g. recovery_success_rate is null when nothing failed).
"""

from __future__ import annotations

import json
import math
import platform
from bisect import bisect_left, bisect_right
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import numpy as np

from events.scenario_file import scenario_hash
from events.schema import Event, EventKind as K, EventLog

Index = dict[K, list[Event]]


def index(log: EventLog) -> Index:
    """The log's events by kind, in log order (one pass; every metric reads from it)."""
    by: Index = defaultdict(list)
    for e in log.events:
        by[e.kind].append(e)
    return by


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency_summary(log: EventLog, by: Index | None = None) -> dict[str, Any]:
    by = index(log) if by is None else by
    done = [e.value for e in by[K.REQUEST_COMPLETED] if e.value is not None]
    failed = by[K.REQUEST_FAILED]
    submitted = by[K.REQUEST_SUBMITTED]
    reasons: dict[str, int] = {}
    for e in failed:
        why = e.details().get("reason", "unknown")
        reasons[why] = reasons.get(why, 0) + 1
    start = by[K.WORKLOAD_STARTED][0].t_ms if by[K.WORKLOAD_STARTED] else None
    ends = [e.t_ms for e in (*by[K.REQUEST_COMPLETED], *failed)]
    span = (max(ends) - start) if ends and start is not None else None
    return {
        "requests": {"submitted": len(submitted), "completed": len(done), "failed": len(failed),
                     "lost": len(submitted) - len(done) - len(failed), "failed_reasons": reasons},
        "latency_ms": {"mean": float(np.mean(done)) if done else None, "p50": _pct(done, 50),
                       "p90": _pct(done, 90), "p95": _pct(done, 95), "p99": _pct(done, 99),
                       "max": max(done) if done else None},
        "throughput_rps": (len(done) / (span / 1000.0)) if span else None,
        "workload_ms": span,
    }


def _by_browser(events: list[Event]) -> dict[str, tuple[list[int], list[Event]]]:
    """Events with a browser, grouped by it: (their seqs, the events), both in seq order."""
    out: dict[str, tuple[list[int], list[Event]]] = {}
    for e in events:
        if e.browser is not None:
            seqs, evs = out.setdefault(e.browser, ([], []))
            seqs.append(e.seq)
            evs.append(e)
    return out


def _first_in(group: tuple[list[int], list[Event]] | None, lo: int, hi: float) -> Event | None:
    """The first event with lo < seq < hi."""
    if group is None:
        return None
    i = bisect_right(group[0], lo)
    return group[1][i] if i < len(group[0]) and group[0][i] < hi else None


def _last_in(group: tuple[list[int], list[Event]] | None, lo: int, hi: float) -> Event | None:
    """The last event with lo < seq < hi."""
    if group is None:
        return None
    i = bisect_left(group[0], hi) - 1
    return group[1][i] if i >= 0 and group[0][i] > lo else None


def fault_timeline(log: EventLog, by: Index | None = None) -> list[dict[str, Any]]:
    """Per FAULT_INJECTED with a browser: its detection and recovery outcome, by the rule of
    the `fault_recovery` SQL view (events/views.py; the two must agree, tests/events/
    test_fault_timeline.py checks it). A fault's window runs until the next FAULT_INJECTED on
    the same browser; detected = the first FAILURE_DETECTED in the window; the outcome is the
    first RECOVERY_COMPLETED after the detection (or after the injection when undetected),
    else the last RECOVERY_FAILED there, else none; all on the fault's browser, whatever the
    request id. detection_ms = detected - injected; recovery_ms = outcome - detected (or -
    injected when undetected); outage_ms = outcome - injected; recovered = the outcome is a
    RECOVERY_COMPLETED; action = the outcome's action. One pass plus a bisect per lookup."""
    by = index(log) if by is None else by
    det, ok, bad = (_by_browser(by[k]) for k in (K.FAILURE_DETECTED, K.RECOVERY_COMPLETED, K.RECOVERY_FAILED))
    faults = [f for f in by[K.FAULT_INJECTED] if f.browser is not None]
    next_seq: dict[int, float] = {}
    following: dict[str, float] = {}
    for f in reversed(faults):                  # the window of each fault ends at the next one
        next_seq[f.seq] = following.get(f.browser, math.inf)
        following[f.browser] = f.seq
    out = []
    for f in faults:
        hi = next_seq[f.seq]
        d = _first_in(det.get(f.browser), f.seq, hi)
        lo = f.seq if d is None else d.seq
        end = _first_in(ok.get(f.browser), lo, hi)
        if end is None:
            end = _last_in(bad.get(f.browser), lo, hi)
        since = f.t_ms if d is None else d.t_ms
        out.append({
            "fault": f.details().get("fault"), "browser": f.browser, "shard": f.shard, "injected_ms": f.t_ms,
            "detected_ms": d.t_ms if d is not None else None,
            "detection_ms": (d.t_ms - f.t_ms) if d is not None else None,
            "cause": d.details().get("cause") if d is not None else None,
            "recovered": end is not None and end.kind == K.RECOVERY_COMPLETED,
            "recovery_ms": (end.t_ms - since) if end is not None else None,
            "outage_ms": (end.t_ms - f.t_ms) if end is not None else None,
            "action": end.details().get("action") if end is not None else None,
        })
    return out


def unfired_faults(log: EventLog, by: Index | None = None) -> list[dict[str, Any]]:
    """Scheduled faults that never took effect because the run ended first (a fault's at_ms
    counts from the workload start; a short workload can finish before it)."""
    by = index(log) if by is None else by
    fired = set()
    for e in by[K.FAULT_INJECTED]:
        p = dict(e.details().get("params", ()))
        fired.add((p.get("fault"), p.get("cascade_index")))
    end = max((e.t_ms for e in by[K.RUN_FINISHED]), default=None)
    start = by[K.WORKLOAD_STARTED][0].t_ms if by[K.WORKLOAD_STARTED] else None
    out = []
    for e in by[K.FAULT_SCHEDULED]:
        d = e.details()
        if (d.get("fault"), d.get("cascade_index")) not in fired:
            out.append({"fault": d.get("type"), "index": d.get("fault"), "at_ms": d.get("at_ms"),
                        "run_ended_at_ms": None if end is None or start is None else round(end - start, 1)})
    return out


def _allocation(by: Index, backend: str, specs: dict[int, str]) -> dict[str, Any]:
    alloc: dict[str, Any] = {}
    for e in by[K.SHARD_PLACED]:
        if str(e.shard) not in alloc and e.details().get("role") == "primary":
            alloc[str(e.shard)] = {"browser": (e.browser or "").rsplit("-", 1)[0], "browser_id": e.browser,
                                   "platform": backend, "specialization": specs.get(e.shard, "")}
    for e in by[K.BACKEND_FALLBACK]:
        for a in alloc.values():
            if a["browser_id"] == e.browser:
                a["platform"] = e.details().get("got", a["platform"])
    return dict(sorted(alloc.items(), key=lambda kv: int(kv[0])))


def _recovery(by: Index, strategy: str) -> tuple[dict[str, Any], dict[str, Any]]:
    detected, ok, bad = by[K.FAILURE_DETECTED], by[K.RECOVERY_COMPLETED], by[K.RECOVERY_FAILED]
    attempts = [e for e in by[K.RECOVERY_STARTED] if e.details().get("action") != "detect"]
    actions = sorted({e.details().get("action", "") for e in ok})
    ended = len(ok) + len(bad)
    rm = {"failures_detected": len(detected),
          "recovery_success_rate": (len(ok) / ended) if ended else None,
          "recovery_time_ms": float(np.mean([e.value for e in ok])) if ok else None,
          "recovery_method": strategy if not actions else f"{strategy} ({', '.join(actions)})"}
    em = {"initial_errors": len(detected), "recovery_attempts": len(attempts),
          "recovery_success": (len(bad) == 0) if detected else None,
          "error_types": sorted({e.details().get("cause", "") for e in detected})}
    return rm, em


def _components(by: Index, plan) -> list[dict[str, Any]]:
    per: dict[int, list[float]] = defaultdict(list)
    for e in by[K.SHARD_COMPLETED]:
        if e.value is not None:
            per[e.shard].append(e.value)
    out = []
    for s in plan.shards:
        ms = per.get(s.index)
        out.append({"component": s.name, "shard": s.index,
                    "execution_time_ms": float(np.mean(ms)) if ms else None, "memory_mb": round(s.weight_mb, 3)})
    return out


def _memory(by: Index, plan, baseline_mb: float) -> tuple[float, str]:
    sampled: dict[str, float] = {}
    for e in by[K.MEMORY_SAMPLED]:
        if e.browser and e.value is not None:
            sampled[e.browser] = max(sampled.get(e.browser, 0.0), e.value)
    if sampled:
        return sum(sampled.values()), "measured (peak PSS per browser, summed)"
    browsers = {e.browser for e in by[K.BROWSER_READY]}
    loaded = by[K.SHARD_LOADED]
    weights = sum(plan.shards[e.shard].weight_mb for e in loaded)
    return baseline_mb * len(browsers) + weights, "modelled (baseline per browser + loaded shard weights)"


def seed_result(log: EventLog, scenario, plan, settings, *, baseline_mb: float = 200.0,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seed guide's result JSON (plus shardtwin's extras), from one run's events."""
    by = index(log)
    lat = latency_summary(log, by)
    strategy = str(settings.strategy)
    rm, em = _recovery(by, strategy)
    mem, mem_how = _memory(by, plan, baseline_mb)
    specs = {s.index: s.specialization for s in plan.shards}
    result = {
        "model_name": scenario.model, "shard_count": scenario.shards, "shard_type": str(scenario.shard_type),
        "model_type": str(plan.model_type),
        "execution_time_ms": lat["latency_ms"]["mean"],
        "memory_usage_mb": round(mem, 3),
        "browser_allocation": _allocation(by, str(scenario.backend), specs),
        "recovery_metrics": rm,
        "component_metrics": _components(by, plan),
        "error_metrics": em,
        "test_parameters": {
            "fault_tolerance_level": str(scenario.fault_tolerance_level), "recovery_strategy": strategy,
            "test_timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "hardware_info": {"machine": platform.machine(), "python": platform.python_version(),
                              "system": platform.system()},
            "settings": settings.to_dict(),
        },
        "source": str(log.source), "run_id": log.run_id, "scenario_hash": scenario_hash(scenario),
        "memory_usage_basis": mem_how,
        "latency_ms": lat["latency_ms"], "throughput_rps": lat["throughput_rps"], "requests": lat["requests"],
        "faults": fault_timeline(log, by),
        "faults_not_fired": unfired_faults(log, by),
    }
    if extra:
        result.update(extra)
    return json.loads(json.dumps(result, default=str))

"""Metrics from an event log, for both engines: the seed guide's result JSON and extras.

Rules: computed only from events (never from counters inside a driver), so a stored run
gives the same figures as the live one. Anything that cannot be measured is null, never
a made-up number (e.g. recovery_success_rate is null when nothing failed).
"""

from __future__ import annotations

import json
import platform
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


def fault_timeline(log: EventLog, by: Index | None = None) -> list[dict[str, Any]]:
    """Per injected fault: when it was detected and when recovery ended (same browser)."""
    by = index(log) if by is None else by
    ends_all = sorted((*by[K.RECOVERY_COMPLETED], *by[K.RECOVERY_FAILED]), key=lambda e: e.seq)
    out = []
    for f in by[K.FAULT_INJECTED]:
        if f.browser is None:
            continue
        d = f.details()
        det = next((e for e in by[K.FAILURE_DETECTED] if e.seq > f.seq and e.browser == f.browser), None)
        end = None
        if det is not None:
            end = next((e for e in ends_all if e.seq > det.seq and e.browser == f.browser
                        and e.request_id == det.request_id), None)
        out.append({
            "fault": d.get("fault"), "browser": f.browser, "shard": f.shard, "injected_ms": f.t_ms,
            "detected_ms": det.t_ms if det else None,
            "detection_ms": (det.t_ms - f.t_ms) if det else None,
            "cause": det.details().get("cause") if det else None,
            "recovered": end is not None and end.kind == K.RECOVERY_COMPLETED,
            "recovery_ms": end.value if end is not None and end.kind == K.RECOVERY_COMPLETED else None,
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

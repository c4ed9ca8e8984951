"""Extras of `shardtwin test` results, computed from one run's event log (both engines).

Rules: like events/metrics.py, every figure comes from events; what could not be
measured is null. A "modelled" figure (sim memory) says so in its `basis`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from events.metrics import latency_summary
from events.schema import EventKind as K, EventLog

STRESS_MAX_ERROR_RATE = 0.01     # failed / submitted
STRESS_MAX_DRIFT = 1.5           # median latency, last third / first third (after the first wave)


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "mean": None, "std": None, "min": None, "p50": None, "p90": None, "p95": None,
                "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"count": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def request_latencies(log: EventLog) -> list[tuple[int, float, float]]:
    """(request id, submitted t_ms, latency ms) of completed requests, by submission time."""
    submitted = {e.request_id: e.t_ms for e in log.events if e.kind == K.REQUEST_SUBMITTED}
    done = [(e.request_id, submitted.get(e.request_id, e.t_ms - e.value), float(e.value))
            for e in log.events if e.kind == K.REQUEST_COMPLETED and e.value is not None]
    return sorted(done, key=lambda r: (r[1], r[0]))


def recovery_counts(log: EventLog) -> dict[str, int]:
    """Recoveries that ended: completed and failed (the recovery success rate's terms)."""
    return {"completed": sum(1 for e in log.events if e.kind == K.RECOVERY_COMPLETED),
            "failed": sum(1 for e in log.events if e.kind == K.RECOVERY_FAILED)}


def benchmark(log: EventLog) -> dict[str, Any]:
    """--benchmark: latency statistics of the run's completed requests."""
    return {"latency_ms": _stats([r[2] for r in request_latencies(log)])}


def latency_tracking(log: EventLog) -> dict[str, Any]:
    """--track-latency: every request's latency (by submission order) and percentiles."""
    rows = request_latencies(log)
    failed = [{"request_id": e.request_id, "t_ms": e.t_ms, "latency_ms": e.value,
               "reason": e.details().get("reason")} for e in log.events if e.kind == K.REQUEST_FAILED]
    return {"per_request": [{"request_id": q, "submitted_ms": round(t, 3), "latency_ms": round(v, 3)}
                            for q, t, v in rows],
            "failed": failed, "percentiles_ms": _stats([r[2] for r in rows])}


def throughput(log: EventLog, batch_size: int) -> dict[str, Any]:
    """--throughput-test: completed requests (and items = requests x batch) per second of workload.
    The run's own throughput_rps (events.metrics.latency_summary), so the two always agree: the
    window runs from WORKLOAD_STARTED to the last request that finished, completed or failed."""
    lat = latency_summary(log)
    n, window, rps = lat["requests"]["completed"], lat["workload_ms"], lat["throughput_rps"]
    return {"batch_size": batch_size, "completed_requests": n, "items": n * batch_size, "window_ms": window,
            "requests_per_s": rps, "items_per_s": None if rps is None else rps * batch_size}


def memory_tracking(log: EventLog, plan, baseline_mb: float, pressure_mb: dict[str, float] | None = None
                    ) -> dict[str, Any]:
    """--track-memory: per-browser memory samples. Real: measured PSS events; sim: modelled series
    (baseline per ready browser + loaded shard weights + memory-pressure allocation), one point per change."""
    measured = [e for e in log.events if e.kind == K.MEMORY_SAMPLED and e.browser and e.value is not None]
    if measured:
        samples: dict[str, list[list[float]]] = {}
        for e in measured:
            samples.setdefault(e.browser, []).append([round(e.t_ms, 3), round(float(e.value), 3)])
        basis = "measured (PSS of each browser's process group, sampled)"
    else:
        samples = _modelled_memory(log, plan, baseline_mb, pressure_mb or {})
        basis = "modelled (baseline per browser + loaded shard weights + pressure allocation)"
    peak = {b: max(v for _, v in pts) for b, pts in samples.items() if pts}
    return {"basis": basis, "samples": samples, "peak_mb": peak, "total_peak_mb": sum(peak.values()) or None}


def _modelled_memory(log: EventLog, plan, baseline_mb: float, pressure_mb: dict[str, float]
                     ) -> dict[str, list[list[float]]]:
    held: dict[str, dict[int, float]] = {}
    extra: dict[str, float] = {}
    out: dict[str, list[list[float]]] = {}

    def point(b: str, t: float, alive: bool = True) -> None:
        mb = (baseline_mb + sum(held.get(b, {}).values()) + extra.get(b, 0.0)) if alive else 0.0
        out.setdefault(b, []).append([round(t, 3), round(mb, 3)])

    for e in log.events:
        b = e.browser
        if not b:
            continue
        if e.kind == K.BROWSER_READY:
            held[b], extra[b] = {}, 0.0
            point(b, e.t_ms)
        elif e.kind == K.SHARD_LOADED and e.shard is not None and b in held:
            held[b][e.shard] = float(plan.shards[e.shard].weight_mb)
            point(b, e.t_ms)
        elif e.kind == K.SHARD_LOST and e.shard is not None and b in held:
            held[b].pop(e.shard, None)
            point(b, e.t_ms)
        elif e.kind == K.FAULT_INJECTED and e.details().get("fault") == "memory_pressure" and b in held:
            level = dict(e.details().get("params") or []).get("level")
            extra[b] = pressure_mb.get(str(level), 0.0)
            point(b, e.t_ms)
        elif e.kind == K.FAULT_CLEARED and b in extra and extra[b]:
            extra[b] = 0.0
            point(b, e.t_ms)
        elif e.kind in (K.BROWSER_CRASHED, K.BROWSER_CLOSED) and b in held:
            held.pop(b)
            extra.pop(b, None)
            point(b, e.t_ms, alive=False)
    return out


def stress(log: EventLog, concurrency: int, duration_s: float | None) -> dict[str, Any]:
    """--stress-test: closed-loop stability. No lost request, error rate <= 1 %, and the median
    latency of the last third of requests within 1.5x that of the first third (the first wave of
    `concurrency` requests, which starts on an empty pipeline, is left out of the thirds)."""
    sub = sum(1 for e in log.events if e.kind == K.REQUEST_SUBMITTED)
    done = request_latencies(log)
    failed = sum(1 for e in log.events if e.kind == K.REQUEST_FAILED)
    lost = sub - len(done) - failed
    steady = done[concurrency:] if len(done) >= concurrency + 3 else done
    third = len(steady) // 3
    first = float(np.median([r[2] for r in steady[:third]])) if third else None
    last = float(np.median([r[2] for r in steady[-third:]])) if third else None
    drift = (last / first) if first and last is not None else None
    err = (failed / sub) if sub else None
    checks = {"no_lost_requests": lost == 0,
              "error_rate_ok": err is not None and err <= STRESS_MAX_ERROR_RATE,
              "latency_drift_ok": drift is not None and drift <= STRESS_MAX_DRIFT}
    return {"concurrency": concurrency, "duration_s": duration_s, "submitted": sub, "completed": len(done),
            "failed": failed, "lost": lost, "error_rate": err,
            "latency_first_third_p50_ms": first, "latency_last_third_p50_ms": last, "latency_drift": drift,
            "thresholds": {"max_error_rate": STRESS_MAX_ERROR_RATE, "max_latency_drift": STRESS_MAX_DRIFT},
            "checks": checks, "stable": all(checks.values())}


def compare(sim: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    """--mode both: the same scenario's prediction next to reality."""
    def ratio(a: Any, b: Any) -> float | None:
        return (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
    ls, lr = sim.get("latency_ms") or {}, real.get("latency_ms") or {}
    rs, rr = sim["requests"], real["requests"]
    return {
        "sim_run_id": sim.get("run_id"), "real_run_id": real.get("run_id"),
        "latency_p50_ms": {"sim": ls.get("p50"), "real": lr.get("p50"), "sim_over_real": ratio(ls.get("p50"), lr.get("p50"))},
        "latency_mean_ms": {"sim": ls.get("mean"), "real": lr.get("mean"),
                            "sim_over_real": ratio(ls.get("mean"), lr.get("mean"))},
        "requests": {"sim": rs, "real": rr,
                     "same_outcome": (rs["completed"], rs["failed"]) == (rr["completed"], rr["failed"])},
        "recovery": {k: {"sim": sim["recovery_metrics"].get(k), "real": real["recovery_metrics"].get(k)}
                     for k in ("failures_detected", "recovery_success_rate", "recovery_time_ms")},
    }

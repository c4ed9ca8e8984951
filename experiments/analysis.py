"""Performance analysis of stored runs: SQL over the events table, results as plain dicts.

Rules:
- Every figure is computed by SQL over `events` (through the request_latency and
  fault_recovery views) joined with the runs' dimensions; Python only shapes rows.
  The one exception is a run's modelled memory, whose shard weights come from the run's
  result JSON (component_metrics): the event log holds no weights.
- Dimensions of a run come from its result JSON, else its scenario; a strategy left to
  the fault-tolerance level is resolved from coordinator.settings.LEVELS.
- Only finished runs are analysed (an aborted run's log is cut short).
- Percentiles are linear interpolation (DuckDB quantile_cont == numpy.percentile).
- "Recovery success rate" of a set of injected faults = recovered / faults that needed
  recovery (detected, or with a recovery outcome); null when none did.
- A request is "in flight during a fault" when [submitted, finished] overlaps
  [injected, recovered] of a fault of its run (an unrecovered fault lasts to the end).
- Temp views live on the connection only: analysing never writes the database file.
"""

from __future__ import annotations

from typing import Any, Sequence

import duckdb

from coordinator.settings import LEVELS
from events.store import query_rows
from shardtwin.errors import InputError

GROUP_KEYS = ("source", "shard_type", "shard_count", "recovery_strategy", "fault_tolerance_level")
SOURCES = ("sim", "real", "all")
FOCUSES = ("recovery", "latency", "memory")

_LEVEL_STRATEGY = " ".join(f"WHEN '{lvl.value}' THEN '{s.strategy.value}'" for lvl, s in LEVELS.items())

ANALYSIS_RUNS = f"""
CREATE OR REPLACE TEMP VIEW analysis_runs AS
WITH d AS (
  SELECT r.run_id, r.source, r.status, r.started_at, r.seed, r.result,
    coalesce(r.result->>'$.model_name', s.json->>'$.model') AS model,
    coalesce(r.result->>'$.shard_type', s.json->>'$.shard_type') AS shard_type,
    coalesce(TRY_CAST(r.result->>'$.shard_count' AS INTEGER), TRY_CAST(s.json->>'$.shards' AS INTEGER)) AS shard_count,
    coalesce(r.result->>'$.test_parameters.fault_tolerance_level', s.json->>'$.fault_tolerance_level')
      AS fault_tolerance_level,
    coalesce(r.result->>'$.test_parameters.recovery_strategy', s.json->>'$.recovery_strategy') AS strategy_given
  FROM runs r LEFT JOIN scenarios s USING (scenario_hash))
SELECT run_id, source, status, started_at, seed, model, shard_type, shard_count, fault_tolerance_level,
  coalesce(strategy_given, CASE fault_tolerance_level {_LEVEL_STRATEGY} END) AS recovery_strategy,
  TRY_CAST(result->>'$.memory_usage_mb' AS DOUBLE) AS result_memory_mb
FROM d
"""

# Requests of the selected runs, each flagged when in flight during a fault of its run.
ANALYSIS_REQUESTS = """
CREATE OR REPLACE TEMP VIEW analysis_requests AS
SELECT l.*, a.shard_type, a.shard_count, a.recovery_strategy, a.fault_tolerance_level,
  EXISTS (SELECT 1 FROM fault_recovery f WHERE f.run_id = l.run_id
          AND coalesce(l.submitted_ms, l.finished_ms) <= coalesce(f.recovered_ms, 'infinity'::DOUBLE)
          AND coalesce(l.finished_ms, 'infinity'::DOUBLE) >= f.injected_ms) AS during_fault
FROM request_latency l JOIN analysis_runs a USING (run_id)
"""

_DONE = "FILTER (WHERE outcome = 'completed')"
LATENCY_COLS = f"""count(*) {_DONE} AS n,
  avg(latency_ms) {_DONE} AS mean, quantile_cont(latency_ms, 0.5) {_DONE} AS p50,
  quantile_cont(latency_ms, 0.95) {_DONE} AS p95,
  quantile_cont(latency_ms, 0.99) {_DONE} AS p99, max(latency_ms) {_DONE} AS max"""
_LAT_COLS = LATENCY_COLS.replace(" AS ", " AS lat_")     # the same, named lat_*
_SEL = "list_contains($ids, run_id)"


def connect(store_or_con: Any) -> duckdb.DuckDBPyConnection:
    """The connection of a Store (or a connection), with the analysis temp views."""
    con = getattr(store_or_con, "con", store_or_con)
    con.execute(ANALYSIS_RUNS)
    con.execute(ANALYSIS_REQUESTS)
    return con


def _nest(row: dict[str, Any], prefix: str, names: Sequence[str]) -> dict[str, Any]:
    return {n: row.pop(f"{prefix}{n}") for n in names}


# --- run selection ----------------------------------------------------------

def select_runs(con, model: str, source: str = "all") -> list[dict[str, Any]]:
    """Finished runs of `model` (any alias) from `source` (sim|real|all), oldest first."""
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    name = canonical_model(model)
    out = query_rows(con, "SELECT run_id, source, status, started_at, shard_type, shard_count, recovery_strategy,"
                          " fault_tolerance_level FROM analysis_runs WHERE model = $m AND status = 'finished'"
                          " AND ($s = 'all' OR source = $s) ORDER BY started_at, run_id", {"m": name, "s": source})
    for r in out:
        r["started_at"] = r["started_at"].isoformat(sep=" ")
    return out


def canonical_model(model: str) -> str:
    """The catalogue name of a model alias; the name itself when the catalogue does not know it."""
    try:
        from models.catalogue import get_model
        return get_model(model).name
    except Exception:  # an unknown name simply matches no run
        return model


def run_ids_or_fail(con, model: str, source: str = "all") -> list[dict[str, Any]]:
    runs = select_runs(con, model, source)
    if not runs:
        where = "" if source == "all" else f" with source={source}"
        raise InputError(f"no finished runs of model {model!r}{where} in the store")
    return runs


# --- per run and per group ----------------------------------------------------

PER_RUN = f"""
WITH req AS (
  SELECT run_id, count(*) FILTER (WHERE submitted_ms IS NOT NULL) AS req_submitted,
    count(*) FILTER (WHERE outcome = 'completed') AS req_completed,
    count(*) FILTER (WHERE outcome = 'failed') AS req_failed, count(*) FILTER (WHERE outcome IS NULL) AS req_lost,
    {_LAT_COLS}
  FROM request_latency WHERE {_SEL} GROUP BY run_id),
span AS (
  SELECT run_id, min(t_ms) FILTER (WHERE kind = 'workload_started') AS ws,
    max(t_ms) FILTER (WHERE kind IN ('request_completed', 'request_failed')) AS last_end,
    max(t_ms) AS run_ms
  FROM events WHERE {_SEL} GROUP BY run_id),
mem AS (
  SELECT run_id, sum(peak) AS measured_mb FROM (
    SELECT run_id, browser, max(value) AS peak FROM events
    WHERE {_SEL} AND kind = 'memory_sampled' GROUP BY run_id, browser) GROUP BY run_id),
flt AS (SELECT run_id, list(type ORDER BY fault_seq) AS faults FROM fault_recovery WHERE {_SEL} GROUP BY run_id)
SELECT a.run_id, a.source, a.shard_type, a.shard_count, a.recovery_strategy, a.fault_tolerance_level,
  coalesce(flt.faults, []) AS faults, req.* EXCLUDE (run_id, lat_n),
  span.last_end - span.ws AS workload_ms, span.run_ms,
  req.req_completed / ((span.last_end - span.ws) / 1000.0) AS throughput_rps,
  coalesce(mem.measured_mb, a.result_memory_mb) AS memory_mb,
  CASE WHEN mem.measured_mb IS NOT NULL THEN 'measured (peak per browser, summed)'
       ELSE 'modelled (run result)' END AS memory_basis
FROM analysis_runs a LEFT JOIN req USING (run_id) LEFT JOIN span USING (run_id)
  LEFT JOIN mem USING (run_id) LEFT JOIN flt USING (run_id)
WHERE list_contains($ids, a.run_id) ORDER BY a.started_at, a.run_id
"""

SHARD_COMPUTE = f"""
SELECT {{keys}}, e.shard, count(*) AS n, avg(e.value) AS mean_ms, quantile_cont(e.value, 0.95) AS p95_ms
FROM events e JOIN analysis_runs a USING (run_id)
WHERE list_contains($ids, e.run_id) AND e.kind = 'shard_completed' AND e.value IS NOT NULL
GROUP BY ALL ORDER BY ALL
"""

_REQ_NAMES = ("submitted", "completed", "failed", "lost")
_LAT_NAMES = ("mean", "p50", "p95", "p99", "max")


def per_run(con, ids: list[str]) -> list[dict[str, Any]]:
    """Request outcomes, latency, throughput, per-shard compute and memory of each run."""
    out = query_rows(con, PER_RUN, {"ids": ids})
    reasons = query_rows(con, f"SELECT run_id, reason, count(*) AS n FROM request_latency WHERE {_SEL}"
                              " AND outcome = 'failed' GROUP BY ALL ORDER BY ALL", {"ids": ids})
    shards = query_rows(con, SHARD_COMPUTE.format(keys="a.run_id"), {"ids": ids})
    for r in out:
        r["requests"] = _nest(r, "req_", _REQ_NAMES)
        r["requests"]["failed_reasons"] = {x["reason"] or "unknown": x["n"] for x in reasons
                                           if x["run_id"] == r["run_id"]}
        r["latency_ms"] = _nest(r, "lat_", _LAT_NAMES)
        r["shard_compute_ms"] = [{k: s[k] for k in ("shard", "n", "mean_ms", "p95_ms")}
                                 for s in shards if s["run_id"] == r["run_id"]]
    return out


PER_GROUP = f"""
WITH pr AS ({{per_run}}),
lat AS (SELECT {', '.join(GROUP_KEYS)}, {_LAT_COLS}
        FROM analysis_requests WHERE {_SEL} GROUP BY ALL)
SELECT {', '.join(GROUP_KEYS)}, count(*) AS runs, list(run_id ORDER BY run_id) AS run_ids,
  sum(req_submitted) AS req_submitted, sum(req_completed) AS req_completed, sum(req_failed) AS req_failed,
  sum(req_lost) AS req_lost, any_value(lat.lat_mean) AS lat_mean, any_value(lat.lat_p50) AS lat_p50,
  any_value(lat.lat_p95) AS lat_p95, any_value(lat.lat_p99) AS lat_p99, any_value(lat.lat_max) AS lat_max,
  avg(throughput_rps) AS throughput_rps_mean, avg(memory_mb) AS memory_mb_mean, max(memory_mb) AS memory_mb_max
FROM pr LEFT JOIN lat USING ({', '.join(GROUP_KEYS)})
GROUP BY ALL ORDER BY ALL
"""


def per_group(con, ids: list[str]) -> list[dict[str, Any]]:
    """Runs aggregated per (source, shard_type, shard_count, strategy, level): requests pooled."""
    sql = PER_GROUP.format(per_run=PER_RUN.split("ORDER BY a.started_at")[0])
    out = query_rows(con, sql, {"ids": ids})
    keys = "a." + ", a.".join(k for k in GROUP_KEYS)
    shards = query_rows(con, SHARD_COMPUTE.format(keys=keys), {"ids": ids})
    for g in out:
        g["requests"] = _nest(g, "req_", _REQ_NAMES)
        g["latency_ms"] = _nest(g, "lat_", _LAT_NAMES)
        g["shard_compute_ms"] = [{k: s[k] for k in ("shard", "n", "mean_ms", "p95_ms")}
                                 for s in shards if all(s[k] == g[k] for k in GROUP_KEYS)]
    return out


# --- strategies and recovery ---------------------------------------------------

FAULTS = """
SELECT f.*, a.recovery_strategy, (f.detected_ms IS NOT NULL OR f.success IS NOT NULL) AS needed
FROM fault_recovery f JOIN analysis_runs a USING (run_id) WHERE list_contains($ids, f.run_id)
"""

_FAULT_STATS = """count(*) AS faults, count(*) FILTER (WHERE needed) AS needed_recovery,
  count(*) FILTER (WHERE success) AS recovered, count(*) FILTER (WHERE NOT success) AS recovery_failed,
  count(*) FILTER (WHERE needed AND success IS NULL) AS unresolved,
  CASE WHEN count(*) FILTER (WHERE needed) = 0 THEN NULL
       ELSE count(*) FILTER (WHERE success) / count(*) FILTER (WHERE needed) END AS recovery_success_rate,
  avg(detection_ms) AS detection_ms_mean, quantile_cont(detection_ms, 0.5) AS detection_ms_p50,
  quantile_cont(detection_ms, 0.95) AS detection_ms_p95, max(detection_ms) AS detection_ms_max,
  avg(recovery_ms) FILTER (WHERE success) AS recovery_ms_mean,
  quantile_cont(recovery_ms, 0.5) FILTER (WHERE success) AS recovery_ms_p50,
  quantile_cont(recovery_ms, 0.95) FILTER (WHERE success) AS recovery_ms_p95,
  max(recovery_ms) FILTER (WHERE success) AS recovery_ms_max,
  stddev_samp(recovery_ms) FILTER (WHERE success) AS recovery_ms_std,
  stddev_samp(detection_ms) AS detection_ms_std,
  avg(outage_ms) FILTER (WHERE success) AS outage_ms_mean"""

STRATEGIES = f"""
WITH f AS ({FAULTS}),
fs AS (SELECT recovery_strategy, {_FAULT_STATS} FROM f GROUP BY ALL),
rq AS (SELECT recovery_strategy, count(DISTINCT run_id) AS runs,
    count(*) FILTER (WHERE during_fault) AS requests_during_fault,
    count(*) FILTER (WHERE during_fault AND outcome = 'failed') AS failed_during_fault,
    quantile_cont(latency_ms, 0.95) FILTER (WHERE during_fault AND outcome = 'completed') AS p95_during_fault_ms,
    quantile_cont(latency_ms, 0.95) FILTER (WHERE NOT during_fault AND outcome = 'completed') AS p95_baseline_ms
  FROM analysis_requests WHERE {_SEL} GROUP BY ALL),
ep AS (SELECT a.recovery_strategy, count(*) FILTER (WHERE kind = 'recovery_completed') AS episodes_completed,
    count(*) FILTER (WHERE kind = 'recovery_failed') AS episodes_failed
  FROM events e JOIN analysis_runs a USING (run_id)
  WHERE list_contains($ids, e.run_id) AND kind IN ('recovery_completed', 'recovery_failed') GROUP BY ALL)
SELECT rq.recovery_strategy, rq.runs, coalesce(fs.faults, 0) AS faults, fs.* EXCLUDE (recovery_strategy, faults),
  coalesce(ep.episodes_completed, 0) AS episodes_completed, coalesce(ep.episodes_failed, 0) AS episodes_failed,
  rq.* EXCLUDE (recovery_strategy, runs),
  rq.p95_during_fault_ms - rq.p95_baseline_ms AS latency_impact_p95_ms
FROM rq LEFT JOIN fs USING (recovery_strategy) LEFT JOIN ep USING (recovery_strategy)
ORDER BY recovery_success_rate DESC NULLS LAST, recovery_ms_mean ASC NULLS LAST, rq.recovery_strategy
"""


def compare_strategies(con, ids: list[str]) -> dict[str, Any]:
    """One row per recovery strategy, best first, and the recommendation."""
    table = query_rows(con, STRATEGIES, {"ids": ids})
    for rank, r in enumerate(table, 1):
        r["rank"] = rank
        for k in ("needed_recovery", "recovered", "recovery_failed", "unresolved"):
            r[k] = r[k] or 0
    ranked = [r for r in table if r["recovery_success_rate"] is not None]
    if not ranked:
        return {"strategies": table, "recommendation": None,
                "recommendation_line": "no recommendation: no injected fault needed recovery in these runs"}
    best = ranked[0]
    mean = best["recovery_ms_mean"]
    line = (f"recommended recovery strategy: {best['recovery_strategy']} (success "
            f"{best['recovery_success_rate']:.0%} of {best['needed_recovery']} faults, mean recovery "
            f"{'n/a' if mean is None else f'{mean:.0f} ms'}; ranked by success rate, then mean recovery time)")
    sources = [r["source"] for r in query_rows(con, "SELECT DISTINCT source FROM analysis_runs WHERE "
                                                    f"{_SEL} ORDER BY 1", {"ids": ids})]
    if len(sources) > 1:
        line += f"; sources pooled ({', '.join(sources)}): use --source to compare them apart"
    return {"strategies": table, "recommendation": best["recovery_strategy"], "recommendation_line": line,
            "sources": sources}


UNATTRIBUTED = f"""
SELECT a.recovery_strategy, json_extract_string(e.detail, '$.cause') AS cause, count(*) AS detections
FROM events e JOIN analysis_runs a USING (run_id)
WHERE list_contains($ids, e.run_id) AND e.kind = 'failure_detected'
  AND NOT EXISTS (SELECT 1 FROM fault_recovery f WHERE f.run_id = e.run_id
                  AND f.browser IS NOT DISTINCT FROM e.browser AND f.detected_ms = e.t_ms)
GROUP BY ALL ORDER BY ALL
"""


def recovery_focus(con, ids: list[str]) -> dict[str, Any]:
    """Detection and recovery statistics per failure type x strategy, plus detections no fault explains."""
    by = query_rows(con, f"WITH f AS ({FAULTS}) SELECT type AS failure_type, recovery_strategy, {_FAULT_STATS}"
                         " FROM f GROUP BY ALL ORDER BY ALL", {"ids": ids})
    return {"by_failure_type_strategy": by, "unattributed_detections": query_rows(con, UNATTRIBUTED, {"ids": ids})}


def latency_focus(con, ids: list[str]) -> dict[str, Any]:
    """Latency distribution per group and per run, during faults vs baseline."""
    pcts = ", ".join(f"quantile_cont(latency_ms, {q / 100}) FILTER (WHERE outcome = 'completed') AS p{q}"
                     for q in (10, 25, 50, 75, 90, 95, 99))
    groups = query_rows(con, f"SELECT source, {', '.join(GROUP_KEYS[1:])},"
                             " count(*) FILTER (WHERE outcome = 'completed')"
                             f" AS completed, {pcts}, stddev_samp(latency_ms) FILTER (WHERE outcome = 'completed')"
                             f" AS std FROM analysis_requests WHERE {_SEL} GROUP BY ALL ORDER BY ALL", {"ids": ids})
    runs = query_rows(con, f"SELECT run_id, count(*) FILTER (WHERE during_fault) AS during_fault,"
                           " quantile_cont(latency_ms, 0.95) FILTER (WHERE during_fault AND outcome = 'completed')"
                           " AS p95_during_fault_ms, quantile_cont(latency_ms, 0.95) FILTER (WHERE NOT during_fault"
                           f" AND outcome = 'completed') AS p95_baseline_ms FROM analysis_requests WHERE {_SEL}"
                           " GROUP BY ALL ORDER BY ALL", {"ids": ids})
    return {"by_group": groups, "by_run": runs}


def latencies(con, ids: list[str]) -> list[dict[str, Any]]:
    """Every completed request's latency with its run's source and strategy (for CDF plots)."""
    return query_rows(con, f"SELECT source, recovery_strategy, latency_ms FROM analysis_requests WHERE {_SEL}"
                           " AND outcome = 'completed' ORDER BY source, recovery_strategy, latency_ms", {"ids": ids})


# --- memory -----------------------------------------------------------------

MEASURED_SERIES = """
SELECT browser, t_ms, value AS mb FROM events
WHERE run_id = $run AND kind = 'memory_sampled' AND value IS NOT NULL ORDER BY browser, seq
"""

# Modelled when nothing was sampled: a browser holds its baseline from BROWSER_READY plus the
# weight of every shard it loaded, until its process exits, closes or is relaunched (then 0). A shard that is
# lost while the page lives stays in its memory. The baseline is the one the run's result used:
# (result memory - loaded weights) / browsers that got ready (events.metrics._memory inverted).
MODELLED_SERIES = """
WITH w AS (
  SELECT CAST(c->>'$.shard' AS INTEGER) AS shard, CAST(c->>'$.memory_mb' AS DOUBLE) AS mb
  FROM (SELECT unnest(CAST(result->'$.component_metrics' AS JSON[])) AS c FROM runs WHERE run_id = $run)),
ev AS (SELECT e.*, w.mb AS weight FROM events e LEFT JOIN w USING (shard)
  WHERE e.run_id = $run AND e.kind IN ('browser_launch_requested', 'browser_ready', 'shard_loaded',
                                       'browser_crashed', 'browser_closed')),
base AS (
  SELECT greatest(0.0, (any_value(TRY_CAST(r.result->>'$.memory_usage_mb' AS DOUBLE))
      - coalesce((SELECT sum(weight) FROM ev WHERE kind = 'shard_loaded'), 0))
    / nullif((SELECT count(DISTINCT browser) FROM ev WHERE kind = 'browser_ready'), 0)) AS mb
  FROM runs r WHERE r.run_id = $run),
d AS (
  SELECT browser, seq, t_ms,
    CASE kind WHEN 'browser_ready' THEN (SELECT mb FROM base) WHEN 'shard_loaded' THEN coalesce(weight, 0)
              ELSE 0 END AS delta,
    sum(CASE WHEN kind IN ('browser_launch_requested', 'browser_crashed', 'browser_closed') THEN 1 ELSE 0 END)
      OVER (PARTITION BY browser ORDER BY seq) AS life
  FROM ev)
SELECT browser, t_ms, coalesce(sum(delta) OVER (PARTITION BY browser, life ORDER BY seq), 0) AS mb
FROM d ORDER BY browser, seq
"""


def memory_series(con, run_id: str) -> dict[str, Any]:
    """{basis, per_browser: {browser: [[t_ms, mb], ...]}}: sampled memory, else modelled (see SQL)."""
    basis = "measured (memory_sampled)"
    pts = query_rows(con, MEASURED_SERIES, {"run": run_id})
    if not pts:
        basis = "modelled (baseline at ready + loaded shard weights; 0 after exit or relaunch)"
        pts = query_rows(con, MODELLED_SERIES, {"run": run_id})
    out: dict[str, list[list[float]]] = {}
    for p in pts:
        out.setdefault(p["browser"], []).append([p["t_ms"], p["mb"]])
    return {"basis": basis, "per_browser": out}


def memory_focus(con, ids: list[str]) -> dict[str, Any]:
    """Per run and browser: peak and mean memory (measured or modelled), and per-group means."""
    per_run = []
    for run_id in ids:
        s = memory_series(con, run_id)
        browsers = {b: {"peak_mb": max(v for _, v in pts), "mean_mb": sum(v for _, v in pts) / len(pts),
                        "points": len(pts)} for b, pts in s["per_browser"].items() if pts}
        per_run.append({"run_id": run_id, "basis": s["basis"], "browsers": browsers,
                        "peak_total_mb": sum(b["peak_mb"] for b in browsers.values()) if browsers else None})
    return {"by_run": per_run}

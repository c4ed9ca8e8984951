"""Sim-vs-real comparison with SQL over stored events: latency, faults, outcomes, throughput.

Rules:
- Every figure comes from the `events` table through the request_latency / fault_recovery
  views (events.views), the same SQL for both engines; nothing is taken from result JSON.
- Like with like: request latency is REQUEST_SUBMITTED -> REQUEST_COMPLETED in each engine
  (completed requests only); faults are paired by (type, browser, order of injection).
- Errors are |sim - real| / real * 100. A validation states its tolerance before it is
  computed (Tolerance) and passes only when every gated figure is inside it:
  median and p95 latency error, recovery-time error of every fault, outcome agreement.
  Detection time and throughput are reported, not gated (detection of a crash is ~20 ms,
  where a percentage says nothing).
- The runs must share a scenario hash (the same scenario), else InputError.
- Either side may be several runs of the scenario: sim seeds (the simulator is stochastic:
  compute noise, heartbeat jitter) and real repeats (a real run is one sample of a noisy
  host). Latency figures pool the requests of a side's runs, fault detection/recovery take
  the median over its runs (faults keyed by type, browser and order), and per-request
  outcomes pair the first run of each side.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import duckdb
import numpy as np

from events.store import query_rows
from experiments.runner import fmt_num, text_table
from shardtwin.errors import InputError


@dataclass(frozen=True, slots=True)
class Tolerance:
    median_pct: float = 5.0
    p95_pct: float = 10.0
    recovery_pct: float = 15.0
    outcome_pct: float = 100.0     # minimum share of requests with the same outcome and reason

    def describe(self) -> str:
        return (f"tolerance: median latency error <= {self.median_pct:g}%, p95 <= {self.p95_pct:g}%, "
                f"recovery time error <= {self.recovery_pct:g}% per fault, "
                f"outcome agreement >= {self.outcome_pct:g}%")


@dataclass(frozen=True, slots=True)
class FaultRow:
    ordinal: int
    type: str
    browser: str | None
    real_detection_ms: float | None
    sim_detection_ms: float | None
    real_recovery_ms: float | None
    sim_recovery_ms: float | None
    real_success: bool | None
    sim_success: bool | None

    @property
    def detection_err_ms(self) -> float | None:
        return _diff(self.sim_detection_ms, self.real_detection_ms)

    @property
    def detection_err_pct(self) -> float | None:
        return pct_err(self.sim_detection_ms, self.real_detection_ms)

    @property
    def recovery_err_ms(self) -> float | None:
        return _diff(self.sim_recovery_ms, self.real_recovery_ms)

    @property
    def recovery_err_pct(self) -> float | None:
        return pct_err(self.sim_recovery_ms, self.real_recovery_ms)


@dataclass(frozen=True, slots=True)
class Comparison:
    real_run: str
    sim_run: str
    tolerance: Tolerance
    real: dict[str, Any]            # median_ms, p95_ms, mean_ms, completed, failed, throughput_rps
    sim: dict[str, Any]
    median_err_pct: float | None
    p95_err_pct: float | None
    per_request_err_pct_median: float | None
    throughput_err_pct: float | None
    outcome_agreement_pct: float
    outcome_mismatches: list[dict[str, Any]]
    faults: list[FaultRow] = field(default_factory=list)
    sim_runs: tuple[str, ...] = ()  # the ensemble (sim_run first); latency and fault figures pool them
    real_runs: tuple[str, ...] = ()  # repeats of the real run (real_run first), pooled the same way

    @property
    def checks(self) -> dict[str, bool]:
        t = self.tolerance
        out = {
            "median": self.median_err_pct is not None and self.median_err_pct <= t.median_pct,
            "p95": self.p95_err_pct is not None and self.p95_err_pct <= t.p95_pct,
            "outcome": self.outcome_agreement_pct >= t.outcome_pct - 1e-9,
        }
        for f in self.faults:
            e = f.recovery_err_pct
            both_none = f.real_recovery_ms is None and f.sim_recovery_ms is None
            out[f"recovery[{f.ordinal}]"] = both_none or (e is not None and e <= t.recovery_pct)
        return out

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["faults"] = [{**asdict(f), "detection_err_pct": f.detection_err_pct, "recovery_err_pct": f.recovery_err_pct,
                        "detection_err_ms": f.detection_err_ms, "recovery_err_ms": f.recovery_err_ms}
                       for f in self.faults]
        d["checks"], d["passed"] = self.checks, self.passed
        return d


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def pct_err(predicted: float | None, observed: float | None) -> float | None:
    """|predicted - observed| / observed * 100 (None when either is missing or observed is 0)."""
    if predicted is None or observed is None or observed == 0:
        return None
    return abs(predicted - observed) / abs(observed) * 100.0


LATENCY_SUMMARY = """
SELECT quantile_cont(latency_ms, 0.5) FILTER (WHERE outcome = 'completed') AS median_ms,
       quantile_cont(latency_ms, 0.95) FILTER (WHERE outcome = 'completed') AS p95_ms,
       avg(latency_ms) FILTER (WHERE outcome = 'completed') AS mean_ms,
       count(*) FILTER (WHERE outcome = 'completed') AS completed,
       count(*) FILTER (WHERE outcome = 'failed') AS failed,
       count(*) FILTER (WHERE outcome IS NULL) AS lost
FROM request_latency WHERE list_contains(?::VARCHAR[], run_id)
"""

THROUGHPUT = """
SELECT count(*) FILTER (WHERE e.kind = 'request_completed') * 1000.0
       / nullif(max(e.t_ms) FILTER (WHERE e.kind IN ('request_completed', 'request_failed'))
                - (SELECT min(t_ms) FROM events WHERE run_id = ? AND kind = 'workload_started'), 0) AS rps
FROM events e WHERE e.run_id = ?
"""

PAIRED_REQUESTS = """
SELECT coalesce(r.request_id, s.request_id) AS request_id,
       r.latency_ms AS real_ms, s.latency_ms AS sim_ms, r.outcome AS real_outcome, s.outcome AS sim_outcome,
       r.reason AS real_reason, s.reason AS sim_reason
FROM (SELECT * FROM request_latency WHERE run_id = ?) r
FULL OUTER JOIN (SELECT * FROM request_latency WHERE run_id = ?) s ON r.request_id = s.request_id
ORDER BY 1
"""


def _run_ids(runs: str | Sequence[str]) -> list[str]:
    """One run id or several, as a list."""
    return [runs] if isinstance(runs, str) else list(runs)


def run_summary(con: duckdb.DuckDBPyConnection, run_id: str | Sequence[str]) -> dict[str, Any]:
    """Latency summary of one run, or of the pooled requests of several runs (an ensemble)."""
    ids = _run_ids(run_id)
    s = query_rows(con, LATENCY_SUMMARY, [ids])[0]
    rps = [r for r in (query_rows(con, THROUGHPUT, [i, i])[0]["rps"] for i in ids) if r is not None]
    s["throughput_rps"] = sum(rps) / len(rps) if rps else None
    src = con.execute("SELECT source FROM runs WHERE run_id = ?", [ids[0]]).fetchone()
    s["source"] = src[0] if src else None
    s["runs"] = len(ids)
    return s


def paired_requests(con: duckdb.DuckDBPyConnection, real_run: str, sim_run: str) -> list[dict[str, Any]]:
    return query_rows(con, PAIRED_REQUESTS, [real_run, sim_run])


def check_same_scenario(con: duckdb.DuckDBPyConnection, real_run: str, sim_run: str | Sequence[str]) -> str:
    """The scenario hash shared by `real_run` and every run in `sim_run`, else InputError."""
    others = _run_ids(sim_run)
    rows = dict(con.execute("SELECT run_id, scenario_hash FROM runs WHERE list_contains(?::VARCHAR[], run_id)",
                            [[real_run, *others]]).fetchall())
    for r in (real_run, *others):
        if r not in rows:
            raise InputError(f"no run {r!r} in the store")
    for r in others:
        if rows[real_run] != rows[r]:
            raise InputError(f"runs {real_run} and {r} ran different scenarios "
                             f"({rows[real_run]} vs {rows[r]}); validate compares one scenario")
    return rows[real_run]


FAULT_ROWS = """
SELECT run_id, type, browser, detection_ms, recovery_ms, success,
       row_number() OVER (PARTITION BY run_id, type, browser ORDER BY fault_seq) AS k, injected_ms
FROM fault_recovery WHERE list_contains(?::VARCHAR[], run_id)
"""


def _median(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def fault_summary(con: duckdb.DuckDBPyConnection, runs: Sequence[str]) -> dict[tuple, dict[str, Any]]:
    """Per fault key (type, browser, k-th of that type on that browser): the median detection and
    recovery over the runs, success by majority, and when it was injected (first run's time)."""
    rows = query_rows(con, FAULT_ROWS, [list(runs)])
    keys: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault((r["type"], r["browser"], r["k"]), []).append(r)
    out = {}
    for key, rs in keys.items():
        ok = [bool(r["success"]) for r in rs if r["success"] is not None]
        first = next((r for r in rs if r["run_id"] == runs[0]), rs[0])
        out[key] = {"detection_ms": _median([r["detection_ms"] for r in rs]),
                    "recovery_ms": _median([r["recovery_ms"] for r in rs]),
                    "success": (sum(ok) * 2 >= len(ok)) if ok else None, "t": first["injected_ms"]}
    return out


def ensemble_faults(con: duckdb.DuckDBPyConnection, real_runs: Sequence[str], sim_runs: Sequence[str]) -> list[FaultRow]:
    """Faults of the real run(s) paired with the sim run(s) by (type, browser, order); each side
    the median over its runs (see module rules)."""
    real, sim = fault_summary(con, real_runs), fault_summary(con, sim_runs)
    keys = sorted(set(real) | set(sim), key=lambda k: ((real.get(k) or sim[k])["t"] or 0.0, k[0] or "", k[1] or ""))
    out = []
    for i, k in enumerate(keys):
        r, s = real.get(k, {}), sim.get(k, {})
        out.append(FaultRow(i, k[0], k[1], r.get("detection_ms"), s.get("detection_ms"), r.get("recovery_ms"),
                            s.get("recovery_ms"), r.get("success"), s.get("success")))
    return out


def compare(con: duckdb.DuckDBPyConnection, real_run: str | Sequence[str], sim_run: str | Sequence[str],
            tolerance: Tolerance = Tolerance(), require_same_scenario: bool = True) -> Comparison:
    """The full comparison of stored runs of one scenario: one real run or several (repeats), one
    sim run or an ensemble of seeds (see module rules)."""
    reals, sims = _run_ids(real_run), _run_ids(sim_run)
    if not reals or not sims:
        raise InputError("compare needs at least one run on each side")
    if require_same_scenario:
        check_same_scenario(con, reals[0], [*reals[1:], *sims])
    real_run, sim_run = reals[0], sims[0]
    real, sim = run_summary(con, reals), run_summary(con, sims)
    pairs = paired_requests(con, real_run, sim_run)
    errs = [pct_err(p["sim_ms"], p["real_ms"]) for p in pairs if p["real_outcome"] == "completed" == p["sim_outcome"]]
    mism = [p for p in pairs if (p["real_outcome"], p["real_reason"]) != (p["sim_outcome"], p["sim_reason"])]
    agree = 100.0 * (len(pairs) - len(mism)) / len(pairs) if pairs else 100.0
    per_req = _median(errs)
    return Comparison(real_run, sim_run, tolerance, real, sim,
                      pct_err(sim["median_ms"], real["median_ms"]), pct_err(sim["p95_ms"], real["p95_ms"]),
                      per_req, pct_err(sim["throughput_rps"], real["throughput_rps"]), agree, mism,
                      ensemble_faults(con, reals, sims), tuple(sims), tuple(reals))


def reproducibility(con: duckdb.DuckDBPyConnection, real_runs: Sequence[str]) -> dict[str, float | None] | None:
    """How far repeats of the real run are from each other: the median, over ordered pairs of
    repeats, of the same errors a prediction is judged by (median, p95, recovery of each fault).
    A prediction cannot be held to less than this. None with fewer than two repeats."""
    runs = list(real_runs)
    if len(runs) < 2:
        return None
    # each run's figures once, then every ordered pair (n^2 comparisons: 39 runs made 1482)
    lat = {r: run_summary(con, [r]) for r in runs}
    faults = {r: fault_summary(con, [r]) for r in runs}
    med, p95, rec = [], [], []
    for a in runs:
        for b in runs:
            if a != b:      # a predicts b, as compare(con, b, a) would judge it
                med.append(pct_err(lat[a]["median_ms"], lat[b]["median_ms"]))
                p95.append(pct_err(lat[a]["p95_ms"], lat[b]["p95_ms"]))
                rec += [pct_err(faults[a].get(k, {}).get("recovery_ms"), faults[b].get(k, {}).get("recovery_ms"))
                        for k in set(faults[a]) | set(faults[b])]
    return {"pairs": len(med), "median_err_pct": _median(med), "p95_err_pct": _median(p95),
            "recovery_err_pct": _median(rec), **p95_sampling_error(con, runs)}


RUN_LATENCIES = """
SELECT run_id, latency_ms FROM request_latency
WHERE list_contains(?::VARCHAR[], run_id) AND outcome = 'completed'
"""
BOOTSTRAP_RESAMPLES = 2000


def p95_sampling_error(con: duckdb.DuckDBPyConnection, runs: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> dict[str, float | None]:
    """How precisely the pooled p95 of these runs is known: a bootstrap over runs (a resample draws
    whole runs with replacement, since requests of one run share its host state) of the pooled p95.
    p95_se_pct: the resamples' standard deviation as % of the observed p95; p95_lo_ms/p95_hi_ms: their
    5th and 95th percentiles. With few runs it errs low (3 runs allow 10 distinct resamples).
    Measured on the held-out suite (30 real runs of each scenario over 10 sessions): a random 3 of
    them put the pooled p95 more than 10% from the 30-run p95 in 10-33% of draws, a random 9 in 0-5%."""
    ids = list(runs)
    none = {"p95_se_pct": None, "p95_lo_ms": None, "p95_hi_ms": None}
    if len(ids) < 2:
        return none
    per: dict[str, list[float]] = {i: [] for i in ids}
    for r in query_rows(con, RUN_LATENCIES, [ids]):
        per[r["run_id"]].append(r["latency_ms"])
    lat = [np.asarray(v, dtype=float) for v in per.values() if v]
    if len(lat) < 2:
        return none
    observed = float(np.quantile(np.concatenate(lat), 0.95))
    rng = np.random.default_rng(seed)
    boot = np.array([np.quantile(np.concatenate([lat[j] for j in rng.integers(0, len(lat), len(lat))]), 0.95)
                     for _ in range(resamples)])
    return {"p95_se_pct": float(boot.std() / observed * 100.0) if observed else None,
            "p95_lo_ms": float(np.quantile(boot, 0.05)), "p95_hi_ms": float(np.quantile(boot, 0.95))}


# --- presentation -------------------------------------------------------------------

def _f(v: Any, nd: int = 1) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return fmt_num(v, nd)


def table_rows(c: Comparison) -> list[tuple[str, str, str, str, str]]:
    """(figure, real, sim, error, verdict) rows of the side-by-side table."""
    ck, t = c.checks, c.tolerance

    def verdict(key: str) -> str:
        return "" if key not in ck else ("ok" if ck[key] else "MISS")
    rows = [
        ("median latency ms", _f(c.real["median_ms"]), _f(c.sim["median_ms"]), _f(c.median_err_pct) + "%",
         f"{verdict('median')} (<= {t.median_pct:g}%)"),
        ("p95 latency ms", _f(c.real["p95_ms"]), _f(c.sim["p95_ms"]), _f(c.p95_err_pct) + "%",
         f"{verdict('p95')} (<= {t.p95_pct:g}%)"),
        ("mean latency ms", _f(c.real["mean_ms"]), _f(c.sim["mean_ms"]), "", ""),
        ("per-request |err| median", "", "", _f(c.per_request_err_pct_median) + "%", ""),
        ("completed", _f(c.real["completed"]), _f(c.sim["completed"]), "", ""),
        ("failed", _f(c.real["failed"]), _f(c.sim["failed"]), "", ""),
        ("outcome agreement", "", "", _f(c.outcome_agreement_pct) + "%",
         f"{verdict('outcome')} (>= {t.outcome_pct:g}%)"),
        ("throughput req/s", _f(c.real["throughput_rps"], 2), _f(c.sim["throughput_rps"], 2),
         _f(c.throughput_err_pct) + "%", ""),
    ]
    for f in c.faults:
        name = f"fault {f.ordinal} {f.type}@{f.browser}"
        rows.append((f"{name} detection ms", _f(f.real_detection_ms), _f(f.sim_detection_ms),
                     f"{_f(f.detection_err_ms)} ms / {_f(f.detection_err_pct)}%", ""))
        rows.append((f"{name} recovery ms", _f(f.real_recovery_ms), _f(f.sim_recovery_ms),
                     f"{_f(f.recovery_err_ms)} ms / {_f(f.recovery_err_pct)}%",
                     f"{verdict(f'recovery[{f.ordinal}]')} (<= {t.recovery_pct:g}%)"))
        rows.append((f"{name} recovered", _f(f.real_success), _f(f.sim_success), "", ""))
    return rows


def column_labels(c: Comparison) -> tuple[str, str]:
    """'real (measured)' / 'sim (predicted)', or the runs' sources when both are of one engine."""
    a, b = c.real.get("source"), c.sim.get("source")
    if (a, b) in (("real", "sim"), (None, None)):
        n, m = len(c.sim_runs), len(c.real_runs)
        return ("real (measured)" if m <= 1 else f"real ({m} runs)",
                "sim (predicted)" if n <= 1 else f"sim ({n} seeds)")
    return f"{a} run A", f"{b} run B"


def format_table(c: Comparison, markdown: bool = False) -> str:
    head = ("figure", *column_labels(c), "error", "verdict")
    rows = table_rows(c)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    return "\n".join(text_table(head, rows))

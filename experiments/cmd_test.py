"""`shardtwin test`: the seed guide's test command (every flag of its command lines).

Rules:
- Flags follow the guide; the scenario flags are the shared ones (experiments/flags.py).
  Each test flag does what it says, from the run's events (experiments/seedtest_metrics.py).
- Engine: --mode real|sim|both; by default real when it can run here, else sim, and the
  reason is one line on stderr and `mode_note` in every result (seedtest_run.choose_mode).
- Every run is stored in DuckDB (--db / --db-path) and written as one result JSON file
  under --results-dir (default ./test_results). Summaries (--model-mix, --comprehensive,
  --mode both) are files of their own, with `record` saying which kind.
- Exit codes: 0 all checks passed; 1 a run's checks failed (a lost request, recovery
  success < 95 %, an unstable stress test, a comprehensive criterion); 2 bad input.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from typing import Any

from events.scenario import Scenario
from events.store import DEFAULT_DB_PATH, Store
from experiments import seedtest_metrics as xm
from experiments import seedtest_run as xr
from experiments.flags import add_scenario_flags, scenario_from_args
from experiments.runner import fmt_num, stop_if_signalled, summary_lines, write_json_atomic
from shardtwin.errors import InputError
from shardtwin.vocab import ModelType, PlacementPolicy, WorkloadKind

MIN_RECOVERY_SUCCESS = 0.95
STRESS_DEFAULT_CONCURRENCY = 10
STRESS_DEFAULT_DURATION_S = 30.0
POOL_DEFAULT_MAX_CONNECTIONS = 4


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="the seed guide's test command: run, measure, check, store",
                       description="Run a model-sharding test (the seed guide's flags) in real browsers or "
                                   "the simulator; write ./test_results/*.json and DuckDB rows.")
    add_scenario_flags(p)
    add_test_flags(p)
    p.set_defaults(func=cmd_test)


def add_test_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("test")
    g.add_argument("--mode", choices=["real", "sim", "both"],
                   help="engine (default: real when it can run here, else sim, stated)")
    g.add_argument("--list-models", metavar="TYPE", choices=[t.value for t in ModelType],
                   help="print the model names of TYPE, one per line, and exit")
    g.add_argument("--model-mix", metavar="LIST", help="comma list of models: one run each, then a summary")
    g.add_argument("--benchmark", action="store_true", help="N sequential requests (--iterations), latency stats")
    g.add_argument("--track-memory", action="store_true", help="memory samples per browser in the result")
    g.add_argument("--track-latency", action="store_true", help="per-request latencies and percentiles")
    g.add_argument("--throughput-test", action="store_true", help="requests/s and items/s (x --batch-size)")
    g.add_argument("--stress-test", action="store_true",
                   help=f"closed loop (--concurrent-requests, default {STRESS_DEFAULT_CONCURRENCY}; --duration, "
                        f"default {STRESS_DEFAULT_DURATION_S:g} s); checks stability")
    g.add_argument("--resource-pool-integration", action="store_true",
                   help=f"browsers come from a pool of --max-connections (default {POOL_DEFAULT_MAX_CONNECTIONS})")
    g.add_argument("--max-connections", type=int, metavar="N", help="at most N browsers (workers + standbys)")
    g.add_argument("--use-performance-history", action="store_true",
                   help="placement=history with GFLOPS per browser kind measured in the DB's past runs")
    g.add_argument("--db-metrics", action="store_true", help="print the stored run ids and row counts")
    g.add_argument("--comprehensive", action="store_true",
                   help="baseline + every failure type + a short stress; check the acceptance criteria")
    g.add_argument("--ci-mode", action="store_true",
                   help="no progress; print result paths; exit 1 on a lost request or recovery < 95%%")
    o = p.add_argument_group("output")
    o.add_argument("--db", "--db-path", dest="db", default=str(DEFAULT_DB_PATH), metavar="PATH",
                   help="DuckDB file (default %(default)s)")
    o.add_argument("--results-dir", default="test_results", metavar="DIR", help="default ./%(default)s")
    o.add_argument("--profile", metavar="FILE", help="sim calibration profile JSON")
    o.add_argument("--json", action="store_true", help="print the result JSON instead of a summary")
    o.add_argument("--quiet", action="store_true", help="print nothing on success")
    r = p.add_argument_group("real browsers")
    r.add_argument("--headed", action="store_true")
    r.add_argument("--launcher", choices=["auto", "playwright", "process"], default="auto")
    r.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="per real run")


# --- input -----------------------------------------------------------------------------

def _models(args: argparse.Namespace) -> list[str]:
    from models.catalogue import get_model
    if args.model_mix is not None:
        if args.model is not None:
            raise InputError("--model-mix and --model are exclusive")
        names = [m.strip() for m in args.model_mix.split(",") if m.strip()]
        if not names:
            raise InputError("--model-mix needs a comma list of models, e.g. bert,whisper,vit")
        return [get_model(m).name for m in names]
    if args.model is None and args.scenario is None:
        raise InputError("--model is required (or --model-mix LIST, --scenario FILE, --list-models TYPE)")
    return [args.model]


def _check_flags(args: argparse.Namespace) -> None:
    if args.max_connections is not None and args.max_connections < 1:
        raise InputError(f"--max-connections must be >= 1, got {args.max_connections}")
    if args.iterations is not None and args.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {args.iterations}")
    if args.stress_test and (args.iterations is not None or args.rate is not None):
        raise InputError("--stress-test runs a closed loop: use --concurrent-requests/--duration, "
                         "not --iterations/--rate")
    if args.benchmark and (args.concurrent_requests is not None or args.rate is not None) and not args.stress_test:
        raise InputError("--benchmark runs --iterations sequential requests; for load use --stress-test")
    if args.use_performance_history and args.placement not in (None, PlacementPolicy.HISTORY.value):
        raise InputError(f"--use-performance-history places by history; it conflicts with --placement {args.placement}")
    if args.model_type is not None and args.model_mix is not None:
        raise InputError("--model-type applies to one --model, not to --model-mix")


def build_scenario(args: argparse.Namespace) -> tuple[Scenario, dict[str, Any]]:
    """The scenario of one run and the test sections it implies (resource pool packing)."""
    ns = copy.copy(args)
    if args.stress_test:
        ns.concurrent_requests = args.concurrent_requests or STRESS_DEFAULT_CONCURRENCY
        ns.duration = args.duration or STRESS_DEFAULT_DURATION_S
    if args.use_performance_history:
        ns.placement = PlacementPolicy.HISTORY.value
    s = scenario_from_args(ns)
    info: dict[str, Any] = {}
    if args.resource_pool_integration or args.max_connections is not None:
        s, info["resource_pool"] = clamp_to_pool(s, args.max_connections or POOL_DEFAULT_MAX_CONNECTIONS)
    return s, info


def clamp_to_pool(s: Scenario, n: int) -> tuple[Scenario, dict[str, Any]]:
    """At most n browsers in all: workers first (several shards share a browser when
    shards > workers), then as many of the level's standbys as still fit."""
    from coordinator.settings import resolve
    settings = resolve(s.fault_tolerance_level, s.recovery_strategy, s.tolerance)
    kinds = list(s.browser_list())
    workers = min(len(kinds), n)
    standby = min(settings.standby_browsers, n - workers)
    clamped = workers < len(kinds) or standby < settings.standby_browsers
    if clamped:
        s = dataclasses.replace(s, browsers=tuple(kinds[:workers]),
                                tolerance=dataclasses.replace(s.tolerance, standby_browsers=standby))
    return s, {"max_connections": n, "requested": {"workers": len(kinds), "standby": settings.standby_browsers},
               "granted": {"workers": workers, "standby": standby, "total": workers + standby},
               "clamped": clamped}


# --- one run ---------------------------------------------------------------------------

class Session:
    """What all runs of one `shardtwin test` share: flags, store, profile, history, outputs."""

    def __init__(self, args: argparse.Namespace, store: Store) -> None:
        from sim.profile import load_profile
        self.args, self.store = args, store
        self.profile = load_profile(args.profile)
        self.progress = not (args.quiet or args.ci_mode or args.json)
        self.history: dict[str, Any] | None = None
        self.results: list[dict[str, Any]] = []     # every run's result, in order
        self.files: list[str] = []                  # every file written, in order

    def run(self, s: Scenario, engine: str, mode_note: str, info: dict[str, Any], case: str | None = None,
            stress: bool = False) -> dict[str, Any]:
        a = self.args
        label = f"{engine} {s.model} x{s.shards} {s.shard_type}" + (f" [{case}]" if case else "")
        speeds = (self.history or {}).get("speeds") or None
        if engine == "sim":
            out = xr.run_sim(self.store, s, self.profile, speeds, self.progress, label)
        else:
            out = xr.run_real_browsers(self.store, s, speeds, self.progress, label, a.timeout, a.launcher, a.headed)
        res = out["result"]
        res.update({"record": "run", "mode": engine, "mode_note": mode_note, "test_case": case or "test", "seed": s.seed,
                    "scenario": s.summary()})
        res["recovery_counts"] = xm.recovery_counts(out["log"])
        self._sections(res, s, out, info, stress)
        res["checks"] = run_checks(res)
        res["passed"] = all(c["passed"] for c in res["checks"].values())
        out["store_run"](res)
        rows = self.store.query("SELECT count(*) AS n FROM events WHERE run_id = ?", [out["run_id"]])
        res["db"] = {"path": str(self.store.path), "run_id": out["run_id"], "event_rows": rows[0]["n"]}
        path = xr.result_path(a.results_dir, res)
        res["result_file"] = str(path)
        self.files.append(str(write_json_atomic(path, res)))
        self.results.append(res)
        stop_if_signalled(res)     # stored and written: Ctrl-C / SIGTERM end the whole test, not this run
        return res

    def _sections(self, res: dict[str, Any], s: Scenario, out: dict[str, Any], info: dict[str, Any],
                  stress: bool) -> None:
        a, log, plan = self.args, out["log"], out["plan"]
        if a.benchmark:
            res["benchmark"] = {"iterations": s.workload.iterations, **xm.benchmark(log)}
        if a.track_latency:
            res["latency_tracking"] = xm.latency_tracking(log)
        if a.track_memory:
            prof = self.profile
            budget = min(b.memory_budget_mb for b in prof.browsers.values())
            res["memory_tracking"] = xm.memory_tracking(
                log, plan, min(b.baseline_mb for b in prof.browsers.values()),
                {k: v * budget for k, v in prof.pressure_fraction.items()})
        if a.throughput_test:
            res["throughput"] = xm.throughput(log, s.workload.batch_size)
        if (a.stress_test or stress) and s.workload.kind == WorkloadKind.CLOSED_LOOP:
            res["stress"] = xm.stress(log, s.workload.concurrency, s.workload.duration_s)
        if "resource_pool" in info:
            packing: dict[str, list[int]] = {}
            for shard, alloc in res["browser_allocation"].items():
                packing.setdefault(alloc["browser_id"], []).append(int(shard))
            res["resource_pool"] = {**info["resource_pool"], "packing": packing}
        if a.use_performance_history:
            res["performance_history"] = {**(self.history or {}), "placement": str(s.placement)}
        warn = oversize_warning(s, plan, self.profile) if out["result"]["source"] == "sim" else None
        if warn:
            res["warnings"] = [warn]


def oversize_warning(s: Scenario, plan, profile) -> str | None:
    budget = min(b.memory_budget_mb for b in profile.browsers.values())
    biggest = max(x.weight_mb for x in plan.shards)
    if biggest > budget:
        return (f"largest shard {biggest:,.0f} MB exceeds a browser's memory budget ({budget:,.0f} MB): "
                f"it cannot load (out of memory); use more shards")
    return None


def run_checks(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rq, rm = res["requests"], res["recovery_metrics"]
    checks = {"no_lost_requests": {"value": rq["lost"], "threshold": "== 0", "passed": rq["lost"] == 0}}
    if rm["failures_detected"]:
        rate = rm["recovery_success_rate"]
        checks["recovery_success"] = {"value": rate, "threshold": f">= {MIN_RECOVERY_SUCCESS}",
                                      "passed": rate is not None and rate >= MIN_RECOVERY_SUCCESS}
    if res.get("aborted"):
        checks["run_completed"] = {"value": res["aborted"], "threshold": "not aborted", "passed": False}
    if "stress" in res:
        checks["stress_stable"] = {"value": res["stress"]["latency_drift"], "threshold": "see stress.checks",
                                   "passed": res["stress"]["stable"]}
    return checks


# --- the command -----------------------------------------------------------------------

def cmd_test(args: argparse.Namespace) -> int:
    if args.list_models is not None:
        from models.catalogue import list_models
        sys.stdout.write("".join(f"{m.name}\n" for m in list_models(args.list_models)))
        return 0
    _check_flags(args)
    models = _models(args)
    plans = []
    for m in models:          # validate every model's scenario before running anything
        ns = copy.copy(args)
        ns.model = m
        s, info = build_scenario(ns)
        engines, why = xr.choose_mode(args.mode, s)
        if args.use_performance_history and "real" in engines and not xr.real_takes_history():
            if args.mode is not None:
                raise InputError("--use-performance-history in real mode needs real.run.run_real(history_speed=...), "
                                 "which this build lacks; use --mode sim")
            engines, why = ["sim"], ("sim: real runs cannot take measured speeds yet (real.run.run_real has no "
                                     "history_speed parameter)")
        plans.append((ns, s, info, engines, why))
    with Store(args.db) as store:
        return _run_all(Session(args, store), plans)


def _run_all(sess: Session, plans: list) -> int:
    a = sess.args
    if a.use_performance_history:
        sess.history = xr.history_speeds(sess.store, str(plans[0][1].backend))
        xr.note(sess.progress, f"performance history: {_fmt_speeds(sess.history)}")
    ok = True
    for ns, s, info, engines, why in plans:
        if a.mode is None and not a.quiet:
            xr.note(True, f"{s.model}: {why}")
        if a.comprehensive:
            from experiments.seedtest_comprehensive import run_comprehensive
            ok &= run_comprehensive(sess, s, engines, why, info)
            continue
        runs = [sess.run(s, e, why, info) for e in engines]
        ok &= all(r["passed"] for r in runs)
        if len(runs) == 2:
            cmp = {"record": "comparison", "model_name": s.model, "shard_count": s.shards,
                   "shard_type": str(s.shard_type), "source": "both", **xm.compare(runs[0], runs[1])}
            sess.files.append(str(xr.write_result(a.results_dir, cmp, "comparison")))
    if a.model_mix is not None:
        _mix_summary(sess)
    _output(sess)
    return 0 if ok else 1


def _fmt_speeds(h: dict[str, Any]) -> str:
    sp = h.get("speeds") or {}
    if not sp:
        return h.get("note", "none")
    return ", ".join(f"{k} {v:.2f} GFLOPS" for k, v in sp.items()) + \
        f" (from {h['samples']} shard completions of {h['source']} runs in {h['db']})"


def _mix_summary(sess: Session) -> None:
    rows = [{"model": r["model_name"], "source": r["source"], "requests": r["requests"],
             "latency_p50_ms": r["latency_ms"]["p50"], "throughput_rps": r["throughput_rps"],
             "recovery_success_rate": r["recovery_metrics"]["recovery_success_rate"],
             "stable": (r.get("stress") or {}).get("stable"), "passed": r["passed"],
             "result_file": r["result_file"]} for r in sess.results]
    first = sess.results[0]
    sources = sorted({r["source"] for r in rows})
    summary = {"record": "model_mix", "model_name": "model-mix", "models": [r["model"] for r in rows],
               "shard_count": first["shard_count"], "shard_type": first["shard_type"],
               "source": sources[0] if len(sources) == 1 else "both", "runs": rows,
               "passed": all(r["passed"] for r in rows)}
    sess.files.append(str(xr.write_result(sess.args.results_dir, summary, "summary")))
    if sess.progress:
        sys.stdout.write("model mix:\n" + "".join(
            f"  {r['model']:<28} {r['source']:<4} p50 {fmt_num(r['latency_p50_ms'])} ms, "
            f"{r['requests']['completed']}/{r['requests']['submitted']} completed, "
            f"{'ok' if r['passed'] else 'FAILED'}\n" for r in rows))


def _output(sess: Session) -> None:
    a = sess.args
    if a.ci_mode:
        sys.stdout.write("".join(f"{p}\n" for p in sess.files))
    elif a.json:
        data = sess.results[0] if len(sess.results) == 1 else sess.results
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif not a.quiet:
        for r in sess.results:
            if r.get("test_case") == "test":
                sys.stdout.write("\n".join(summary_lines(r)) + "\n")
                sys.stdout.write("".join(f"  warning: {w}\n" for w in r.get("warnings", [])))
                sys.stdout.write(f"  checks: {'passed' if r['passed'] else 'FAILED ' + _failed(r)}\n")
        sys.stdout.write("".join(f"result: {p}\n" for p in sess.files))
    if a.db_metrics:
        _print_db_metrics(sess)
    if a.quiet or a.ci_mode:
        for r in sess.results:
            if not r["passed"]:
                sys.stderr.write(f"shardtwin test: checks failed ({_failed(r)}): {r['result_file']}\n")


def _failed(r: dict[str, Any]) -> str:
    return ", ".join(k for k, c in r["checks"].items() if not c["passed"])


def _print_db_metrics(sess: Session) -> None:
    st = sess.store
    ids = [r["db"]["run_id"] for r in sess.results]
    out = [f"db-metrics: {st.path}"]
    for rid in ids:
        row = st.query("SELECT r.source, r.status, (SELECT count(*) FROM events e WHERE e.run_id = r.run_id) AS n "
                       "FROM runs r WHERE r.run_id = ?", [rid])[0]
        out.append(f"  run {rid} ({row['source']}, {row['status']}): {row['n']} event rows")
    tot = st.query("SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM events) AS events, "
                   "(SELECT count(*) FROM scenarios) AS scenarios")[0]
    out.append(f"  totals: {tot['runs']} runs, {tot['events']} events, {tot['scenarios']} scenarios")
    stream = sys.stderr if (sess.args.json or sess.args.ci_mode) else sys.stdout
    stream.write("\n".join(out) + "\n")

"""`shardtwin test --comprehensive`: the seed guide's acceptance criteria, checked for real.

Runs the scenario without faults, then once per failure type (browser crash, disconnect +
reconnect, hang, memory pressure, shard error; a cascade when shards >= 3), then a short
stress (closed loop), each a stored run with its own result file. Criteria (all must pass):
  basic functionality   the fault-free run completes every request
  fault recovery        recoveries succeeded / ended >= 95 % over the fault runs, and every
                        fault run detected its failure
  requests under faults completed / submitted >= 95 % over the fault runs
  no lost requests      in every run
  stress stable         see seedtest_metrics.stress
A level of `none` cannot recover, so the runs use level medium unless a level is given.
Real runs are kept short (1 client, 5 s per case); sim runs use 2 clients, 15 s (sim time).
"""

from __future__ import annotations

import sys
from typing import Any

from events.scenario import Scenario, parse_scenario, scenario_to_dict
from experiments.seedtest_run import note, write_result
from shardtwin.vocab import FaultToleranceLevel

# engine -> (clients, seconds per case, fault at s, cascade interval s, reconnect delay s,
#            stress clients, stress seconds)
SHAPES = {"sim": (2, 15.0, 1.0, 2.0, 2.0, 8, 20.0), "real": (1, 5.0, 1.0, 1.5, 1.5, 3, 6.0)}
MIN_RATE = 0.95


def cases(s: Scenario, engine: str) -> list[tuple[str, list[dict[str, Any]]]]:
    _, _, at, interval, reconnect, _, _ = SHAPES[engine]
    at_ms = at * 1000.0
    nb = len(s.browser_list())
    b = "1" if nb > 1 else "0"
    shard = 1 if s.shards > 1 else 0
    out = [("baseline", []),
           ("browser_crash", [{"type": "browser_crash", "at_ms": at_ms, "browser": b}]),
           ("disconnect_reconnect", [{"type": "disconnect", "at_ms": at_ms, "browser": b,
                                      "reconnect_delay_ms": reconnect * 1000.0}]),
           ("hang", [{"type": "hang", "at_ms": at_ms, "browser": b}]),
           ("memory_pressure", [{"type": "memory_pressure", "at_ms": at_ms, "browser": "0", "level": "high"}]),
           ("shard_error", [{"type": "shard_error", "at_ms": at_ms, "shard": shard}])]
    if s.shards >= 3:
        out.append(("cascade", [{"type": "cascade", "at_ms": at_ms, "shard": 1, "interval_ms": interval * 1000.0}]))
    return out


def case_scenario(s: Scenario, faults: list[dict[str, Any]], engine: str, args, stress_case: bool = False
                  ) -> Scenario:
    clients, secs, *_, s_clients, s_secs = SHAPES[engine]
    d = scenario_to_dict(s)
    shape = {"batch_size": s.workload.batch_size, "seq_len": s.workload.seq_len}
    if stress_case:
        clients, secs = args.concurrent_requests or s_clients, s_secs
    else:
        clients = args.concurrent_requests or clients
    d["workload"] = {"kind": "closed_loop", "concurrency": clients,
                     "duration_s": args.duration or secs, **shape}
    d["faults"] = faults
    if s.fault_tolerance_level == FaultToleranceLevel.NONE:
        d["fault_tolerance_level"] = FaultToleranceLevel.MEDIUM.value
    d["name"] = (s.name or "comprehensive")[:200]
    return parse_scenario(d)


def run_comprehensive(sess, s: Scenario, engines: list[str], why: str, info: dict[str, Any]) -> bool:
    ok = True
    for engine in engines:
        ok &= _one_engine(sess, s, engine, why, info)
    return ok


def _one_engine(sess, s: Scenario, engine: str, why: str, info: dict[str, Any]) -> bool:
    a = sess.args
    todo = cases(s, engine)
    rows, warnings = [], []
    for i, (name, faults) in enumerate(todo + [("stress", [])], 1):
        cs = case_scenario(s, faults, engine, a, stress_case=(name == "stress"))
        note(sess.progress, f"comprehensive [{i}/{len(todo) + 1}] {name} ({engine})")
        res = sess.run(cs, engine, why, info, case=name, stress=(name == "stress"))
        rows.append(_row(name, res))
        warnings += [w for w in res.get("warnings", []) if w not in warnings]
    crit = criteria(rows)
    level = str(cs.fault_tolerance_level)
    report = {"record": "comprehensive", "model_name": s.model, "shard_count": s.shards,
              "shard_type": str(s.shard_type), "model_type": sess.results[-1]["model_type"], "source": engine,
              "fault_tolerance_level": level, "mode_note": why, "cases": rows, "criteria": crit, "warnings": warnings,
              "passed": all(c["passed"] for c in crit.values())}
    sess.files.append(str(write_result(a.results_dir, report, "comprehensive")))
    if not (a.quiet or a.ci_mode or a.json):
        sys.stdout.write(render(report) + "\n")
    return report["passed"]


def _row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    rq, rm = r["requests"], r["recovery_metrics"]
    rc = r["recovery_counts"]
    return {"case": name, "run_id": r["db"]["run_id"], "result_file": r["result_file"],
            "failures_detected": rm["failures_detected"], "recovery_success_rate": rm["recovery_success_rate"],
            "recovery_time_ms": rm["recovery_time_ms"], "recovery_method": rm["recovery_method"],
            "recoveries": (rc["completed"], rc["completed"] + rc["failed"]),
            "submitted": rq["submitted"], "completed": rq["completed"], "failed": rq["failed"], "lost": rq["lost"],
            "latency_p50_ms": r["latency_ms"]["p50"], "stress": r.get("stress")}


def criteria(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    base = next(r for r in rows if r["case"] == "baseline")
    faults = [r for r in rows if r["case"] not in ("baseline", "stress")]
    stress_row = next(r for r in rows if r["case"] == "stress")
    ok_rec = sum(r["recoveries"][0] for r in faults)
    ended = sum(r["recoveries"][1] for r in faults)
    rate = ok_rec / ended if ended else None
    undetected = [r["case"] for r in faults if not r["failures_detected"]]
    sub = sum(r["submitted"] for r in faults)
    done = sum(r["completed"] for r in faults)
    req_rate = done / sub if sub else None
    lost = sum(r["lost"] for r in rows)
    st = stress_row["stress"] or {}
    return {
        "basic_functionality": {"value": f"{base['completed']}/{base['submitted']} completed",
                                "threshold": "all completed", "passed": base["submitted"] > 0
                                and base["completed"] == base["submitted"]},
        "fault_recovery": {"value": rate, "threshold": f">= {MIN_RATE} and every fault detected"
                           + (f" (undetected: {', '.join(undetected)})" if undetected else ""),
                           "passed": rate is not None and rate >= MIN_RATE and not undetected},
        "requests_under_faults": {"value": req_rate, "threshold": f">= {MIN_RATE}",
                                  "passed": req_rate is not None and req_rate >= MIN_RATE},
        "no_lost_requests": {"value": lost, "threshold": "== 0", "passed": lost == 0},
        "stress_stable": {"value": st.get("latency_drift"), "threshold": "no loss, errors <= 1%, drift <= 1.5",
                          "passed": bool(st.get("stable"))},
    }


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render(rep: dict[str, Any]) -> str:
    lines = [f"comprehensive: {rep['model_name']} x{rep['shard_count']} {rep['shard_type']} "
             f"({rep['source']}, level {rep['fault_tolerance_level']})",
             f"  {'case':<22}{'detected':>9}{'recovered':>11}{'completed':>14}{'lost':>6}{'p50 ms':>10}"]
    for r in rep["cases"]:
        ok, ended = r["recoveries"]
        lines.append(f"  {r['case']:<22}{r['failures_detected']:>9}{f'{ok}/{ended}':>11}"
                     f"{str(r['completed']) + '/' + str(r['submitted']):>14}{r['lost']:>6}{_f(r['latency_p50_ms']):>10}")
    lines.append(f"  {'criterion':<24}{'value':>16}  {'threshold':<40} result")
    for name, c in rep["criteria"].items():
        v = c["value"]
        vs = v if isinstance(v, str) else _f(v, "{:.3f}") if isinstance(v, float) else _f(v, "{}")
        lines.append(f"  {name:<24}{vs:>16}  {c['threshold']:<40} {'PASS' if c['passed'] else 'FAIL'}")
    lines += [f"  warning: {w}" for w in rep["warnings"]]
    lines.append(f"  overall: {'PASS' if rep['passed'] else 'FAIL'}")
    return "\n".join(lines)

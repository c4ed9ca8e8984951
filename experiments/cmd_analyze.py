"""`shardtwin analyze`, `shardtwin visualize`, `shardtwin trace`: stored runs -> report, PNGs, Chrome trace.

Rules: the seed's analyze_model_sharding_performance.py and
visualize_model_sharding_performance.py flags (--model, --db-path/--db, --compare-strategies,
--focus, --output, --output-dir). Figures come from experiments.analysis (SQL over events).
No runs for the model or an unknown run id -> one line, exit 2. Files are written
atomically (JSON) or into the output directory only.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from events.store import DEFAULT_DB_PATH, Store, query_rows
from experiments import analysis as A
from experiments.runner import fmt_num, text_table, write_json_atomic
from shardtwin.errors import InputError


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", "--db-path", dest="db", default=str(DEFAULT_DB_PATH), metavar="PATH",
                   help="DuckDB file (default %(default)s)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="performance report of a model's stored runs (JSON + table)")
    p.add_argument("--model", required=True, help="model name or alias")
    _add_db(p)
    p.add_argument("--compare-strategies", action="store_true", help="rank the recovery strategies")
    p.add_argument("--focus", choices=A.FOCUSES, help="add a detailed section")
    p.add_argument("--source", choices=A.SOURCES, default="all", help="runs to include (default all)")
    p.add_argument("--output", "-o", metavar="FILE.json", help="write the report JSON here")
    p.set_defaults(func=cmd_analyze)
    v = sub.add_parser("visualize", help="PNG plots and index.html of a model's stored runs")
    v.add_argument("--model", required=True, help="model name or alias")
    _add_db(v)
    v.add_argument("--source", choices=A.SOURCES, default="all", help="runs to include (default all)")
    v.add_argument("--run", metavar="RUN_ID", help="run for the timeline/memory plots (default: latest with a fault)")
    v.add_argument("--output-dir", required=True, metavar="DIR")
    v.set_defaults(func=cmd_visualize)
    t = sub.add_parser("trace", help="Chrome trace-event JSON of one run (open in Perfetto / chrome://tracing)")
    t.add_argument("run_id", metavar="RUN_ID")
    _add_db(t)
    t.add_argument("-o", "--output", required=True, metavar="trace.json")
    t.set_defaults(func=cmd_trace)


# --- analyze ----------------------------------------------------------------

def build_report(con, model: str, source: str = "all", compare: bool = False,
                 focus: str | None = None) -> dict[str, Any]:
    runs = A.run_ids_or_fail(con, model, source)
    ids = [r["run_id"] for r in runs]
    rep: dict[str, Any] = {
        "model": A.canonical_model(model), "source": source, "runs_analysed": len(ids),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "group_keys": list(A.GROUP_KEYS), "runs": A.per_run(con, ids), "groups": A.per_group(con, ids),
    }
    if compare:
        rep["strategy_comparison"] = A.compare_strategies(con, ids)
    if focus == "recovery":
        rep["recovery"] = A.recovery_focus(con, ids)
    elif focus == "latency":
        rep["latency"] = A.latency_focus(con, ids)
    elif focus == "memory":
        rep["memory"] = A.memory_focus(con, ids)
    return _clean(rep)


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _f(v: Any, digits: int = 0) -> str:
    return fmt_num(v, digits)


def report_tables(rep: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of the report's tables, shared by the text and HTML outputs."""
    out = []
    g_rows = [[f"{g['source']}/{g['shard_type']}x{g['shard_count']}/{g['recovery_strategy']}/{g['fault_tolerance_level']}",
               _f(g["runs"]), _f(g["requests"]["completed"]), _f(g["requests"]["failed"]), _f(g["requests"]["lost"]),
               _f(g["latency_ms"]["mean"]), _f(g["latency_ms"]["p50"]), _f(g["latency_ms"]["p95"]),
               _f(g["latency_ms"]["p99"]), _f(g["throughput_rps_mean"], 2), _f(g["memory_mb_mean"])]
              for g in rep["groups"]]
    out.append(("groups (source/shard_type x count/strategy/level)",
                ["group", "runs", "ok", "failed", "lost", "mean ms", "p50 ms", "p95 ms", "p99 ms", "req/s", "mem MB"],
                g_rows))
    if "strategy_comparison" in rep:
        s_rows = [[_f(s["rank"]), s["recovery_strategy"], _f(s["runs"]), _f(s["faults"]),
                   _f(None if s["recovery_success_rate"] is None else 100 * s["recovery_success_rate"]),
                   _f(s["recovery_ms_mean"]), _f(s["recovery_ms_p95"]), _f(s["detection_ms_mean"]),
                   _f(s["p95_baseline_ms"]), _f(s["p95_during_fault_ms"]), _f(s["latency_impact_p95_ms"]),
                   _f(s["failed_during_fault"])] for s in rep["strategy_comparison"]["strategies"]]
        out.append(("recovery strategies (best first)",
                    ["rank", "strategy", "runs", "faults", "success %", "recovery ms", "rec p95", "detect ms",
                     "p95 base", "p95 fault", "impact ms", "failed req"], s_rows))
    if "recovery" in rep:
        r_rows = [[r["failure_type"], r["recovery_strategy"], _f(r["faults"]),
                   _f(None if r["recovery_success_rate"] is None else 100 * r["recovery_success_rate"]),
                   _f(r["detection_ms_mean"]), _f(r["detection_ms_p95"]), _f(r["recovery_ms_mean"]),
                   _f(r["recovery_ms_p95"]), _f(r["outage_ms_mean"])]
                  for r in rep["recovery"]["by_failure_type_strategy"]]
        out.append(("recovery per failure type x strategy",
                    ["failure type", "strategy", "faults", "success %", "detect ms", "det p95", "recovery ms",
                     "rec p95", "outage ms"], r_rows))
    if "memory" in rep:
        out.append(("memory per run", ["run", "basis", "peak total MB", "browsers"],
                    [[m["run_id"][:12], m["basis"].split(" ")[0], _f(m["peak_total_mb"]), _f(len(m["browsers"]))]
                     for m in rep["memory"]["by_run"]]))
    if "latency" in rep:
        out.append(("latency percentiles per group (ms)", ["group", "n", "p10", "p50", "p90", "p95", "p99"],
                    [[f"{g['source']}/{g['shard_type']}x{g['shard_count']}/{g['recovery_strategy']}",
                      _f(g["completed"]), _f(g["p10"]), _f(g["p50"]), _f(g["p90"]), _f(g["p95"]), _f(g["p99"])]
                     for g in rep["latency"]["by_group"]]))
    return out


def report_text(rep: dict[str, Any]) -> str:
    lines = [f"{rep['model']}: {rep['runs_analysed']} finished run(s), source={rep['source']}"]
    for title, headers, body in report_tables(rep):
        lines += ["", title, *text_table(headers, body)]
    if "strategy_comparison" in rep:
        lines += ["", rep["strategy_comparison"]["recommendation_line"]]
    un = (rep.get("recovery") or {}).get("unattributed_detections") or []
    if un:
        lines += ["", "detections without an injected fault: " +
                  ", ".join(f"{u['detections']} {u['cause']} ({u['recovery_strategy']})" for u in un)]
    return "\n".join(lines) + "\n"


def cmd_analyze(args: argparse.Namespace) -> int:
    with Store(args.db) as st:
        rep = build_report(A.connect(st), args.model, args.source, args.compare_strategies, args.focus)
    if args.output:
        write_json_atomic(args.output, rep)
    sys.stdout.write(report_text(rep))
    if args.output:
        sys.stdout.write(f"wrote {args.output}\n")
    return 0


# --- visualize ----------------------------------------------------------------

def _chosen_run(con, ids: list[str], run: str | None) -> str:
    if run is not None:
        if run not in ids:
            raise InputError(f"run {run!r} is not a finished run of the selected model/source in the store")
        return run
    faulted = query_rows(con, "SELECT run_id FROM analysis_runs WHERE list_contains($ids, run_id) AND run_id IN"
                              " (SELECT run_id FROM fault_recovery) ORDER BY started_at DESC, run_id DESC LIMIT 1",
                         {"ids": ids})
    return faulted[0]["run_id"] if faulted else ids[-1]


def _html(rep: dict[str, Any], images: list[tuple[str, str]]) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>shardtwin: {esc(rep['model'])}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%;border:1px solid #eee;margin-bottom:1.5em}</style></head><body>",
             f"<h1>{esc(rep['model'])}: sharding performance</h1>",
             f"<p>{rep['runs_analysed']} finished run(s), source={esc(rep['source'])}, generated "
             f"{esc(rep['generated_at'])} by <code>shardtwin visualize</code>. All figures computed by SQL over "
             "the stored events.</p>"]
    if "strategy_comparison" in rep:
        parts.append(f"<p><b>{esc(rep['strategy_comparison']['recommendation_line'])}</b></p>")
    for title, headers, body in report_tables(rep):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>{''.join(f'<th>{esc(h)}</th>' for h in headers)}</tr>")
        parts += [f"<tr>{''.join(f'<td>{esc(c)}</td>' for c in r)}</tr>" for r in body]
        parts.append("</table>")
    for name, caption in images:
        parts.append(f"<h2>{esc(caption)}</h2><img src='{esc(name)}' alt='{esc(caption)}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _exits(tl: dict[str, Any]) -> dict[str, float]:
    """Last exit time of each browser that exited (a restart's later samples extend past it)."""
    out: dict[str, float] = {}
    for m in tl["marks"]:
        if m["kind"] == "browser_crashed" and m["browser"]:
            out[m["browser"]] = m["t_ms"]
    return out


def visualize(con, model: str, out_dir: Path, source: str = "all", run: str | None = None) -> list[Path]:
    """Write the PNGs, report.json and index.html; returns the written paths."""
    rep = build_report(con, model, source, compare=True, focus="recovery")
    from experiments import plots  # matplotlib: imported only when there is something to draw
    from experiments.trace import run_timeline
    ids = [r["run_id"] for r in rep["runs"]]
    chosen = _chosen_run(con, ids, run)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out_dir}: {exc.strerror}") from None
    tl = run_timeline(con, chosen)
    info = next(r for r in rep["runs"] if r["run_id"] == chosen)
    faults = ", ".join(info["faults"]) or "no fault"
    title = f"run {chosen[:12]} ({info['source']}, {rep['model']}, {info['recovery_strategy']}; {faults})"
    images = [
        (plots.latency_cdf(A.latencies(con, ids), rep["model"], out_dir / "latency_cdf.png"),
         "Request latency CDF per recovery strategy"),
        (plots.recovery_bars(rep["recovery"]["by_failure_type_strategy"], rep["model"], out_dir / "recovery_times.png"),
         "Detection and recovery time per failure type and strategy"),
        (plots.timeline(tl, f"{title}: per-browser timeline", out_dir / "timeline.png"), f"Timeline of {title}"),
        (plots.memory(A.memory_series(con, chosen), _exits(tl), tl["end_ms"], f"{title}: memory per browser",
                      out_dir / "memory.png"), f"Memory per browser, {title}"),
    ]
    rep["timeline_run"] = chosen
    paths = [p for p, _ in images]
    paths.append(write_json_atomic(out_dir / "report.json", rep))
    index = out_dir / "index.html"
    index.write_text(_html(rep, [(p.name, c) for p, c in images]))
    return paths + [index]


def cmd_visualize(args: argparse.Namespace) -> int:
    with Store(args.db) as st:
        paths = visualize(A.connect(st), args.model, Path(args.output_dir), args.source, args.run)
    sys.stdout.write("".join(f"wrote {p}\n" for p in paths))
    return 0


# --- trace --------------------------------------------------------------------

def cmd_trace(args: argparse.Namespace) -> int:
    from experiments.trace import chrome_trace, run_timeline
    with Store(args.db) as st:
        con = A.connect(st)
        found = query_rows(con, "SELECT source, model, status FROM analysis_runs WHERE run_id = $r", {"r": args.run_id})
        if not found:
            raise InputError(f"no run {args.run_id!r} in {args.db}")
        r = found[0]
        tr = chrome_trace(run_timeline(con, args.run_id), f"run {args.run_id[:12]} ({r['source']}, {r['model']},"
                                                          f" {r['status']})")
    write_json_atomic(args.output, tr)
    n = sum(1 for e in tr["traceEvents"] if e["ph"] != "M")
    sys.stdout.write(f"wrote {args.output} ({n} trace events; open in https://ui.perfetto.dev or chrome://tracing)\n")
    return 0

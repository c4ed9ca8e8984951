"""shardtwin analyze / visualize: figures agree with the runs' result JSON, strategies are ranked,
plots and index.html are written, bad input is one line and exit 2."""

from __future__ import annotations

import json

import pytest

from events.store import Store
from experiments import analysis as A
from experiments.cli import build_parser, main
from experiments.cmd_analyze import build_report, visualize
from experiments.cmd_sim import simulate_and_store
from experiments.flags import scenario_from_args
from sim.profile import load_profile

BASE = ["--model", "bert-base-uncased", "--shards", "3", "--type", "layer", "--iterations", "6"]
RUNS = {  # name: extra sim flags
    "progressive_crash": ["--fault-tolerance", "--recovery-strategy", "progressive", "--crash-browser", "firefox"],
    "retry_crash": ["--fault-tolerance", "--recovery-strategy", "retry", "--crash-browser", "firefox"],
    "restart_hang": ["--fault-tolerance", "--recovery-strategy", "restart", "--hang-browser", "1"],
    "failover_shard_error": ["--fault-tolerance", "--recovery-strategy", "failover", "--fail-shard", "1"],
    "no_fault": ["--shards", "2"],
}


def make_db(path, runs=RUNS) -> dict[str, dict]:
    """Simulate and store each run; returns name -> result JSON."""
    parser = build_parser()
    out = {}
    for name, extra in runs.items():
        args = parser.parse_args(["sim", *BASE, *extra, "--db", str(path)])
        out[name] = simulate_and_store(scenario_from_args(args), load_profile(None), str(path))
    return out


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("analyze") / "runs.duckdb"
    return path, make_db(path)


@pytest.fixture(scope="module")
def report(db):
    path, _ = db
    with Store(path) as st:
        return build_report(A.connect(st), "bert", compare=True, focus="recovery")


def test_report_has_runs_groups_and_sections(report, db):
    _, results = db
    assert report["model"] == "bert-base-uncased" and report["runs_analysed"] == len(results)
    assert {"runs", "groups", "strategy_comparison", "recovery", "group_keys"} <= set(report)
    run = report["runs"][0]
    assert {"requests", "latency_ms", "throughput_rps", "shard_compute_ms", "memory_mb", "faults",
            "recovery_strategy", "fault_tolerance_level", "shard_type", "shard_count"} <= set(run)
    assert set(run["latency_ms"]) == {"mean", "p50", "p95", "p99", "max"}
    json.dumps(report)  # plain data


def test_per_run_figures_match_result_json(report, db):
    _, results = db
    by_id = {r["run_id"]: r for r in results.values()}
    for run in report["runs"]:
        res = by_id[run["run_id"]]
        for k in ("submitted", "completed", "failed", "lost"):
            assert run["requests"][k] == res["requests"][k], k
        assert run["requests"]["failed_reasons"] == res["requests"]["failed_reasons"]
        for k in ("mean", "p50", "p95", "p99", "max"):
            assert run["latency_ms"][k] == pytest.approx(res["latency_ms"][k], rel=1e-9), k
        assert run["throughput_rps"] == pytest.approx(res["throughput_rps"], rel=1e-9)
        assert run["memory_mb"] == pytest.approx(res["memory_usage_mb"])
        assert run["recovery_strategy"] == res["test_parameters"]["recovery_strategy"]
        assert run["faults"] == [f["fault"] for f in res["faults"]]
        assert len(run["shard_compute_ms"]) == res["shard_count"]
        for s, c in zip(run["shard_compute_ms"], res["component_metrics"]):
            assert s["mean_ms"] == pytest.approx(c["execution_time_ms"])


def test_groups_pool_their_runs(report):
    for g in report["groups"]:
        members = [r for r in report["runs"] if r["run_id"] in g["run_ids"]]
        assert g["runs"] == len(members) > 0
        assert g["requests"]["completed"] == sum(r["requests"]["completed"] for r in members)
        assert all(all(r[k] == g[k] for k in A.GROUP_KEYS) for r in members)


def test_compare_strategies_ranks_by_success_then_recovery_time(report, db):
    _, results = db
    cmp_ = report["strategy_comparison"]
    table = {s["recovery_strategy"]: s for s in cmp_["strategies"]}
    assert [s["rank"] for s in cmp_["strategies"]] == list(range(1, len(table) + 1))
    assert table["retry"]["recovery_success_rate"] == 0.0  # retry cannot bring a crashed browser back
    assert results["retry_crash"]["recovery_metrics"]["recovery_success_rate"] == 0.0
    assert table["progressive"]["recovery_success_rate"] == 1.0
    assert table["none"]["recovery_success_rate"] is None and table["none"]["faults"] == 0
    rated = [s for s in cmp_["strategies"] if s["recovery_success_rate"] is not None]
    keys = [(-s["recovery_success_rate"], s["recovery_ms_mean"] or 0.0) for s in rated]
    assert keys == sorted(keys)
    assert cmp_["recommendation"] == rated[0]["recovery_strategy"] != "retry"
    assert cmp_["recommendation"] in cmp_["recommendation_line"]
    assert table["retry"]["failed_during_fault"] == results["retry_crash"]["requests"]["failed"] > 0


def test_recovery_focus_per_failure_type_and_strategy(report, db):
    _, results = db
    cells = {(r["failure_type"], r["recovery_strategy"]): r for r in report["recovery"]["by_failure_type_strategy"]}
    assert set(cells) == {("browser_crash", "progressive"), ("browser_crash", "retry"), ("hang", "restart"),
                          ("shard_error", "failover")}
    for name, res in results.items():
        for f in res["faults"]:
            c = cells[(f["fault"], res["test_parameters"]["recovery_strategy"])]
            assert c["detection_ms_mean"] == pytest.approx(f["detection_ms"])
            assert c["recovered"] == int(f["recovered"])
            if f["recovered"]:
                assert c["recovery_ms_mean"] == pytest.approx(f["recovery_ms"])
    assert cells[("hang", "restart")]["detection_ms_mean"] > cells[("browser_crash", "progressive")]["detection_ms_mean"]


def test_latency_and_memory_focus(db):
    path, results = db
    with Store(path) as st:
        con = A.connect(st)
        lat = build_report(con, "bert-base-uncased", focus="latency")["latency"]
        mem = build_report(con, "bert-base-uncased", focus="memory")["memory"]
    assert {"by_group", "by_run"} <= set(lat) and all("p99" in g for g in lat["by_group"])
    by_id = {r["run_id"]: r for r in results.values()}
    for m in mem["by_run"]:
        assert m["basis"].startswith("modelled")
        # modelled peaks summed reproduce the run's modelled memory (no browser restarted in these runs)
        if not any(f["action"] == "restart" for f in by_id[m["run_id"]]["faults"]):
            assert m["peak_total_mb"] == pytest.approx(by_id[m["run_id"]]["memory_usage_mb"])


def test_cli_analyze_writes_json_and_prints_tables(db, tmp_path, capsys):
    path, _ = db
    out = tmp_path / "strategy_comparison.json"
    rc = main(["analyze", "--model", "bert-base-uncased", "--db-path", str(path), "--compare-strategies",
               "--focus", "recovery", "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "recommended recovery strategy" in text and "recovery per failure type" in text
    data = json.loads(out.read_text())
    assert data["strategy_comparison"]["recommendation"] and data["recovery"]["by_failure_type_strategy"]


@pytest.mark.parametrize("argv", [
    ["analyze", "--model", "gpt2"],
    ["analyze", "--model", "bert", "--source", "real"],
    ["visualize", "--model", "gpt2", "--output-dir", "OUT"],
    ["visualize", "--model", "bert", "--run", "0123abc", "--output-dir", "OUT"],
])
def test_bad_input_is_one_line_exit_2(db, tmp_path, capsys, argv):
    path, _ = db
    argv = [str(tmp_path / "v") if a == "OUT" else a for a in argv]
    assert main([*argv, "--db", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shardtwin: error:")


def test_visualize_writes_pngs_and_index(db, tmp_path):
    path, results = db
    with Store(path) as st:
        paths = visualize(A.connect(st), "bert", tmp_path / "vis")
    names = {p.name for p in paths}
    assert {"latency_cdf.png", "recovery_times.png", "timeline.png", "memory.png", "index.html",
            "report.json"} <= names
    for p in paths:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "vis" / "index.html").read_text()
    assert index.count("<img ") == 4 and "recommended recovery strategy" in index and "<table>" in index
    rep = json.loads((tmp_path / "vis" / "report.json").read_text())
    assert rep["timeline_run"] == results["failover_shard_error"]["run_id"]  # latest run with a fault

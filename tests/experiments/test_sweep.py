"""Sweeps: spec expansion, up-front validation, pooled == serial, storage of runs and sweep tables."""

from __future__ import annotations

import copy
import json

import duckdb
import pytest
import yaml

from experiments.cli import main
from experiments.sweep import SerialRunner, LocalPoolRunner, execute, summarize
from experiments.sweep_spec import expand, parse_path
from shardtwin.errors import ConfigError

BASE = {"model": "bert-base-uncased", "shards": 3, "fault_tolerance_level": "medium",
        "workload": {"iterations": 5},
        "faults": [{"type": "browser_crash", "at_ms": 1000.0, "browser": "chromium-0"}]}


def spec(**kv):
    return {"base": copy.deepcopy(BASE), **kv}


def test_parse_path_names_and_indexes():
    assert parse_path("faults[0].at_ms", "w") == ("faults", 0, "at_ms")
    assert parse_path("browsers.chromium.launch_ms", "w") == ("browsers", "chromium", "launch_ms")
    assert parse_path("a[1][2]", "w") == ("a", 1, 2)
    for bad in ("", "a..b", "faults[x]", "1abc", "a.[0]"):
        with pytest.raises(ConfigError):
            parse_path(bad, "w")


def test_grid_is_a_cartesian_product_in_key_order():
    sw = expand(spec(grid={"fault_tolerance_level": ["low", "medium", "high"], "faults[0].at_ms": [500, 2500]},
                     repeats=2))
    assert len(sw.points) == 3 * 2 * 2
    assert [p.index for p in sw.points] == list(range(12))
    first, last = sw.points[0], sw.points[-1]
    assert first.params == {"fault_tolerance_level": "low", "faults[0].at_ms": 500, "seed": 0}
    assert last.params == {"fault_tolerance_level": "high", "faults[0].at_ms": 2500, "seed": 1}
    assert last.scenario.faults[0].at_ms == 2500.0 and str(last.scenario.fault_tolerance_level) == "high"
    assert sw.swept == ("fault_tolerance_level", "faults[0].at_ms", "seed")


def test_seeds_list_and_nested_paths_created_on_demand():
    sw = expand(spec(grid={"tolerance.detector_timeout_ms": [300.0, 900.0]}, seeds=[7, 11]))
    assert [(p.scenario.tolerance.detector_timeout_ms, p.scenario.seed) for p in sw.points] == \
        [(300.0, 7), (300.0, 11), (900.0, 7), (900.0, 11)]


def test_random_sampling_is_deterministic_by_seed():
    rnd = {"samples": 20, "seed": 5, "params": {"faults[0].at_ms": {"uniform": [0, 5000]},
                                                "workload.iterations": {"int": [2, 6]},
                                                "recovery_strategy": {"choice": ["restart", "failover"]}}}
    a, b = expand(spec(random=rnd)), expand(spec(random=rnd))
    other = expand(spec(random={**rnd, "seed": 6}))
    va = [dict(p.params) for p in a.points]
    assert va == [dict(p.params) for p in b.points] and va != [dict(p.params) for p in other.points]
    assert len(va) == 20
    assert all(0 <= v["faults[0].at_ms"] <= 5000 and 2 <= v["workload.iterations"] <= 6 for v in va)
    assert {v["recovery_strategy"] for v in va} == {"restart", "failover"}
    assert all(p.scenario.workload.iterations == p.params["workload.iterations"] for p in a.points)


def test_profile_grid_sweeps_profile_parameters():
    sw = expand(spec(profile_grid={"host_cores": [1, 4], "browsers.chromium.launch_ms": [100.0, 900.0]}))
    got = [(p.profile.host_cores, p.profile.browsers["chromium"].launch_ms) for p in sw.points]
    assert got == [(1, 100.0), (1, 900.0), (4, 100.0), (4, 900.0)]
    assert "profile.host_cores" in sw.swept


BAD = [
    ({"grid": {"workload.iterations": [5, 0]}}, "grid.workload.iterations=0"),
    ({"grid": {"faults[3].at_ms": [1]}}, "grid.faults[3].at_ms"),
    ({"grid": {"shards": [3, 400]}}, "grid.shards=400"),
    ({"grid": {"workload.iterations": []}}, "grid.workload.iterations"),
    ({"grid": {"no_such_field": [1]}}, "no_such_field"),
    ({"gird": {}}, "unknown key"),
    ({"seeds": [1], "repeats": 2}, "not both"),
    ({"random": {"samples": 2, "params": {"workload.iterations": {"normal": [1, 2]}}}}, "random.params.workload"),
    ({"random": {"samples": 2, "params": {"workload.iterations": {"int": [5, 1]}}}}, "low <= high"),
    ({"profile_grid": {"host_corez": [1]}}, "host_corez"),
    ({"base": {"model": "bert-base-uncased", "shards": "three"}}, "base"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[n for _, n in BAD])
def test_bad_specs_are_one_line_exit_2_before_running(tmp_path, capsys, extra, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(spec(**extra)))
    db = tmp_path / "x.duckdb"
    assert main(["sweep", str(f), "--db", str(db), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shardtwin: error: sweep spec") and needle in err, err
    assert not db.exists()       # nothing ran, nothing stored


def test_unreadable_and_malformed_spec_files(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--quiet"]) == 2
    f = tmp_path / "broken.yaml"
    f.write_text("base: {model: bert\ngrid: [")
    assert main(["sweep", str(f), "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "cannot read sweep spec" in lines[0] and "line" in lines[1]


def _strip(result: dict) -> dict:
    r = copy.deepcopy(result)
    r.pop("run_id")
    r["test_parameters"].pop("test_timestamp")
    return r


def test_tiny_sweep_stores_runs_and_pooled_equals_serial(tmp_path, capsys):
    s = spec(grid={"fault_tolerance_level": ["low", "high"]}, seeds=[1, 2], name="tiny")
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps(s))
    db, out = tmp_path / "s.duckdb", tmp_path / "points.json"
    assert main(["sweep", str(f), "--db", str(db), "--workers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fault_tolerance_level" in printed and "completed%" in printed
    pooled = json.loads(out.read_text())
    assert [p["point"] for p in pooled["points"]] == [0, 1, 2, 3]

    con = duckdb.connect(str(db), read_only=True)
    runs = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
    pts = con.execute("SELECT point, params, run_id FROM sweep_points WHERE sweep_id = ? ORDER BY point",
                      [pooled["sweep_id"]]).fetchall()
    assert con.execute("SELECT count(*) FROM sweeps").fetchone()[0] == 1
    assert set(runs.values()) == {"finished"} and len(runs) == 4
    assert [p[2] for p in pts] == [p["run_id"] for p in pooled["points"]] and set(runs) == {p[2] for p in pts}
    assert json.loads(pts[3][1]) == {"fault_tolerance_level": "high", "seed": 2}
    kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM events").fetchall()}
    assert "request_completed" in kinds and "fault_injected" in kinds and "heartbeat_received" not in kinds
    stored = json.loads(con.execute("SELECT result FROM runs WHERE run_id = ?", [pts[0][2]]).fetchone()[0])
    con.close()
    assert _strip(stored) == _strip(pooled["points"][0]["result"])

    serial, _ = execute(expand(s), SerialRunner())
    assert [_strip(o.result) for o in serial] == [_strip(p["result"]) for p in pooled["points"]]


def test_events_modes_and_aborted_points(tmp_path, monkeypatch):
    from events.store import Store
    sw = expand(spec(seeds=[0, 1]))
    with Store(tmp_path / "e.duckdb") as st:
        _, all_id = execute(sw, SerialRunner(), store=st, events="all")
        _, none_id = execute(sw, SerialRunner(), store=st, events="none")
        n = {sid: st.query("SELECT count(*) AS n FROM events JOIN sweep_points USING (run_id) WHERE sweep_id = ?",
                           [sid])[0]["n"] for sid in (all_id, none_id)}
        assert n[none_id] == 0 and n[all_id] > 100

        import sim.run

        def boom(*a, **k):
            raise RuntimeError("simulated bug")
        monkeypatch.setattr(sim.run, "run_scenario", boom)
        outs, sid = execute(sw, SerialRunner(), store=st)
        assert [o.status for o in outs] == ["aborted", "aborted"] and "simulated bug" in outs[0].result["aborted"]
        assert {r["status"] for r in st.query("SELECT status FROM runs JOIN sweep_points USING (run_id)"
                                              " WHERE sweep_id = ?", [sid])} == {"aborted"}
    table = summarize(sw, outs)
    assert [(label, row["n"], row["err"], row["completed%"]) for label, row in table["seed"]] == \
        [("0", 1, 1, None), ("1", 1, 1, None)]


def test_pool_runner_yields_in_task_order():
    with LocalPoolRunner(2, chunksize=1) as r:
        assert list(r.run(_slow_square, [5, 1, 4, 0, 3])) == [25, 1, 16, 0, 9]


def _slow_square(x: int) -> int:
    import time
    time.sleep(0.01 * x)
    return x * x

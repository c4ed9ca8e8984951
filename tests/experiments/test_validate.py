"""validate: comparison SQL on hand-made and sim-made logs (no browsers), the command, the report;
one short real run (browser marker) end to end."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from events.scenario import parse_scenario
from events.schema import Event, EventKind as K, EventLog, numbered
from events.store import Store
from experiments.cli import main
from experiments.validate import Tolerance, compare, format_table, pct_err, reproducibility
from shardtwin.vocab import Source

SCEN = {"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": ["chromium", "firefox"],
        "workload": {"kind": "iterations", "iterations": 5, "batch_size": 1, "seq_len": 32}}


def _log(run_id: str, source: Source, lat: list[float], fault=None, fail: dict | None = None) -> EventLog:
    ev = [Event.make(K.WORKLOAD_STARTED, 100.0)]
    t = 100.0
    for q, ms in enumerate(lat):
        ev.append(Event.make(K.REQUEST_SUBMITTED, t, request_id=q))
        t += ms
        if fail and q in fail:
            ev.append(Event.make(K.REQUEST_FAILED, t, request_id=q, value=ms, reason=fail[q]))
        else:
            ev.append(Event.make(K.REQUEST_COMPLETED, t, request_id=q, value=ms))
    if fault:
        inj, det, rec = fault
        ev.append(Event.make(K.FAULT_INJECTED, inj, browser="firefox-1", fault="browser_crash"))
        ev.append(Event.make(K.FAILURE_DETECTED, inj + det, browser="firefox-1", cause="exited"))
        ev.append(Event.make(K.RECOVERY_COMPLETED, inj + det + rec, browser="firefox-1", value=rec,
                             strategy="restart"))
    ev.sort(key=lambda e: e.t_ms)
    return EventLog(run_id, source, numbered(ev))


def _store_pair(store: Store, real_lat, sim_lat, real_fault=None, sim_fault=None, real_fail=None, sim_fail=None):
    s = parse_scenario(SCEN)
    ids = []
    for src, lat, fault, fail in (("real", real_lat, real_fault, real_fail), ("sim", sim_lat, sim_fault, sim_fail)):
        rid = store.begin_run(src, s)
        store.finish_run(rid, _log(rid, Source(src), lat, fault, fail))
        ids.append(rid)
    return ids


def test_errors_from_hand_made_logs():
    with Store(":memory:") as st:
        real = [100.0, 110.0, 120.0, 130.0, 200.0]
        sim = [105.0, 115.0, 126.0, 130.0, 180.0]
        r, s = _store_pair(st, real, sim, real_fault=(1000.0, 20.0, 500.0), sim_fault=(1000.0, 25.0, 450.0))
        c = compare(st.con, r, s, Tolerance(5, 10, 15, 100))
    assert c.real["median_ms"] == pytest.approx(120.0) and c.sim["median_ms"] == pytest.approx(126.0)
    assert c.median_err_pct == pytest.approx(5.0)
    assert c.real["p95_ms"] == pytest.approx(np.percentile(real, 95))
    assert c.p95_err_pct == pytest.approx(abs(np.percentile(sim, 95) - np.percentile(real, 95))
                                          / np.percentile(real, 95) * 100)
    assert c.per_request_err_pct_median == pytest.approx(np.median([abs(a - b) / b * 100 for a, b in zip(sim, real)]))
    (f,) = c.faults
    assert (f.real_detection_ms, f.sim_detection_ms, f.real_recovery_ms, f.sim_recovery_ms) == \
        pytest.approx((20.0, 25.0, 500.0, 450.0))
    assert f.recovery_err_pct == pytest.approx(10.0) and f.detection_err_ms == pytest.approx(5.0)
    assert c.outcome_agreement_pct == 100.0
    assert c.checks == {"median": True, "p95": True, "outcome": True, "recovery[0]": True}
    assert c.passed
    assert c.throughput_err_pct == pytest.approx(pct_err(5 / (sum(sim) / 1000), 5 / (sum(real) / 1000)))
    assert "median latency ms" in format_table(c) and "| figure |" in format_table(c, markdown=True)


def test_misses_and_outcome_disagreement():
    with Store(":memory:") as st:
        r, s = _store_pair(st, [100.0] * 5, [120.0] * 5, real_fault=(500.0, 20.0, 400.0),
                           sim_fault=(500.0, 20.0, 200.0), real_fail={4: "request_timeout"})
        c = compare(st.con, r, s)
    assert c.median_err_pct == pytest.approx(20.0)
    assert c.outcome_agreement_pct == pytest.approx(80.0)
    assert [m["request_id"] for m in c.outcome_mismatches] == [4]
    assert c.faults[0].recovery_err_pct == pytest.approx(50.0)
    assert not c.passed and not c.checks["median"] and not c.checks["recovery[0]"] and not c.checks["outcome"]


def test_different_scenarios_refused():
    from shardtwin.errors import InputError
    with Store(":memory:") as st:
        r, _ = _store_pair(st, [100.0], [100.0])
        other = st.begin_run("sim", parse_scenario({**SCEN, "shards": 3}))
        st.finish_run(other, _log(other, Source.SIM, [100.0]))
        with pytest.raises(InputError, match="different scenarios"):
            compare(st.con, r, other)


def test_sim_made_logs_self_comparison_is_exact(tmp_path):
    """Two sim runs of one scenario with one profile and seed agree exactly; a slower profile is caught."""
    from experiments.cmd_sim import simulate_and_store
    from sim.profile import DEFAULT_PROFILE
    db = str(tmp_path / "v.duckdb")
    s = parse_scenario({**SCEN, "fault_tolerance_level": "low",
                        "faults": [{"type": "browser_crash", "at_ms": 20.0, "browser": "firefox"}]})
    a = simulate_and_store(s, DEFAULT_PROFILE, db)["run_id"]
    b = simulate_and_store(s, dataclasses.replace(DEFAULT_PROFILE, name="same"), db)["run_id"]
    slow = dataclasses.replace(DEFAULT_PROFILE, name="slow", link_latency_ms=40.0)
    c_id = simulate_and_store(s, slow, db)["run_id"]
    with Store(db) as st:
        same = compare(st.con, a, b)
        off = compare(st.con, a, c_id)
    assert same.median_err_pct == 0.0 and same.p95_err_pct == 0.0 and same.passed
    assert same.faults and same.faults[0].recovery_err_pct == 0.0
    assert off.median_err_pct > 5.0 and not off.passed


def test_validate_command_on_stored_runs_and_report(tmp_path, capsys):
    db = str(tmp_path / "v.duckdb")
    with Store(db) as st:
        r, s = _store_pair(st, [100.0, 110.0, 300.0], [101.0, 111.0, 290.0], real_fault=(900.0, 20.0, 500.0),
                           sim_fault=(900.0, 22.0, 480.0))
    rc = main(["validate", "--runs", r, s, "--db", db, "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("tolerance: median latency error <= 5%")
    assert "validation PASSED" in out and rc == 0
    for f in ("latency_scatter.png", "latency_cdf.png", "recovery_timeline.png", "index.html"):
        assert (tmp_path / "rep" / f).stat().st_size > 1000
    assert main(["validate", "--runs", r, s, "--db", db, "--tol-median", "0.5"]) == 1


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("firefox-esr")), reason="browsers not installed")
def test_real_validate_end_to_end(tmp_path, capsys):
    db = str(tmp_path / "r.duckdb")
    rc = main(["validate", "--model", "all-MiniLM-L6-v2", "--shards", "2", "--browsers", "chromium,firefox",
               "--iterations", "4", "--seq-len", "16", "--db", db, "--timeout", "120"])
    out = capsys.readouterr().out
    assert rc in (0, 1)     # accuracy depends on machine noise; not asserted here
    assert "median latency ms" in out and "outcome agreement" in out
    line = next(x for x in out.splitlines() if x.startswith("outcome agreement"))
    assert "100.0%" in line

    # --reuse-real: the stored real run of the same scenario is the observation, no browser starts;
    # a missing repeat is run; a scenario with another hash finds nothing to reuse
    from experiments.cmd_validate import stored_real_runs
    from experiments.flags import scenario_from_args

    def real_runs() -> list[str]:
        with Store(db) as st:
            return [r.run_id for r in st.runs(source="real")]
    flags = ["--model", "all-MiniLM-L6-v2", "--shards", "2", "--browsers", "chromium,firefox", "--iterations", "4",
             "--seq-len", "16", "--db", db, "--timeout", "120", "--sim-seeds", "2"]
    first, = real_runs()
    # (with a profile whose compute fit missed its own runs: validate repeats calibrate's warning)
    from sim.profile import DEFAULT_PROFILE
    with Store(db) as st:       # what the run placed from, for its later twins
        assert st.run(first).result["placement"]["speed_gflops"] == {
            k: DEFAULT_PROFILE.gflops(k, "wasm") for k in ("chromium", "firefox")}
    suspect = tmp_path / "suspect.json"
    dataclasses.replace(DEFAULT_PROFILE, residuals={
        "compute.chromium.wasm": {"fitted": True, "n": 50, "median_abs_pct": 9.0}}).save(suspect)
    assert main(["validate", *flags, "--reuse-real", "--profile", str(suspect)]) in (0, 1)
    out = capsys.readouterr().out
    assert "reusing 1 stored real run(s) of this scenario\n" in out and f"real run(s) {first} vs sim" in out
    assert "warning: profile" in out and "chromium.wasm compute fit misses its own runs by 9.0%" in out
    assert real_runs() == [first]
    assert main(["validate", *flags, "--reuse-real", "--real-repeats", "2"]) in (0, 1)
    out = capsys.readouterr().out
    assert "reusing 1 stored real run(s) of this scenario; running 1 more" in out
    second = [r for r in real_runs() if r != first]
    assert len(second) == 1 and f"real run(s) {first}, {second[0]} vs sim" in out
    from experiments.cli import build_parser
    other = scenario_from_args(build_parser().parse_args(["validate", *flags[:-2], "--iterations", "5"]))
    assert stored_real_runs(db, other, 3) == []


def test_an_ensemble_prediction_pools_latencies_and_takes_the_median_fault_time():
    s = parse_scenario(SCEN)
    with Store(":memory:") as st:
        real = st.begin_run("real", s)
        st.finish_run(real, _log(real, Source.REAL, [100.0, 100.0, 100.0], fault=(1000.0, 20.0, 500.0)))
        sims = []
        for lat, rec in (([90.0, 90.0, 90.0], 400.0), ([110.0, 110.0, 110.0], 520.0), ([130.0, 130.0, 130.0], 900.0)):
            sid = st.begin_run("sim", s)
            st.finish_run(sid, _log(sid, Source.SIM, lat, fault=(1000.0, 20.0, rec)))
            sims.append(sid)
        one = compare(st.con, real, sims[0])
        ens = compare(st.con, real, sims)
    # pooled: 9 requests 90/110/130 -> median 110, p95 over the pool; one run alone: 90
    assert one.sim["median_ms"] == pytest.approx(90.0) and ens.sim["median_ms"] == pytest.approx(110.0)
    assert ens.sim["runs"] == 3 and ens.sim_runs == tuple(sims) and ens.sim_run == sims[0]
    assert ens.sim["p95_ms"] == pytest.approx(130.0)
    assert [f.sim_recovery_ms for f in ens.faults] == [520.0]          # median of 400, 520, 900
    assert [f.sim_recovery_ms for f in one.faults] == [400.0]
    assert "sim (3 seeds)" in format_table(ens)


def test_real_repeats_are_pooled_like_sim_seeds():
    s = parse_scenario(SCEN)
    with Store(":memory:") as st:
        reals = []
        for lat, rec in (([100.0] * 3, 500.0), ([120.0] * 3, 700.0)):
            rid = st.begin_run("real", s)
            st.finish_run(rid, _log(rid, Source.REAL, lat, fault=(1000.0, 20.0, rec)))
            reals.append(rid)
        sid = st.begin_run("sim", s)
        st.finish_run(sid, _log(sid, Source.SIM, [110.0] * 3, fault=(1000.0, 20.0, 600.0)))
        c = compare(st.con, reals, sid)
    assert c.real["runs"] == 2 and c.real["median_ms"] == pytest.approx(110.0)
    assert c.median_err_pct == pytest.approx(0.0)
    assert [f.real_recovery_ms for f in c.faults] == [600.0] and c.checks["recovery[0]"]
    assert "real (2 runs)" in format_table(c)


def test_reproducibility_is_the_error_between_real_repeats():
    s = parse_scenario(SCEN)
    with Store(":memory:") as st:
        reals = []
        for lat in ([100.0] * 3, [110.0] * 3):
            rid = st.begin_run("real", s)
            st.finish_run(rid, _log(rid, Source.REAL, lat))
            reals.append(rid)
        rep = reproducibility(st.con, reals)
        assert reproducibility(st.con, reals[:1]) is None
    # 110 vs 100 -> 10%, 100 vs 110 -> 9.09%: the median of the two ordered pairs
    assert rep["pairs"] == 2 and rep["median_err_pct"] == pytest.approx((10.0 + 100 / 11) / 2)


def test_a_twin_places_as_the_run_it_replays(tmp_path):
    """A profile refitted after a real run can rank the browsers the other way (measured: Chromium's
    matmul fit moved 25-38 GFLOPS between collects, Firefox's 25-29) and so pick another failover
    target than the run did; the twin decides from the placement record stored with the run."""
    from experiments.cmd_sim import simulate_and_store
    from experiments.cmd_validate import placement_of
    from sim.profile import DEFAULT_PROFILE as P

    def speeds(chromium: float, firefox: float):
        def br(kind, g):
            b = P.browsers[kind]
            return dataclasses.replace(b, backends={**b.backends, "wasm": dataclasses.replace(b.backends["wasm"],
                                                                                              matmul_gflops=g)})
        return dataclasses.replace(P, name=f"c{chromium:g}-f{firefox:g}",
                                   browsers={**P.browsers, "chromium": br("chromium", chromium),
                                             "firefox": br("firefox", firefox)})
    scen = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 3, "shard_type": "layer",
                           "browsers": ["chromium", "firefox", "firefox"], "fault_tolerance_level": "low",
                           "recovery_strategy": "failover", "faults": [{"type": "browser_crash", "at_ms": 300.0,
                                                                         "browser": "2"}],
                           "workload": {"kind": "iterations", "iterations": 20, "batch_size": 1, "seq_len": 32}})
    db = str(tmp_path / "t.duckdb")

    def failover_target(run_id: str) -> str:
        with Store(db) as st:
            (b,), = st.con.execute("SELECT browser FROM events WHERE run_id = ? AND kind = 'shard_placed' AND t_ms > "
                                   "(SELECT min(t_ms) FROM events WHERE run_id = ? AND kind = 'fault_injected')",
                                   [run_id, run_id]).fetchall()
        return b
    then, now = speeds(40.0, 20.0), speeds(20.0, 40.0)
    run = simulate_and_store(scen, then, db)          # the run being replayed, made under `then`
    assert run["placement"] == {"speed_gflops": {"chromium": 40.0, "firefox": 20.0}, "memory_mb": 4096.0}
    assert failover_target(run["run_id"]) == "chromium-0"
    said: list[str] = []
    rec = placement_of(db, [run["run_id"]], now, "wasm", said.append)
    assert rec == run["placement"] and "the sim places as the real run(s) did" in said[0]
    assert failover_target(simulate_and_store(scen, now, db, placement=rec)["run_id"]) == "chromium-0"
    assert failover_target(simulate_and_store(scen, now, db)["run_id"]) == "firefox-1"
    # a run stored before the record was kept: the profile decides, and validate says so
    with Store(db) as st:
        st.con.execute("UPDATE runs SET result = json_object('requests', 1) WHERE run_id = ?", [run["run_id"]])
    said.clear()
    assert placement_of(db, [run["run_id"]], now, "wasm", said.append) is None
    assert "have no placement record" in said[0]


def test_the_real_p95s_sampling_error_comes_from_its_runs():
    """validate says how precisely the real p95 is known: runs that agree leave no doubt, runs that
    differ do, and more runs of the same spread pin it down better (the held-out default is 9)."""
    from experiments.validate import p95_sampling_error
    s = parse_scenario(SCEN)

    def stored(st, lats):
        ids = []
        for lat in lats:
            rid = st.begin_run("real", s)
            st.finish_run(rid, _log(rid, Source.REAL, lat))
            ids.append(rid)
        return ids
    base = [100.0 + 5.0 * i for i in range(20)]
    with Store(":memory:") as st:
        same = stored(st, [base] * 3)
        levels = (0.8, 1.0, 1.2)          # each run a host state: the whole run slower or faster
        few = stored(st, [[v * k for v in base] for k in levels])
        many = stored(st, [[v * k for v in base] for k in levels * 4])
        e_same = p95_sampling_error(st.con, same)
        e_few, e_many = p95_sampling_error(st.con, few), p95_sampling_error(st.con, many)
        assert p95_sampling_error(st.con, same[:1])["p95_se_pct"] is None
        assert reproducibility(st.con, many)["p95_se_pct"] == pytest.approx(e_many["p95_se_pct"])
    assert e_same["p95_se_pct"] == pytest.approx(0.0) and e_same["p95_lo_ms"] == e_same["p95_hi_ms"]
    assert 5.0 < e_few["p95_se_pct"] and e_few["p95_lo_ms"] < e_few["p95_hi_ms"]
    # 4x the runs of the same spread: about half the error (1 / sqrt(4))
    assert 0.35 < e_many["p95_se_pct"] / e_few["p95_se_pct"] < 0.7

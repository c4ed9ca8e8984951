"""calibrate: the fit recovers a known profile from sim-made events (fitted the same way as real
events), stores it versioned in DuckDB and as a file labelled calibrated; background-load weights."""

from __future__ import annotations

import dataclasses
import json

import pytest

from events.scenario import parse_scenario
from events.store import Store
from experiments.calibrate import HOST_TABLE, calibrate
from experiments.cli import main
from experiments.cmd_sim import simulate_and_store
from sim.profile import DEFAULT_PROFILE, BackendRate, load_profile

P = DEFAULT_PROFILE
# Elementwise FLOPs keep a fixed ratio to matmul FLOPs inside a transformer layer, so their rate is not
# identifiable from these shards: the known profile keeps the base rate (2 GFLOPS) there, where the
# fit's weak prior holds it; matmul, attention and overhead are what the data decide.
CHROMIUM = BackendRate(20.0, 6.0, 2.0, 10.0, threads=1.0, run_overhead_ms=4.0)
FIREFOX = BackendRate(28.0, 9.0, 2.0, 10.0, threads=1.0, run_overhead_ms=2.0)
GRID = [("all-MiniLM-L6-v2", 2, "layer", 32), ("all-MiniLM-L6-v2", 3, "attention_feedforward", 128),
        ("bert-base-uncased", 2, "layer", 64), ("all-MiniLM-L6-v2", 1, "layer", 256),
        ("all-MiniLM-L6-v2", 2, "layer", 16)]


def known_profile(**top):
    def br(kind, rate, **kw):
        return dataclasses.replace(P.browsers[kind], backends={**P.browsers[kind].backends, "wasm": rate}, **kw)
    return dataclasses.replace(
        P, name="known", compute_cv=0.0, link_mb_per_s=50.0, **top,
        browsers={**P.browsers,
                  "chromium": br("chromium", CHROMIUM, hop_overhead_ms=12.0, warmup_factor=1.8, launch_ms=900.0,
                                 launch_sd_ms=0.0, cpu_weight=0.33),
                  "firefox": br("firefox", FIREFOX, hop_overhead_ms=20.0, warmup_factor=1.3, launch_ms=1500.0,
                                launch_sd_ms=0.0)})


def sim_runs(db: str, profile, backgrounds=(0.0,)) -> list[str]:
    ids = []
    for bg in backgrounds:
        prof = dataclasses.replace(profile, background_cores=bg)
        for model, n, kind, seq in GRID:
            for order in (["chromium", "firefox"], ["firefox", "chromium"]):
                s = parse_scenario({"model": model, "shards": n, "shard_type": kind, "browsers": order, "seed": len(ids),
                                    "workload": {"kind": "iterations", "iterations": 5, "batch_size": 1,
                                                 "seq_len": seq}})
                rid = simulate_and_store(s, prof, db)["run_id"]
                ids.append(rid)
                with Store(db) as st:
                    st.con.execute(HOST_TABLE)
                    st.con.execute("INSERT INTO host_background VALUES (?, ?, 10)", [rid, bg])
    return ids


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("cal") / "c.duckdb")
    ids = sim_runs(db, known_profile())
    with Store(db) as st:
        prof = calibrate(st, ids, name="fit", source="sim")
    return db, ids, prof


def test_fit_recovers_known_compute_hop_load_launch(fitted):
    _, ids, prof = fitted
    for kind, want in (("chromium", CHROMIUM), ("firefox", FIREFOX)):
        got = prof.browsers[kind].backends["wasm"]
        assert rel(got.matmul_gflops, want.matmul_gflops) < 0.03, (kind, got)
        assert rel(got.attention_gflops, want.attention_gflops) < 0.05, (kind, got)
        assert abs(got.run_overhead_ms - want.run_overhead_ms) < 0.5
        assert prof.residuals[f"compute.{kind}.wasm"]["median_abs_pct"] < 1.0
    assert rel(prof.browsers["chromium"].hop_overhead_ms, 12.0) < 0.03
    assert rel(prof.browsers["firefox"].hop_overhead_ms, 20.0) < 0.03
    assert rel(prof.link_mb_per_s, 50.0) < 0.03
    assert rel(prof.browsers["chromium"].warmup_factor, 1.8) < 0.03
    assert rel(prof.browsers["firefox"].warmup_factor, 1.3) < 0.03
    assert rel(prof.browsers["chromium"].launch_ms, 900.0) < 0.01
    assert rel(prof.session_create_ms, P.session_create_ms) < 0.03
    assert rel(prof.session_create_ms_per_mb, P.session_create_ms_per_mb + P.fetch_ms_per_mb) < 0.03
    assert prof.compute_cv < 0.02
    assert len(prof.heartbeat_extra_quantiles) == 21 and prof.heartbeat_extra_quantiles[10] > 0


def test_profile_is_versioned_labelled_and_loadable(fitted, tmp_path):
    db, ids, prof = fitted
    assert prof.calibrated and prof.version == 1 and set(prof.source_runs) == set(ids)
    out = tmp_path / "p.json"
    assert main(["calibrate", "--db", db, "--runs", *ids[:4], "--name", "fit", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["calibrated"] is True and data["version"] == 2 and len(data["source_runs"]) == 4
    assert load_profile(out).browsers["chromium"].backends["wasm"].matmul_gflops > 0
    with Store(db) as st:
        stored = st.load_profile("fit")
        assert stored.version == 2 and stored.residuals["hop"]["n"] > 0


def test_background_load_is_normalised_away(tmp_path):
    """Runs under a measured background load beyond the free cores: the fit still finds the idle rates."""
    db = str(tmp_path / "bg.duckdb")
    prof0 = known_profile()
    prof0 = dataclasses.replace(prof0, browsers={**prof0.browsers, "chromium": dataclasses.replace(
        prof0.browsers["chromium"], cpu_weight=1.0)})
    ids = sim_runs(db, prof0, backgrounds=(0.0, 3.0))
    with Store(db) as st:
        prof = calibrate(st, ids, name="bg", source="sim")
    assert rel(prof.browsers["chromium"].backends["wasm"].matmul_gflops, 20.0) < 0.03
    assert rel(prof.browsers["firefox"].backends["wasm"].matmul_gflops, 28.0) < 0.03
    assert prof.background_cores == pytest.approx(1.5)


def test_no_runs_is_one_line_error(tmp_path, capsys):
    assert main(["calibrate", "--db", str(tmp_path / "empty.duckdb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "calibrate --collect" in err


def test_fit_recovers_per_browser_load_lines_and_the_settled_page_init(tmp_path):
    """Loads per kind: fixed + MB * per_mb, a first session right after launch costs page_init_ms more,
    the first session of a page up for seconds (a standby) page_init_aged_ms more."""
    lines = {"chromium": (100.0, 6.0, 900.0, 400.0), "firefox": (20.0, 4.0, 1300.0, 700.0)}
    prof = dataclasses.replace(P, name="known-loads", compute_cv=0.0, browsers={
        **P.browsers, **{k: dataclasses.replace(P.browsers[k], launch_sd_ms=0.0, load_ms=a, load_ms_per_mb=b,
                                                page_init_ms=c, page_init_aged_ms=d)
                         for k, (a, b, c, d) in lines.items()}})
    db = str(tmp_path / "loads.duckdb")
    specs = [{"model": "all-MiniLM-L6-v2", "shards": 1, "browsers": ["chromium"]},
             {"model": "all-MiniLM-L6-v2", "shards": 1, "browsers": ["firefox"]},
             {"model": "all-MiniLM-L6-v2", "shards": 4, "browsers": ["chromium", "firefox"]},       # second sessions
             {"model": "bert-base-uncased", "shards": 2, "browsers": ["chromium"]},
             {"model": "bert-base-uncased", "shards": 2, "browsers": ["firefox"]}]
    for first in ("chromium", "firefox"):       # a crash moves the shard to the (settled) standby of that kind
        other = "firefox" if first == "chromium" else "chromium"
        specs.append({"model": "all-MiniLM-L6-v2", "shards": 2, "browsers": [first, other],
                      "fault_tolerance_level": "high", "recovery_strategy": "failover",
                      "faults": [{"type": "browser_crash", "at_ms": 300.0, "browser": first}]})
    ids = []
    for i, sp in enumerate(specs):
        s = parse_scenario({"shard_type": "layer", "seed": i, **sp,
                            "workload": {"kind": "iterations", "iterations": 20, "batch_size": 1, "seq_len": 32}})
        ids.append(simulate_and_store(s, prof, db)["run_id"])
    with Store(db) as st:
        fit = calibrate(st, ids, name="fit", source="sim")
    for kind, (a, b, c, d) in lines.items():
        got = fit.browsers[kind]
        assert abs(got.load_ms - a) < 5.0 and rel(got.load_ms_per_mb, b) < 0.03, (kind, got.load_ms, got.load_ms_per_mb)
        assert rel(got.page_init_ms, c) < 0.03 and rel(got.page_init_aged_ms, d) < 0.03, (kind, got.page_init_ms,
                                                                                         got.page_init_aged_ms)


def test_fit_recovers_a_launch_burst_and_page_weights(tmp_path):
    """A Firefox launch that burns 1.8 cores over its first 60% slows a Chromium page (weight 0.5) beside
    it far more than a Firefox page (weight 1): the fit finds the burst and tells the weights apart."""
    rate = BackendRate(20.0, 6.0, 2.0, 10.0, threads=1.0, run_overhead_ms=1.0)
    prof = dataclasses.replace(P, name="known-launch", compute_cv=0.0, cpu_bound_startup=True, browsers={
        **P.browsers,
        "chromium": dataclasses.replace(P.browsers["chromium"], backends={"wasm": rate}, cpu_weight=0.5,
                                        launch_ms=600.0, launch_sd_ms=0.0),
        "firefox": dataclasses.replace(P.browsers["firefox"], backends={"wasm": rate}, cpu_weight=1.0,
                                       launch_ms=2500.0, launch_sd_ms=0.0, launch_threads=1.8,
                                       launch_cpu_fraction=0.6)})
    db = str(tmp_path / "launch.duckdb")
    ids = []
    for i, order in enumerate((["chromium", "firefox"], ["firefox", "chromium"], ["firefox", "firefox"])):
        # the crashed firefox is relaunched as a spare while the other page serves both shards
        crash = "firefox" if order != ["firefox", "firefox"] else "1"
        s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": order,
                            "fault_tolerance_level": "low", "recovery_strategy": "failover", "seed": i,
                            "faults": [{"type": "browser_crash", "at_ms": 200.0, "browser": crash}],
                            "workload": {"kind": "iterations", "iterations": 120, "batch_size": 1, "seq_len": 32}})
        ids.append(simulate_and_store(s, prof, db)["run_id"])
    with Store(db) as st:
        from experiments.calibrate import extract, fit_profile
        fit = fit_profile([extract(st, r) for r in ids], P, main_thread=True)
    ff = fit.browsers["firefox"]
    assert ff.launch_cpu_fraction == pytest.approx(0.6, abs=0.1), fit.residuals["launch_cpu.firefox"]
    assert ff.launch_threads == pytest.approx(1.8, rel=0.15), fit.residuals["launch_cpu.firefox"]
    assert fit.browsers["chromium"].cpu_weight < ff.cpu_weight, fit.residuals["launch_cpu.page_weights"]

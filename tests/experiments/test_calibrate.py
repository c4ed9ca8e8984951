"""calibrate: the fit recovers a known profile from sim-made events (fitted the same way as real
events), stores it versioned in DuckDB and as a file labelled calibrated; background-load weights."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
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


FLAT_RATE = BackendRate(20.0, 6.0, 2.0, 10.0, threads=1.0, run_overhead_ms=1.0)


def two_kinds(name: str, shared: dict | None = None, *, chromium: dict | None = None, firefox: dict | None = None,
              **top):
    """The default profile with a known Chromium and Firefox: both on FLAT_RATE, launches without
    jitter, `shared` set on both, then each kind's own fields; `top`: profile-level fields."""
    def br(kind: str, own: dict | None):
        return dataclasses.replace(P.browsers[kind], backends={"wasm": FLAT_RATE}, launch_sd_ms=0.0,
                                   **{**(shared or {}), **(own or {})})
    return dataclasses.replace(P, name=name, compute_cv=0.0, **top,
                               browsers={**P.browsers, "chromium": br("chromium", chromium),
                                         "firefox": br("firefox", firefox)})


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


def test_fit_recovers_the_round_trip_spread_the_simulator_was_given(tmp_path):
    """Round trips right-skewed around the hop line (measured: median 2.5-2.8 ms where the line through
    the mode gives 2.2): the simulator adds a draw of hop_extra_quantiles per run, the fit gives the
    spread back around its line; without it the simulated round trip is the line alone."""
    from experiments.calibrate import extract
    spread = (0.0, 0.2, 0.5, 1.0, 2.0, 6.0)
    base = known_profile()
    prof = dataclasses.replace(base, browsers={**base.browsers, "chromium": dataclasses.replace(
        base.browsers["chromium"], hop_extra_quantiles=spread)})
    db = str(tmp_path / "hop.duckdb")
    ids = []
    for i, (model, seq) in enumerate((("all-MiniLM-L6-v2", 32), ("all-MiniLM-L6-v2", 128), ("bert-base-uncased", 32))):
        for order in (["chromium", "firefox"], ["firefox", "chromium"]):
            sc = parse_scenario({"model": model, "shards": 2, "shard_type": "layer", "browsers": order, "seed": i,
                                 "workload": {"kind": "iterations", "iterations": 80, "batch_size": 1, "seq_len": seq}})
            ids.append(simulate_and_store(sc, prof, db)["run_id"])
    with Store(db) as st:
        fit = calibrate(st, ids, name="hop", source="sim")
        runs = [extract(st, r) for r in ids]
    got = np.array(fit.browsers["chromium"].hop_extra_quantiles)
    want = np.interp(np.linspace(0, 1, len(got)), np.linspace(0, 1, len(spread)), spread)
    # the line sits where the robust fit puts it: compare the spread's shape, not its offset
    assert abs((got[10] - got[2]) - (want[10] - want[2])) < 0.15, (got, want)
    # the tail (given p80 - p50 1.25 ms, p90 - p50 3.25): within 0.8 ms (the simulated runs' own p80 came
    # out 0.6 ms above the given one where the spread is steep, 2 -> 6 ms over the top 20% of draws)
    assert abs((got[16] - got[10]) - (want[16] - want[10])) < 0.8 and got[18] - got[10] > 2.5, (got, want)
    assert abs(fit.browsers["chromium"].hop_overhead_ms + got[10] - (12.0 + want[10])) < 0.3
    ff = np.array(fit.browsers["firefox"].hop_extra_quantiles)
    assert ff[18] - ff[2] < 0.2                    # Firefox was given none
    for r in runs:      # without a spread a page's round trip is its line: one value per payload size
        walls = [x.wall_ms - x.compute_ms for x in r.samples if x.kind == "firefox" and not x.first]
        assert max(walls) - min(walls) < 0.1


def test_a_collect_whose_runs_disagree_is_flagged(fitted, tmp_path, capsys):
    """Half the runs on a host 1.4x slower that no background sampler saw: the compute fit misses its
    own runs and calibrate says so (validate repeats it: test_validate); a consistent collect gets
    no warning."""
    from experiments.calibrate import FIT_SUSPECT_PCT, fit_warnings
    db, ids, prof = fitted
    assert fit_warnings(prof) == []
    slow_db = str(tmp_path / "slow.duckdb")
    base = known_profile()
    slow = dataclasses.replace(base, browsers={k: dataclasses.replace(b, backends={
        be: dataclasses.replace(r, matmul_gflops=r.matmul_gflops / 1.4, attention_gflops=r.attention_gflops / 1.4)
        for be, r in b.backends.items()}) for k, b in base.browsers.items()})
    both = sim_runs(slow_db, base) + sim_runs(slow_db, slow)
    out = tmp_path / "p.json"
    assert main(["calibrate", "--db", slow_db, "--runs", *both, "--name", "slow", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    warned = [x for x in text.splitlines() if x.startswith("warning: ")]
    assert len(warned) == 2 and any("chromium.wasm" in x for x in warned) and any("firefox.wasm" in x for x in warned)
    assert f"<= {FIT_SUSPECT_PCT:g}%" in warned[0] and "calibrate --collect" in warned[0]
    got = load_profile(out)
    assert all(got.residuals[f"compute.{k}.wasm"]["median_abs_pct"] > FIT_SUSPECT_PCT for k in ("chromium", "firefox"))
    assert main(["calibrate", "--db", db, "--runs", *ids, "--name", "again"]) == 0
    assert "warning" not in capsys.readouterr().out


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


def _crash_relaunch_runs(db: str, prof, iterations: int = 120, crash_at_ms: float = 200.0,
                         orders=(["chromium", "firefox"], ["firefox", "chromium"], ["firefox", "firefox"])) -> list[str]:
    """Crash one firefox and fail over onto the other page; the crashed browser is relaunched as a
    spare while the survivor serves (what a launch and its tail do to a page beside it)."""
    ids = []
    for i, order in enumerate(orders):
        crash = "firefox" if order != ["firefox", "firefox"] else "1"
        s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": order,
                            "fault_tolerance_level": "low", "recovery_strategy": "failover", "seed": i,
                            "faults": [{"type": "browser_crash", "at_ms": crash_at_ms, "browser": crash}],
                            "workload": {"kind": "iterations", "iterations": iterations, "batch_size": 1,
                                         "seq_len": 32}})
        ids.append(simulate_and_store(s, prof, db)["run_id"])
    return ids


def test_fit_recovers_a_launch_burst_and_page_weights(tmp_path):
    """A Firefox launch that burns 1.8 cores over its first 60% slows a Chromium page (weight 0.5) beside
    it far more than a Firefox page (weight 1): the fit finds the burst and tells the weights apart."""
    prof = two_kinds("known-launch", cpu_bound_startup=True, chromium=dict(cpu_weight=0.5, launch_ms=600.0),
                     firefox=dict(cpu_weight=1.0, launch_ms=2500.0, launch_threads=1.8, launch_cpu_fraction=0.6))
    db = str(tmp_path / "launch.duckdb")
    ids = _crash_relaunch_runs(db, prof, iterations=120)
    with Store(db) as st:
        from experiments.calibrate import extract, fit_profile
        fit = fit_profile([extract(st, r) for r in ids], P, main_thread=True)
    ff = fit.browsers["firefox"]
    assert ff.launch_cpu_fraction == pytest.approx(0.6, abs=0.1), fit.residuals["launch_cpu.firefox"]
    assert ff.launch_threads == pytest.approx(1.8, rel=0.15), fit.residuals["launch_cpu.firefox"]
    assert fit.browsers["chromium"].cpu_weight < ff.cpu_weight, fit.residuals["launch_cpu.page_weights"]


def test_fit_recovers_the_work_a_browser_does_after_it_said_hello(tmp_path):
    """Firefox keeps 1.6 cores busy for 750 ms after BROWSER_READY: pages beside it run slower then and
    not later; the fit finds the tail's length and threads from those pages' runs."""
    prof = two_kinds("known-tail", cpu_bound_startup=True, chromium=dict(launch_ms=600.0),
                     firefox=dict(launch_ms=1500.0, launch_tail_ms=750.0, launch_tail_threads=1.6))
    db = str(tmp_path / "tail.duckdb")
    ids = _crash_relaunch_runs(db, prof, iterations=160)
    with Store(db) as st:
        from experiments.calibrate import extract, fit_profile
        fit = fit_profile([extract(st, r) for r in ids], P, main_thread=True)
    ff = fit.browsers["firefox"]
    res = fit.residuals["launch_tail.firefox"]
    assert res["fitted"] and ff.launch_tail_ms == pytest.approx(750.0, abs=260.0), res
    assert ff.launch_tail_threads == pytest.approx(1.6, rel=0.2), res
    assert res["median_slowdown_first_500ms"] > 1.2 and res["median_slowdown_after_1000ms"] < 1.05, res


def test_fit_recovers_an_empirical_noise_distribution(tmp_path):
    """Steady runs' compute / prediction follows a tight core a little below the fit plus a right tail
    (as measured in real browsers); the fitted quantiles reproduce its median and tail."""
    known = (0.9, 0.92, 0.93, 0.94, 0.94, 0.95, 0.95, 0.96, 0.96, 0.97, 0.97, 0.98, 0.98, 0.99, 1.0,
             1.02, 1.05, 1.1, 1.2, 1.4, 1.8)
    base = known_profile()
    prof = dataclasses.replace(base, browsers={k: dataclasses.replace(b, compute_noise_quantiles=known)
                                               if k in ("chromium", "firefox") else b
                                               for k, b in base.browsers.items()})
    db = str(tmp_path / "noise.duckdb")
    ids = []
    for i, order in enumerate((["chromium", "firefox"], ["firefox", "chromium"])):
        s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": order,
                            "seed": i, "workload": {"kind": "iterations", "iterations": 150, "batch_size": 1,
                                                    "seq_len": 32}})
        ids.append(simulate_and_store(s, prof, db)["run_id"])
    with Store(db) as st:
        from experiments.calibrate import extract, fit_profile
        fit = fit_profile([extract(st, r) for r in ids], P, main_thread=False)
    import numpy as np
    for kind in ("chromium", "firefox"):
        q = fit.browsers[kind].compute_noise_quantiles
        assert len(q) == 21, fit.residuals[f"noise.{kind}"]
        # the rate fit centres on the bulk, so compare shapes relative to the median
        got, want = np.array(q) / q[10], np.array(known) / known[10]
        # (the 90th percentile sits where the known distribution is steep: ~280 runs pin it to ~0.1)
        assert abs(got[18] - want[18]) < 0.1 and abs(got[4] - want[4]) < 0.03, (kind, q)
        assert got[19] > 1.25, (kind, q)     # the tail is kept, not averaged into a lognormal


def test_launch_noise_is_fitted_relative_to_the_launch_model():
    """A run beside a launch: measured / (prediction x the modelled slowdown), so the model's median and
    the measured spread multiply back to what was measured."""
    from experiments.calibrate import RunData, Sample, _burst_slowdown, launch_noise_quantiles, launch_slowdown

    def sample(t: float, ms: float) -> Sample:
        return Sample("r", "chromium", "wasm", {"matmul": 0.0, "attention": 0.0, "elementwise": 0.0, "conv": 0.0},
                      0.0, ms, ms, t, t + ms, "chromium-0", page_index=20, beside_launch=True)
    run = RunData("r", None)
    run.windows = [("firefox-1", 1000.0, 3000.0, "launch"), ("firefox-1", 3000.0, 4500.0, "tail")]
    run.samples = [sample(1100.0 + 20 * i, 10.0 * (3.0 if i % 10 == 0 else 1.0)) for i in range(40)]   # in the burst
    launch = {"firefox": (1.8, 0.5, 2000.0)}
    f = _burst_slowdown(1.8, 1.0, 2.0)
    assert launch_slowdown(run, run.samples[0], launch, {}, 1.0, 2.0) == pytest.approx(f)
    late = sample(2500.0, 10.0)
    assert launch_slowdown(run, late, launch, {}, 1.0, 2.0) == 1.0          # past the burst fraction
    assert launch_slowdown(run, sample(3100.0, 10.0), launch, {"firefox": (500.0, 1.5)}, 1.0, 2.0) == \
        pytest.approx(_burst_slowdown(1.5, 1.0, 2.0))
    q, res = launch_noise_quantiles([run], "chromium", lambda s: 10.0,
                                    lambda r, s: launch_slowdown(r, s, launch, {}, 1.0, 2.0))
    assert res["fitted"] and q[10] == pytest.approx(1.0 / f)
    assert q[-1] == pytest.approx(3.0 / f)


def test_sim_draws_launch_noise_only_beside_a_launch(tmp_path):
    """The simulator multiplies a run by launch_noise_quantiles when it starts while another browser
    launches or within LAUNCH_NOISE_WINDOW_MS after, by compute_noise_quantiles otherwise."""
    prof = two_kinds("known-lnoise", dict(compute_noise_quantiles=(1.0, 1.0), launch_noise_quantiles=(3.0, 3.0)),
                     chromium=dict(launch_ms=600.0), firefox=dict(launch_ms=1500.0))
    db = str(tmp_path / "lnoise.duckdb")
    ids = _crash_relaunch_runs(db, prof, iterations=160)
    from experiments.calibrate import extract
    with Store(db) as st:
        samples = [s for r in ids for s in extract(st, r).samples if not s.first and s.page_index >= 2]
    beside = [s.compute_ms for s in samples if s.beside_launch]
    apart = [s.compute_ms for s in samples if not s.beside_launch]
    assert len(beside) > 20 and len(apart) > 100
    assert min(beside) == pytest.approx(3 * max(apart), rel=0.02)


def test_sim_and_fit_count_the_second_after_a_pages_first_load_as_beside_startup(tmp_path):
    """After a page's first session create its browser compiles WASM's optimising tier on background
    threads: for WARM_NOISE_WINDOW_MS other pages' runs draw launch_noise_quantiles in the simulator,
    and the fit's extract puts the same runs in the launch set (not the steady one)."""
    from experiments.calibrate import extract
    from sim.profile import WARM_NOISE_WINDOW_MS
    fast = dict(compute_noise_quantiles=(1.0, 1.0), launch_noise_quantiles=(3.0, 3.0), warmup_factor=1.0,
                warmup_extra_ms=0.0, session_first_run_ms=0.0)
    # Firefox's page comes up late and loads long after Chromium's page serves: its launch window and
    # tail end before its first load does
    prof = two_kinds("known-warm", fast, chromium=dict(launch_ms=300.0),
                     firefox=dict(launch_ms=600.0, page_init_ms=3000.0))
    db = str(tmp_path / "warm.duckdb")
    s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer",
                        "browsers": ["chromium", "firefox"], "seed": 1,
                        "workload": {"kind": "iterations", "iterations": 200, "batch_size": 1, "seq_len": 32}})
    rid = simulate_and_store(s, prof, db)["run_id"]
    with Store(db) as st:
        run = extract(st, rid)
    (w0, w1), = [(t0, t1) for b, t0, t1, w in run.windows if w == "warm" and b == "firefox-1"]
    assert w1 - w0 == WARM_NOISE_WINDOW_MS
    assert max(t1 for b, _, t1, w in run.windows if b == "firefox-1" and w in ("launch", "tail")) < w0
    ch = [x for x in run.samples if x.kind == "chromium" and not x.first]
    inside = [x for x in ch if w0 <= x.start_ms <= w1]
    after = [x for x in ch if x.start_ms > w1]
    assert len(inside) >= 5 and len(after) >= 20
    assert all(x.beside_launch for x in inside) and not any(x.beside_launch for x in after)
    assert min(x.compute_ms for x in inside) == pytest.approx(3 * max(x.compute_ms for x in after), rel=0.02)


def test_launch_noise_of_early_runs_is_taken_after_their_warm_up(tmp_path):
    """A page's first runs follow its load, so many are beside another page's launch or first load:
    the simulator gives them the warm-up and the launch noise, so the fit must divide the warm-up out
    before taking the launch noise (else early runs are slowed twice: simulated p95 40-50% heavy)."""
    flat = dict(compute_noise_quantiles=(1.0, 1.0), launch_noise_quantiles=(1.0, 1.0), early_noise_quantiles=(1.0, 1.0),
                warmup_factor=3.0, warmup_ms=200.0, warmup_after_factor=2.0, warmup_extra_ms=0.0,
                session_first_run_ms=0.0)
    prof = two_kinds("known-warm-launch", flat, chromium=dict(launch_ms=600.0), firefox=dict(launch_ms=1500.0))
    db = str(tmp_path / "wl.duckdb")
    ids = _crash_relaunch_runs(db, prof, iterations=120, crash_at_ms=1000.0)   # a first second to fit the warm-up on
    with Store(db) as st:
        fit = calibrate(st, ids, name="wl", source="sim")
    from experiments.calibrate import extract
    with Store(db) as st:
        early_beside = [x for r in ids for x in extract(st, r).samples if x.beside_launch and 0 < x.page_index < 3]
    assert len(early_beside) >= 6                    # the case exists: early runs beside a launch
    ch = fit.browsers["chromium"]
    assert ch.warmup_factor == pytest.approx(3.0, rel=0.05)
    assert ch.warmup_after_factor == pytest.approx(2.0, abs=0.1) and ch.warmup_ms == 200.0, fit.residuals["warmup.chromium"]
    q = ch.launch_noise_quantiles
    assert q and max(q) < 1.1 and min(q) > 0.9, (q, fit.residuals.get("launch_noise.chromium"))


def test_fit_recovers_the_cost_of_a_session_create_soon_after_the_first(tmp_path):
    """Chromium: a later session create costs 300 ms more right after the page's first one, decaying
    with 1 s; back-to-back loads (one browser, four shards) and failovers onto a page that has served
    for 0.3-3 s tell the decay from the line."""
    prof = dataclasses.replace(P, name="known-settle", compute_cv=0.0, browsers={
        **P.browsers,
        "chromium": dataclasses.replace(P.browsers["chromium"], launch_sd_ms=0.0, load_ms=20.0, load_ms_per_mb=6.0,
                                        page_init_ms=800.0, settle_load_ms=300.0, settle_ms=1000.0),
        "firefox": dataclasses.replace(P.browsers["firefox"], launch_sd_ms=0.0, load_ms=15.0, load_ms_per_mb=5.0,
                                       page_init_ms=1200.0)})
    db = str(tmp_path / "settle.duckdb")
    specs = [{"shards": 4, "browsers": ["chromium"]}, {"shards": 4, "browsers": ["firefox"]},
             {"shards": 1, "browsers": ["chromium"]}, {"shards": 2, "browsers": ["chromium"], "model": "bert-base-uncased"}]
    for at in (300.0, 1500.0, 3000.0):
        specs.append({"shards": 2, "browsers": ["chromium", "firefox"], "fault_tolerance_level": "low",
                      "recovery_strategy": "failover", "faults": [{"type": "browser_crash", "at_ms": at,
                                                                   "browser": "firefox"}]})
    ids = []
    for i, sp in enumerate(specs):
        s = parse_scenario({"model": "all-MiniLM-L6-v2", "shard_type": "layer", "seed": i, **sp,
                            "workload": {"kind": "iterations", "iterations": 80, "batch_size": 1, "seq_len": 32}})
        ids.append(simulate_and_store(s, prof, db)["run_id"])
    with Store(db) as st:
        fit = calibrate(st, ids, name="fit", source="sim")
    ch, ff = fit.browsers["chromium"], fit.browsers["firefox"]
    assert ch.settle_load_ms == pytest.approx(300.0, rel=0.15), fit.residuals["load"]
    assert ch.settle_ms == pytest.approx(1000.0, rel=0.35), fit.residuals["load"]
    assert abs(ch.load_ms - 20.0) < 10.0 and rel(ch.load_ms_per_mb, 6.0) < 0.05, (ch.load_ms, ch.load_ms_per_mb)
    assert ff.settle_load_ms == 0.0        # Firefox's later loads follow its line: no settle term earned


def test_early_runs_draw_their_own_noise_and_the_fit_finds_it():
    """Runs 1..STEADY_NOISE_RUNS-1 of a page, and of a session in it, draw from early_noise_quantiles
    (measured: around Chromium's tier-up they are spikier), later runs from
    compute_noise_quantiles; the fit of sim-made runs gives the early set back."""
    import tempfile
    from experiments.calibrate import extract, fit_profile
    from experiments.calibrate import steady as is_steady
    from sim.profile import STEADY_NOISE_RUNS
    base = known_profile()
    prof = dataclasses.replace(base, browsers={k: dataclasses.replace(b, compute_noise_quantiles=(1.0, 1.0),
                                                                      early_noise_quantiles=(0.7, 1.4))
                                               if k in ("chromium", "firefox") else b
                                               for k, b in base.browsers.items()})
    with tempfile.TemporaryDirectory() as d:
        db = f"{d}/early.duckdb"
        ids = []
        # one browser per run: no other browser's launch beside the early runs (those draw launch noise)
        for i, order in enumerate((["chromium"], ["firefox"], ["chromium"], ["chromium"], ["chromium"])):
            s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": order,
                                "seed": i, "workload": {"kind": "iterations", "iterations": 40, "batch_size": 1,
                                                        "seq_len": 32}})
            ids.append(simulate_and_store(s, prof, db)["run_id"])
        with Store(db) as st:
            runs = [extract(st, r) for r in ids]
            fit = fit_profile(runs, P, main_thread=False)
    # a page runs both shards' sessions: a run is steady once its page and its session are past the early runs
    steady = [s.compute_ms for r in runs for s in r.samples if s.kind == "chromium" and is_steady(s)]
    early = [s.compute_ms for r in runs for s in r.samples if s.kind == "chromium" and not is_steady(s)
             and not s.first]
    assert min(s.session_index for r in runs for s in r.samples if s.page_index >= STEADY_NOISE_RUNS
               and not is_steady(s)) > 0
    assert min(early) >= 0.69 * max(steady) and max(early) <= 1.41 * min(steady) and max(early) > 1.3 * max(steady)
    q = fit.browsers["chromium"].early_noise_quantiles
    assert len(q) == 21 and q[-1] / q[0] == pytest.approx(1.4 / 0.7, rel=0.15), (q, fit.residuals["early_noise.chromium"])


def test_warm_up_runs_out_over_time_not_runs_and_the_fit_finds_it(tmp_path):
    """Measured in Chromium: after a page's first run its runs are ~2x slow until its optimising WASM
    tier is compiled, ~0.3 s later whatever their size (2 runs of a 70 ms shard, 5 of a 15 ms one). The
    simulator slows a run by the time since its page's first run ended, so at the same run index a
    big shard is warm and a small one is not; the fit gives the known factor and time back from both."""
    from experiments.calibrate import extract
    prof = two_kinds("known-warm-time", dict(compute_noise_quantiles=(1.0, 1.0), launch_noise_quantiles=(1.0, 1.0),
                                             early_noise_quantiles=(1.0, 1.0), warmup_factor=3.0, warmup_extra_ms=20.0,
                                             warmup_ms=300.0, warmup_after_factor=2.0, session_first_run_ms=0.0))
    db = str(tmp_path / "wt.duckdb")
    ids = []
    # each shape serves well past the warm-up too (the steady rates are fitted there)
    for i, (model, seq, n) in enumerate((("all-MiniLM-L6-v2", 16, 150), ("bert-base-uncased", 64, 30),
                                         ("all-MiniLM-L6-v2", 64, 60))):
        for order in (["chromium", "firefox"], ["firefox", "chromium"]):
            s = parse_scenario({"model": model, "shards": 2, "shard_type": "layer", "browsers": order, "seed": i,
                                "workload": {"kind": "iterations", "iterations": n, "batch_size": 1, "seq_len": seq}})
            ids.append(simulate_and_store(s, prof, db)["run_id"])
    with Store(db) as st:
        runs = [extract(st, r) for r in ids]
        fit = calibrate(st, ids, name="wt", source="sim")
    third = {}       # the third run of a page, by shard size: measured / its steady time
    for r in runs:
        for x in r.samples:
            if x.page_index == 2:
                steady = sorted(y.compute_ms for y in r.samples if y.browser == x.browser)[len(r.samples) // 4]
                third.setdefault("big" if steady > 60 else "small", []).append(x.compute_ms / steady)
    assert max(third["big"]) < 1.1 < 1.3 < min(third["small"]), third
    for kind in ("chromium", "firefox"):
        b = fit.browsers[kind]
        assert b.warmup_ms == 300.0 and b.warmup_after_factor == pytest.approx(2.0, abs=0.1), fit.residuals[f"warmup.{kind}"]
        assert b.warmup_factor == pytest.approx(3.0, rel=0.05) and b.warmup_extra_ms == pytest.approx(20.0, abs=3.0)


def test_fit_tells_a_pages_slowdown_after_its_own_load_from_a_launch_beside_it(tmp_path):
    """Measured in Chromium: for ~0.5 s after a failover load onto a page that serves, its runs take
    ~3x, while the crashed browser relaunches beside it. Sim-made runs with that slowdown and a launch
    that costs nothing: the fit finds the window and factor, and does not take it for launch
    contention (which the simulator would then apply to every page beside every launch)."""
    prof = two_kinds("known-post-load", dict(compute_noise_quantiles=(1.0, 1.0), launch_noise_quantiles=(1.0, 1.0),
                                             early_noise_quantiles=(1.0, 1.0)), cpu_bound_startup=True,
                     chromium=dict(launch_ms=600.0, post_load_ms=500.0, post_load_factor=3.0),
                     firefox=dict(launch_ms=2500.0))
    db = str(tmp_path / "pl.duckdb")
    # the Chromium page serves alone, then takes the crashed Firefox's shard while Firefox relaunches
    ids = _crash_relaunch_runs(db, prof, iterations=160, crash_at_ms=1500.0,
                               orders=(["chromium", "firefox"], ["firefox", "chromium"]))
    with Store(db) as st:
        from experiments.calibrate import extract, fit_profile
        fit = fit_profile([extract(st, r) for r in ids], P, main_thread=True)
    ch, res = fit.browsers["chromium"], fit.residuals["post_load.chromium"]
    assert ch.post_load_ms == 500.0 and ch.post_load_factor == pytest.approx(3.0, rel=0.05), res
    assert fit.browsers["firefox"].post_load_ms == 0.0, fit.residuals["post_load.firefox"]
    ff = fit.browsers["firefox"]
    assert ff.launch_threads < 1.2, fit.residuals.get("launch_cpu.firefox")


def _minilm_runs(db: str, prof, specs: list[dict], seed: int) -> list[str]:
    """Each spec (shards, browsers, faults, ...) as a 40-request MiniLM layer scenario, simulated."""
    ids = []
    for i, spec in enumerate(specs):
        s = parse_scenario({"model": "all-MiniLM-L6-v2", "shard_type": "layer", "seed": seed + i, **spec,
                            "workload": {"kind": "iterations", "iterations": 40, "batch_size": 1, "seq_len": 32}})
        ids.append(simulate_and_store(s, prof, db)["run_id"])
    return ids


def test_fit_recovers_the_extra_cost_of_a_load_onto_a_page_that_has_served(tmp_path):
    """Measured in Firefox: a failover onto a serving page costs 20-60 ms over the load line, in every
    collect, while back-to-back loads on a page that has not run follow it. Sim-made failovers onto
    serving pages with a known extra (Firefox 50 ms; Chromium none): the fit gives it back."""
    prof = two_kinds("known-served", dict(compute_noise_quantiles=(1.0, 1.0)),
                     chromium=dict(launch_ms=600.0, load_ms=20.0, load_ms_per_mb=6.0, page_init_ms=800.0),
                     firefox=dict(launch_ms=1500.0, load_ms=15.0, load_ms_per_mb=5.0, page_init_ms=1200.0,
                                  served_load_ms=50.0))
    db = str(tmp_path / "served.duckdb")
    ids = _crash_relaunch_runs(db, prof, iterations=160, crash_at_ms=1500.0)
    specs = [{"shards": 4, "browsers": ["firefox", "firefox"], "fault_tolerance_level": "low",
              "recovery_strategy": "failover", "faults": [{"type": "browser_crash", "at_ms": 500.0, "browser": "1"}]}]
    # back-to-back loads on pages that have not run yet (they tell the line apart from the extra)
    specs += [{"shards": n, "browsers": [kind]} for kind in ("chromium", "firefox") for n in (3, 4)]
    ids += _minilm_runs(db, prof, specs, seed=10)
    with Store(db) as st:
        fit = calibrate(st, ids, name="served", source="sim")
    res = fit.residuals["load"]["served"]
    assert res["firefox"]["n"] >= 3
    assert fit.browsers["firefox"].served_load_ms == pytest.approx(50.0, abs=5.0), (res, fit.residuals["load"]["firefox"])
    assert fit.browsers["chromium"].served_load_ms < 5.0, res


def test_a_load_beside_another_browsers_launch_is_not_a_served_load_sample(tmp_path):
    """The extra of a load onto a serving page is measured on loads with no launch beside them: a
    relaunch (and its work after hello) beside one made a 69 MB Firefox load 929 ms against 404-470
    without, and with one such sample among two the fit once put the Firefox line at 0 ms/MB and the
    extra at 671 ms. A hand-made run: two later loads onto the serving Firefox page, the second while
    Chromium relaunches."""
    from events.records import (BrowserLaunchRequested, BrowserReady, RequestSubmitted, ShardCompleted,
                                ShardLoaded, ShardLoadStarted, ShardStarted, to_events)
    from events.schema import EventLog, Source
    from experiments.calibrate import extract
    s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 4, "shard_type": "layer",
                        "browsers": ["chromium", "firefox"],
                        "workload": {"kind": "iterations", "iterations": 4, "batch_size": 1, "seq_len": 32}})
    ff = "firefox-1"
    recs = [BrowserReady(500.0, browser="chromium-0", launch_ms=500.0), BrowserReady(1500.0, browser=ff, launch_ms=1500.0),
            ShardLoadStarted(1500.0, shard=1, browser=ff), ShardLoaded(3000.0, shard=1, browser=ff, load_ms=1500.0)]
    for i, t in enumerate((3100.0, 3200.0, 3300.0)):        # the page serves
        recs += [RequestSubmitted(t, request_id=i), ShardStarted(t, request_id=i, shard=1, browser=ff),
                 ShardCompleted(t + 20.0, request_id=i, shard=1, browser=ff, compute_ms=20.0)]
    recs += [ShardLoadStarted(3400.0, shard=0, browser=ff), ShardLoaded(3800.0, shard=0, browser=ff, load_ms=400.0),
             RequestSubmitted(3810.0, request_id=9), ShardStarted(3810.0, request_id=9, shard=0, browser=ff),
             ShardCompleted(3830.0, request_id=9, shard=0, browser=ff, compute_ms=20.0),
             BrowserLaunchRequested(3840.0, browser="chromium-0", kind="chromium", incarnation=1),
             ShardLoadStarted(3850.0, shard=2, browser=ff),
             BrowserReady(4300.0, browser="chromium-0", launch_ms=460.0),
             ShardLoaded(4500.0, shard=2, browser=ff, load_ms=650.0)]
    db = str(tmp_path / "hand.duckdb")
    with Store(db) as st:
        run_id = st.begin_run("real", s)
        st.finish_run(run_id, EventLog(run_id, Source.REAL, tuple(to_events(sorted(recs, key=lambda r: r.t_ms)))))
        data = extract(st, run_id)
    later = [(mb, sv, q) for (_k, mb, _ms, first), sv, q in zip(data.loads, data.load_served, data.load_quiet) if not first]
    assert [(round(mb, 1), sv, q) for mb, sv, q in later] == [(54.8, True, True), (14.2, True, False)], later


def test_extract_tells_how_much_each_later_load_grows_the_pages_heap(tmp_path):
    """A page's heap never shrinks; a session create needs what the page holds + HEAP_NEED_FACTOR x
    the new shard. A hand-made run: one Firefox page creates shard 1 (14.2 MB), serves, then takes
    shard 2 (14.2 MB, 4 units: its heap grows by 14.2 MB) and shard 3 (7.7 MB, 3 units: 1.2 MB)."""
    from events.records import (BrowserReady, RequestSubmitted, ShardCompleted, ShardLoaded, ShardLoadStarted,
                                ShardStarted, to_events)
    from events.schema import EventLog, Source
    from experiments.calibrate import extract
    s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 4, "shard_type": "layer", "browsers": ["firefox"],
                        "workload": {"kind": "iterations", "iterations": 4, "batch_size": 1, "seq_len": 32}})
    ff = "firefox-0"
    recs = [BrowserReady(1500.0, browser=ff, launch_ms=1500.0),
            ShardLoadStarted(1500.0, shard=1, browser=ff), ShardLoaded(3000.0, shard=1, browser=ff, load_ms=1500.0),
            RequestSubmitted(3100.0, request_id=0), ShardStarted(3100.0, request_id=0, shard=1, browser=ff),
            ShardCompleted(3120.0, request_id=0, shard=1, browser=ff, compute_ms=20.0),
            ShardLoadStarted(3200.0, shard=2, browser=ff), ShardLoaded(3290.0, shard=2, browser=ff, load_ms=90.0),
            ShardLoadStarted(3300.0, shard=3, browser=ff), ShardLoaded(3350.0, shard=3, browser=ff, load_ms=50.0)]
    db = str(tmp_path / "grow.duckdb")
    with Store(db) as st:
        run_id = st.begin_run("real", s)
        st.finish_run(run_id, EventLog(run_id, Source.REAL, tuple(to_events(recs))))
        data = extract(st, run_id)
    assert [round(mb, 2) for _k, mb, _ms, _f in data.loads] == [14.2, 14.2, 7.69]
    assert data.load_units == [4, 4, 3]
    assert [round(g, 1) for g in data.load_grown] == [28.4, 14.2, 1.2]


def test_fit_recovers_a_later_load_model_with_the_heap_it_grows(tmp_path):
    """Sim-made runs with a known Firefox later-load model (5 ms + 3.5 ms/MB + 3 ms/unit + 0.7 ms per
    MB the heap grows): failovers onto pages with room and onto pages holding one small shard, and
    back-to-back loads. The fit gives the model back (a load it did not see within 3%), replaces the
    served-load extra with it, and leaves Chromium's later loads to its load line."""
    truth = dict(later_load_ms=5.0, later_load_ms_per_mb=3.5, later_load_ms_per_unit=3.0,
                 later_load_ms_per_grown_mb=0.7)
    prof = two_kinds("known-later", dict(compute_noise_quantiles=(1.0, 1.0)),
                     chromium=dict(launch_ms=600.0, load_ms=20.0, load_ms_per_mb=6.0, page_init_ms=800.0),
                     firefox=dict(launch_ms=1500.0, load_ms=15.0, load_ms_per_mb=5.0, page_init_ms=1200.0, **truth))
    db = str(tmp_path / "later.duckdb")
    crash = lambda b: {"fault_tolerance_level": "low", "recovery_strategy": "failover",  # noqa: E731
                       "faults": [{"type": "browser_crash", "at_ms": 500.0, "browser": b}]}
    specs = [{"shards": 4, "browsers": ["firefox", "firefox"], **crash("1")},          # onto a page with room
             {"shards": 3, "browsers": ["firefox", "firefox", "firefox"], **crash("0")},   # 62 MB onto 14 MB
             {"shards": 2, "browsers": ["chromium", "firefox"], **crash("chromium")},      # 69 MB onto 22 MB
             {"shards": 4, "browsers": ["firefox"]}, {"shards": 3, "browsers": ["firefox"]},
             {"shards": 4, "browsers": ["chromium"]}, {"shards": 3, "browsers": ["chromium"]}]
    ids = _minilm_runs(db, prof, specs, seed=20)
    with Store(db) as st:
        fit = calibrate(st, ids, name="later", source="sim")
    res = fit.residuals["load"]["later"]
    ff = fit.browsers["firefox"]
    assert res["firefox"]["fitted"] and res["firefox"]["grown_loads"] >= 2, res
    assert ff.served_load_ms == 0.0 and ff.later_load_ms is not None

    def later(bp, mb: float, units: int, grown: float) -> float:
        return (bp["later_load_ms"] + mb * bp["later_load_ms_per_mb"] + units * bp["later_load_ms_per_unit"]
                + grown * bp["later_load_ms_per_grown_mb"])
    got = dataclasses.asdict(ff)
    for mb, units, grown in ((14.79, 5, 15.4), (21.88, 7, 0.0), (7.1, 2, 7.1)):
        assert rel(later(got, mb, units, grown), later(truth, mb, units, grown)) < 0.03, (res, got)
    # no Chromium load grew a heap: its later loads keep the load line
    assert not res.get("chromium", {}).get("fitted") and fit.browsers["chromium"].later_load_ms is None, res


def test_a_later_load_model_is_kept_only_when_it_beats_the_kinds_settle_line():
    """A kind's later loads may already be described by its load line and settle term (Chromium:
    +256-279 ms right after the page's first load). The later-load model is fitted for every kind
    and kept only where it misses those loads less than that line does. Measured: collect g27 fitted
    Firefox a small settle term (19 ms); the later-load model was then skipped and held-out 3's
    recovery predicted at 75 ms against 100 real; with the choice it is 109."""
    from experiments.calibrate import fit_later_loads

    def model(mb: float, units: int, grown: float) -> float:
        return 2.0 + 5.0 + 3.5 * mb + 3.0 * units + 0.7 * grown      # 2 ms: the round trip (2 x 1 ms)
    shapes = [(14.2, 4, 0.0), (7.7, 3, 0.0), (14.2, 4, 15.0), (69.0, 7, 116.0), (7.7, 3, 1.2), (21.9, 7, 0.0),
              (172.5, 13, 79.5), (14.8, 5, 15.4)]
    loads = [("firefox", mb, model(mb, u, g), False, 1, 5000.0, 800.0) for mb, u, g in shapes]
    args = (loads, [u for _, u, _ in shapes], [g for *_, g in shapes], [True] * len(shapes), 1.0)
    off = {"firefox": lambda i: 1.15 * loads[i][2]}        # a line 15% off on every later load
    exact = {"firefox": lambda i: loads[i][2]}              # a line that explains them exactly
    kept = fit_later_loads(*args, off)["firefox"]
    assert kept["fitted"] and kept["median_abs_pct"] < 1.0 and kept["rival_median_abs_pct"] > 14.0, kept
    assert kept["ms_per_grown_mb"] == pytest.approx(0.7, rel=0.05), kept
    assert not fit_later_loads(*args, exact)["firefox"]["fitted"]
    assert fit_later_loads(*args)["firefox"]["fitted"]      # no rival: fitted from the loads alone


def test_the_sampler_records_hypervisor_steal_next_to_the_background_load(monkeypatch):
    """CPU the hypervisor gives to other machines shows in no process of this host (a fresh held-out
    session ran 10-15% slow at 0.03-0.11 background cores): the sampler keeps it apart, per second,
    and the store gives it back per run."""
    import time
    from events.store import Store
    from experiments.calibrate import BackgroundSampler, save_background, steal_of
    ticks = iter(range(10_000))
    monkeypatch.setattr(BackgroundSampler, "_stolen", staticmethod(lambda: 0.05 * next(ticks)))
    with BackgroundSampler(every_s=0.1) as smp:
        deadline = time.monotonic() + 5.0
        while len(smp.steal) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(smp.steal) >= 3
    # 0.05 s stolen per sample interval of ~0.1 s (at least that long: a wait never returns early)
    assert all(0.0 < v <= 0.5 + 1e-9 for v in smp.steal), smp.steal
    with Store(":memory:") as st:
        save_background(st, "run-1", smp)
        assert steal_of(st, "run-1") == pytest.approx(smp.steal_mean)
        assert steal_of(st, "no-such-run") is None

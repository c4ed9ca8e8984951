"""timeouts: Chen-Toueg-Aguilera QoS on synthetic gap samples, phi via the coordinator's detector,
gap classification from events, ordering refusals as one line, a small sim-backed recommendation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from coordinator.detector import suspicion_delay
from coordinator.settings import LEVELS, check
from experiments.cli import main
from experiments.timeouts import (candidates, check_setting, classify_gaps, phi_timeout, qos, recommend,
                                  tail_prob)
from shardtwin.errors import ConfigError
from shardtwin.vocab import FaultToleranceLevel as L
from sim.profile import DEFAULT_PROFILE


def test_qos_constant_gaps():
    q = qos([1000.0] * 50, 3000.0)
    assert q.p_exceed == 0.0 and q.mistake_rate_per_h == 0.0
    assert q.detection_ms == pytest.approx(3000.0 - 500.0)     # E[A] = E[g^2] / 2E[g] = 500


def test_qos_uniform_gaps_age_and_rate():
    g = np.linspace(900.0, 1100.0, 2001)
    q = qos(g, 1050.0)
    age = np.mean(g ** 2) / (2 * np.mean(g))
    assert age == pytest.approx(500.0 + 200.0 ** 2 / 12 / 2000.0, rel=1e-3)
    assert q.detection_ms == pytest.approx(1050.0 - age)
    assert q.p_exceed == pytest.approx(0.25, abs=1e-3)
    assert q.mistake_rate_per_h == pytest.approx(3600e3 / 1000.0 * 0.25, rel=1e-2)


def test_exponential_tail_beyond_the_data():
    rng = np.random.default_rng(1)
    g = 1000.0 + rng.exponential(50.0, 20000)
    for t in (1100.0, 1300.0, 1500.0):     # beyond the 80% quantile: the POT tail ~ true exp tail
        assert tail_prob(g, t) == pytest.approx(np.exp(-(t - 1000.0) / 50.0), rel=0.1)
    assert tail_prob(g, 1010.0) == pytest.approx(np.mean(g > 1010.0))
    assert qos(g, 5000.0).mistake_rate_per_h < 1e-20


def test_phi_timeout_is_the_coordinators():
    gaps = [1000.0, 1020.0, 980.0, 1100.0, 950.0]
    s = dataclasses.replace(LEVELS[L.HIGH], heartbeat_interval_ms=1000.0, detector_timeout_ms=10_000.0)
    assert phi_timeout(gaps, s) == suspicion_delay(gaps, s)
    higher = dataclasses.replace(s, phi_threshold=12.0)
    assert phi_timeout(gaps, higher) > phi_timeout(gaps, s)


def test_classify_gaps_idle_load_pressure_and_loads_excluded():
    ev = [dict(t_ms=t, kind=k, browser="c-0", detail=d) for t, k, d in [
        (0, "browser_ready", None), (0, "shard_load_started", None), (500, "heartbeat_received", None),
        (3000, "shard_loaded", None), (3100, "heartbeat_received", None), (4100, "heartbeat_received", None),
        (4200, "shard_started", None), (4900, "shard_completed", None), (5400, "heartbeat_received", None),
        (5500, "fault_injected", json.dumps({"fault": "memory_pressure"})), (6500, "heartbeat_received", None),
        (7600, "heartbeat_received", None)]]
    got = classify_gaps(ev)
    assert got == {"idle": [1000.0], "load": [1300.0], "pressure": [1100.0, 1100.0], "startup": [500.0]}


def test_ordering_refusals_are_one_line_reasons():
    s = dataclasses.replace(LEVELS[L.MEDIUM], heartbeat_interval_ms=1000.0, detector_timeout_ms=500.0)
    with pytest.raises(ConfigError, match="heartbeat interval .* must be shorter than the detector timeout"):
        check(s)
    extra = {"idle": [0.0, 5.0, 10.0, 20.0, 50.0]}
    line = check_setting("1000:500", extra, L.MEDIUM)
    assert "\n" not in line and "refused" in line and "heartbeat interval < detector timeout < request timeout" in line
    line = check_setting("200:3000", extra, L.MEDIUM, request_timeout_ms=2000.0)
    assert "refused: detector timeout (3000 ms) must be shorter than the request timeout (2000 ms)" in line
    assert "false/h" in check_setting("200:1000", extra, L.MEDIUM)
    cands, refused = candidates(L.MEDIUM, extra, request_timeout_ms=2500.0, intervals=(500.0,))
    assert refused and all(c.settings.detector_timeout_ms < 2500.0 for c in cands)


def test_recommendation_within_budget_from_sim(capsys):
    rng = np.random.default_rng(0)
    extra = {"idle": list(rng.normal(0.0, 20.0, 300)), "load": list(np.abs(rng.normal(0.0, 150.0, 300)))}
    recs = recommend(extra, 1.0, DEFAULT_PROFILE, [L.MEDIUM], intervals=(200.0, 500.0),
                     strategies=("restart", "failover"))
    r = recs["medium"]
    assert r["false_suspicions_per_h"] <= 1.0 and r["sim_failed"] == 0
    assert r["heartbeat_interval_ms"] < r["detector_timeout_ms"] < 120_000.0
    assert r["strategy"] in ("restart", "failover") and r["sim_mean_outage_ms"] < 10_000
    assert "medium:" in capsys.readouterr().out


def test_command_without_gaps_is_one_line(tmp_path, capsys):
    assert main(["timeouts", "--db", str(tmp_path / "e.duckdb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--collect" in err


def test_a_busy_page_starts_its_silence_late_not_early():
    """A hang sent to a page half busy with 10 ms shard runs (an answer every 20 ms): the page ends the
    run in progress (5 ms on average) and answers before it hangs, and when idle its last sign of life
    is an answer ~10 ms old, not a heartbeat half an interval old: detection = timeout + 0.5 * 5 -
    0.5 * 10, not timeout - the heartbeat recurrence."""
    from experiments.timeouts import page_activity
    ev = []
    for i in range(100):
        t0 = 20.0 * i
        ev += [{"t_ms": t0, "kind": "shard_started", "browser": "chromium-0", "request_id": i, "shard": 0, "attempt": 0},
               {"t_ms": t0 + 10.0, "kind": "shard_completed", "browser": "chromium-0", "request_id": i, "shard": 0,
                "attempt": 0}]
    busy, residual, age = page_activity(ev, "chromium-0", 2000.0)
    assert busy == pytest.approx(0.5) and residual == pytest.approx(5.0) and age == pytest.approx(10.0)

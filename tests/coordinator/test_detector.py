"""Failure detectors (coordinator/detector.py): fixed timeout vs phi-accrual suspicion times."""

from __future__ import annotations

from dataclasses import replace
from statistics import NormalDist

import pytest

from coordinator.detector import MIN_SAMPLES, gap_stats, phi, suspicion_delay
from coordinator.settings import resolve
from events import records as r
from shardtwin.vocab import FaultToleranceLevel as L

HIGH = resolve(L.HIGH)                       # phi, heartbeat 250 ms, bound 1500 ms, threshold 8
FIXED = replace(HIGH, detector="fixed")
Z8 = NormalDist().inv_cdf(1 - 1e-8)


def test_fixed_is_the_timeout_whatever_the_history():
    assert suspicion_delay([], FIXED) == 1500.0
    assert suspicion_delay([250.0] * 50, FIXED) == 1500.0
    assert suspicion_delay([10.0, 5000.0, 3.0], FIXED) == 1500.0


def test_phi_without_history_waits_for_the_bound():
    """A page with fewer than MIN_SAMPLES gaps since it became ready or its last load ended is
    suspected at the detector's upper bound: its window says nothing about a page starting up or
    running a new session's first runs (measured at the high level: 12 false suspicions in 24 real
    runs, each within a second of ready, 601-926 ms silent, or right after a failover load, ~390 ms
    silent against a window of idle gaps)."""
    assert gap_stats([250.0] * (MIN_SAMPLES - 1), 250.0) == (250.0, 62.5)
    assert suspicion_delay([], HIGH) == HIGH.detector_timeout_ms
    assert suspicion_delay([250.0] * (MIN_SAMPLES - 1), HIGH) == HIGH.detector_timeout_ms
    # a full window from before a load: the gaps since it ended decide
    assert suspicion_delay([250.0] * 20, HIGH, settled_gaps=MIN_SAMPLES - 1) == HIGH.detector_timeout_ms
    assert suspicion_delay([250.0] * 20, HIGH, settled_gaps=MIN_SAMPLES) == pytest.approx(250.0 + Z8 * 25.0)


def test_phi_regular_heartbeats_suspect_early():
    d = suspicion_delay([250.0] * 20, HIGH)
    assert d == pytest.approx(250.0 + Z8 * 25.0)            # std floored at mean / 10
    assert 250.0 < d < suspicion_delay([], HIGH) == FIXED.detector_timeout_ms
    assert phi(d, [250.0] * 20, 250.0) == pytest.approx(8.0, rel=1e-6)


def test_phi_jitter_delays_suspicion_and_the_timeout_bounds_it():
    jittery = [150.0, 350.0] * 10
    mean, std = gap_stats(jittery, 250.0)
    assert mean == pytest.approx(250.0)
    assert suspicion_delay(jittery, HIGH) == pytest.approx(250.0 + Z8 * std)
    assert suspicion_delay([250.0] * 20, HIGH) < suspicion_delay(jittery, HIGH)
    assert suspicion_delay([10.0, 900.0] * 10, HIGH) == HIGH.detector_timeout_ms
    # a lower threshold suspects sooner
    assert suspicion_delay(jittery, replace(HIGH, phi_threshold=3.0)) < suspicion_delay(jittery, HIGH)


def test_phi_is_monotone_in_silence():
    gaps = [240.0, 260.0, 250.0, 255.0]
    values = [phi(t, gaps, 250.0) for t in (0.0, 200.0, 250.0, 300.0, 400.0)]
    assert values == sorted(values) and values[0] < 0.01


def _suspected_after_hang(fake, cfg_for, settings, hb_gap=None):
    drv = fake(cfg_for(replace(settings, strategy="failover")), hb_gap=hb_gap)
    drv.clients(concurrency=1, deadline_ms=6000.0).hang(2000.0, "firefox-1")
    drv.run()
    sus = [x for x in drv.records(r.FailureSuspected) if x.browser == "firefox-1"]
    assert len(sus) == 1
    ready = next(x.t_ms for x in drv.records(r.BrowserReady) if x.browser == "firefox-1")
    beats = [ready] + [x.t_ms for x in drv.records(r.HeartbeatReceived)
                       if x.browser == "firefox-1" and x.t_ms <= sus[0].t_ms]
    # Liveness evidence = heartbeats and any answer of the page (piggybacked heartbeats).
    answers = [x.t_ms for x in drv.records((r.ShardCompleted, r.ShardLoaded))
               if x.browser == "firefox-1" and x.t_ms <= sus[0].t_ms]
    assert sus[0].t_ms - max(beats[-1], *answers) == pytest.approx(sus[0].silence_ms)
    return sus[0], beats


@pytest.mark.parametrize("detector", ["fixed", "phi"])
def test_hang_is_suspected_at_the_detector_time(fake, cfg_for, detector):
    s = HIGH if detector == "phi" else FIXED
    sus, beats = _suspected_after_hang(fake, cfg_for, s)
    assert sus.detector == detector
    expected = 1500.0 if detector == "fixed" else 250.0 + Z8 * 25.0
    assert sus.silence_ms == pytest.approx(expected)


def test_phi_detects_regular_heartbeats_faster_than_fixed(fake, cfg_for):
    phi_sus, _ = _suspected_after_hang(fake, cfg_for, HIGH)
    fixed_sus, _ = _suspected_after_hang(fake, cfg_for, FIXED)
    assert phi_sus.t_ms < fixed_sus.t_ms
    assert fixed_sus.t_ms - phi_sus.t_ms == pytest.approx(1500.0 - (250.0 + Z8 * 25.0))


def test_phi_with_jittery_heartbeats_waits_longer_but_not_past_the_bound(fake, cfg_for):
    jitter = lambda b, n: 150.0 if n % 2 else 350.0   # noqa: E731
    sus, beats = _suspected_after_hang(fake, cfg_for, HIGH, hb_gap=jitter)
    # The phi window skips the gap from ready to the first heartbeat (startup, not rhythm).
    gaps = [b - a for a, b in zip(beats[1:], beats[2:])]
    assert sus.silence_ms == pytest.approx(suspicion_delay(gaps[-100:], HIGH))
    assert 250.0 + Z8 * 25.0 < sus.silence_ms <= HIGH.detector_timeout_ms


def test_no_false_suspicion_with_steady_heartbeats(fake, cfg_for):
    drv = fake(cfg_for(HIGH)).clients(concurrency=2, deadline_ms=5000.0)
    drv.run()
    assert not drv.records(r.FailureSuspected) and not drv.records(r.FailureDetected)


def test_a_gap_that_a_shard_load_overlapped_stays_out_of_the_phi_window(cfg_for, rebuilt):
    """Chromium's first load blocks its heartbeats for ~2 s: the gap from the last beat during the
    load to the first beat after it is not rhythm (found in a real verify run: a 1,899 ms gap in
    the window made phi wait 2,032 ms instead of ~450 ms)."""
    cfg = cfg_for(HIGH)
    b = "chromium-0"
    log = [r.BrowserLaunchRequested(0.0, browser=b, kind="chromium", incarnation=1),
           r.BrowserReady(0.0, browser=b, launch_ms=500.0), r.HeartbeatReceived(100.0, browser=b),
           r.ShardLoadStarted(150.0, shard=0, browser=b), r.HeartbeatReceived(350.0, browser=b),
           r.ShardLoaded(2000.0, shard=0, browser=b, load_ms=1850.0), r.HeartbeatReceived(2100.0, browser=b),
           r.HeartbeatReceived(2350.0, browser=b), r.HeartbeatReceived(2610.0, browser=b)]
    st = rebuilt(cfg, log)
    assert st.browsers[b].gaps == [250.0, 260.0]


def test_the_gaps_after_a_load_count_afresh(cfg_for, rebuilt):
    """A load ends: the page's phi window keeps its gaps, but only the gaps after the load count
    towards trusting it (a Chromium standby that took a failover load was suspected 387 ms into the
    stall of its first runs, in 5 of 12 real collects, and its shard failed over a second time)."""
    cfg = cfg_for(HIGH)
    b = "chromium-0"
    beats = [r.HeartbeatReceived(100.0 + 250.0 * i, browser=b) for i in range(6)]      # 5 gaps
    log = [r.BrowserLaunchRequested(0.0, browser=b, kind="chromium", incarnation=1),
           r.BrowserReady(0.0, browser=b, launch_ms=500.0), *beats,
           r.ShardLoadStarted(1400.0, shard=0, browser=b), r.ShardLoaded(2400.0, shard=0, browser=b, load_ms=1000.0),
           r.HeartbeatReceived(2450.0, browser=b), r.HeartbeatReceived(2700.0, browser=b)]
    st = rebuilt(cfg, log)
    bs = st.browsers[b]
    assert len(bs.gaps) == 6 and bs.settled_gaps == 1       # the gap the load overlapped is left out
    assert suspicion_delay(bs.gaps, HIGH, bs.settled_gaps) == HIGH.detector_timeout_ms
    st = rebuilt(cfg, log + [r.HeartbeatReceived(2950.0, browser=b), r.HeartbeatReceived(3200.0, browser=b)])
    assert st.browsers[b].settled_gaps == MIN_SAMPLES
    assert suspicion_delay(st.browsers[b].gaps, HIGH, st.browsers[b].settled_gaps) < 500.0

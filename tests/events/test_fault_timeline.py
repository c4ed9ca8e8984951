"""events.metrics.fault_timeline and the `fault_recovery` SQL view (events/views.py) pair each
injected fault with its detection and recovery by one rule: a stored run gives the same rows
both ways, on hand-made logs and on simulated runs (repeated faults on one browser, retries
that fail before one succeeds, undetected faults)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from events.metrics import fault_timeline
from events.scenario import FaultSpec, Scenario, Tolerance, Workload
from events.schema import Event, EventKind as K, EventLog
from events.store import Store
from experiments.runner import run_sim_stored
from shardtwin.vocab import FaultToleranceLevel, RecoveryStrategy, Source
from sim.profile import DEFAULT_PROFILE

B = "firefox-1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("fault_timeline") / "db.duckdb") as s:
        yield s


def _view_rows(store: Store, run_id: str) -> list[tuple]:
    rows = store.query("SELECT type, browser, injected_ms, detected_ms, detection_ms, recovery_ms, outage_ms,"
                       " success FROM fault_recovery WHERE run_id = ? AND browser IS NOT NULL"
                       " ORDER BY fault_seq", [run_id])
    return [tuple(r.values()) for r in rows]


def _timeline_rows(log: EventLog) -> list[tuple]:
    """fault_timeline in the view's columns: success is NULL when no recovery event was chosen."""
    return [(f["fault"], f["browser"], f["injected_ms"], f["detected_ms"], f["detection_ms"], f["recovery_ms"],
             f["outage_ms"], None if f["outage_ms"] is None else f["recovered"]) for f in fault_timeline(log)]


def _stored_log(store: Store, rows: list[Event]) -> EventLog:
    run_id = store.begin_run("sim", Scenario("all-MiniLM-L6-v2"))
    log = EventLog(run_id, Source.SIM, tuple(e.with_seq(i) for i, e in enumerate(rows)))
    store.finish_run(run_id, log)
    return log


def _agree(store: Store, log: EventLog) -> list[tuple]:
    mine = _timeline_rows(log)
    assert mine == _view_rows(store, log.run_id)
    return mine


# --- hand-made logs where the rule decides --------------------------------------------------

def _crash(t: float, browser: str = B) -> Event:
    return Event.make(K.FAULT_INJECTED, t, browser=browser, fault="browser_crash")


def test_a_retry_that_fails_before_one_succeeds_is_a_recovery(store):
    """The first RECOVERY_COMPLETED in the window wins over an earlier RECOVERY_FAILED, whatever
    request ids they carry; recovery_ms counts from the detection, not the event's value."""
    e = Event.make
    log = _stored_log(store, [
        _crash(100), e(K.FAILURE_DETECTED, 120, browser=B, request_id=1, cause="shard_error"),
        e(K.RECOVERY_FAILED, 150, browser=B, request_id=1, reason="no retries left"),
        e(K.FAILURE_DETECTED, 160, browser=B, request_id=2, cause="shard_error"),
        e(K.RECOVERY_COMPLETED, 400, browser=B, request_id=2, action="retry", value=240.0)])
    [f] = fault_timeline(log)
    assert (f["detection_ms"], f["recovered"], f["recovery_ms"], f["outage_ms"], f["action"], f["cause"]) == \
        (20.0, True, 280.0, 300.0, "retry", "shard_error")
    _agree(store, log)


def test_a_failed_outcome_is_the_last_recovery_failed(store):
    e = Event.make
    log = _stored_log(store, [
        _crash(100), e(K.FAILURE_DETECTED, 120, browser=B), e(K.RECOVERY_FAILED, 300, browser=B, reason="a"),
        e(K.RECOVERY_FAILED, 500, browser=B, reason="b")])
    [f] = fault_timeline(log)
    assert (f["recovered"], f["recovery_ms"], f["outage_ms"]) == (False, 380.0, 400.0)
    _agree(store, log)


def test_repeated_faults_on_one_browser_each_own_their_window(store):
    """A second fault before the first is detected takes the detection and the recovery; the
    first has neither. Events on other browsers never count."""
    e = Event.make
    log = _stored_log(store, [
        _crash(100), _crash(110, "chromium-0"), e(K.FAILURE_DETECTED, 130, browser="chromium-0"), _crash(200),
        e(K.FAILURE_DETECTED, 220, browser=B), e(K.RECOVERY_COMPLETED, 500, browser="chromium-0", value=370.0),
        e(K.RECOVERY_COMPLETED, 600, browser=B, action="failover", value=380.0),
        _crash(700), e(K.FAILURE_DETECTED, 720, browser=B)])
    assert _agree(store, log) == [
        ("browser_crash", B, 100.0, None, None, None, None, None),
        ("browser_crash", "chromium-0", 110.0, 130.0, 20.0, 370.0, 390.0, True),
        ("browser_crash", B, 200.0, 220.0, 20.0, 380.0, 400.0, True),
        ("browser_crash", B, 700.0, 720.0, 20.0, None, None, None)]


def test_an_undetected_fault_can_still_end_in_a_recovery(store):
    """No FAILURE_DETECTED in the window: the outcome is looked for after the injection and
    recovery_ms counts from it. A fault with no browser is not in the timeline."""
    e = Event.make
    log = _stored_log(store, [
        Event.make(K.FAULT_INJECTED, 50, fault="browser_crash"), _crash(100),
        e(K.RECOVERY_COMPLETED, 150, browser=B, action="reconnect", value=999.0)])
    [f] = fault_timeline(log)
    assert (f["detected_ms"], f["recovered"], f["recovery_ms"], f["outage_ms"], f["action"]) == \
        (None, True, 50.0, 50.0, "reconnect")
    _agree(store, log)


# --- simulated runs ---------------------------------------------------------------------------

def _sim(store: Store, s: Scenario) -> EventLog:
    sr = run_sim_stored(store, s, DEFAULT_PROFILE)
    sr.finish()
    return sr.run.log


def _burst(n: int, at_ms: float, shard: int) -> tuple[FaultSpec, ...]:
    """n shard errors at once: queued on one page, they are consumed in one fault window."""
    return tuple(FaultSpec("shard_error", at_ms, shard=shard) for _ in range(n))


def test_sim_retries_that_fail_before_one_succeeds(store):
    s = Scenario("all-MiniLM-L6-v2", shards=2, fault_tolerance_level="medium", recovery_strategy="retry",
                 workload=Workload(kind="closed_loop", concurrency=2, duration_s=3.0),
                 faults=_burst(3, 500.0, 1), tolerance=Tolerance(max_retries=1), seed=1)
    log = _sim(store, s)
    last = max(e.seq for e in log.events if e.kind == K.FAULT_INJECTED)
    ends = [e.kind for e in log.events if e.seq > last and e.kind in (K.RECOVERY_FAILED, K.RECOVERY_COMPLETED)]
    assert ends[:2] == [K.RECOVERY_FAILED, K.RECOVERY_COMPLETED]      # one request gave up, another recovered
    rows = _agree(store, log)
    assert [r[7] for r in rows] == [None, None, True]
    assert fault_timeline(log)[-1]["action"] == "retry"


@pytest.mark.parametrize("s", [
    Scenario("bert-base-uncased", shards=3, fault_tolerance_level="medium", mtbf_s=1.0,
             workload=Workload(kind="closed_loop", concurrency=3, duration_s=6.0)),
    Scenario("bert-base-uncased", shards=3, fault_tolerance_level="high", seed=4,
             workload=Workload(kind="closed_loop", concurrency=3, duration_s=4.0),
             faults=(FaultSpec("cascade", 300.0, shard=0, interval_ms=100.0),
                     FaultSpec("slow", 200.0, shard=1, factor=2.0, duration_ms=300.0))),
], ids=["mtbf", "cascade"])
def test_sim_repeated_and_undetected_faults(store, s):
    log = _sim(store, s)
    rows = _agree(store, log)
    assert max(Counter(r[1] for r in rows).values()) > 1          # a browser failed more than once
    assert any(r[3] is None for r in rows)                        # a fault nobody detected


@st.composite
def _faults(draw, shards: int) -> tuple[FaultSpec, ...]:
    out: list[FaultSpec] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["browser_crash", "shard_error", "disconnect", "hang", "slow",
                                     "memory_pressure", "cascade"]))
        at = draw(st.sampled_from([0.0, 200.0, 600.0, 1500.0]))
        shard = draw(st.integers(0, shards - 1))
        if kind == "shard_error":
            out += _burst(draw(st.integers(1, 3)), at, shard)
            continue
        kw: dict = {"cascade": {"interval_ms": draw(st.sampled_from([50.0, 300.0]))},
                    "disconnect": {"reconnect_delay_ms": draw(st.none() | st.sampled_from([100.0, 2000.0]))},
                    "hang": {"duration_ms": draw(st.none() | st.sampled_from([300.0, 3000.0]))},
                    "slow": {"factor": 4.0, "duration_ms": 1000.0},
                    "memory_pressure": {"level": draw(st.sampled_from(["medium", "high"])), "duration_ms": 1000.0},
                    }.get(kind, {})
        out.append(FaultSpec(kind, at, shard=shard, **kw))
    return tuple(out)


@st.composite
def _scenarios(draw) -> Scenario:
    shards = draw(st.integers(2, 4))
    return Scenario(
        draw(st.sampled_from(["all-MiniLM-L6-v2", "bert-base-uncased"])), shards=shards,
        fault_tolerance_level=draw(st.sampled_from(list(FaultToleranceLevel))),
        recovery_strategy=draw(st.none() | st.sampled_from(list(RecoveryStrategy))),
        workload=Workload(kind="closed_loop", concurrency=draw(st.integers(1, 3)),
                          duration_s=float(draw(st.integers(2, 4)))),
        faults=draw(_faults(shards)), tolerance=Tolerance(max_retries=draw(st.none() | st.integers(0, 2))),
        mtbf_s=draw(st.none() | st.sampled_from([1.0, 2.0])), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=_scenarios())
def test_random_sim_runs_agree_with_the_view(store, s):
    _agree(store, _sim(store, s))

"""Hypothesis: random small scenarios through sim.run.run_scenario keep the run invariants."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from events.scenario import FaultSpec, Scenario, Workload
from models.partition import make_plan
from shardtwin.errors import PlanError
from shardtwin.vocab import FailureType as F, FaultToleranceLevel, RecoveryStrategy, ShardType
from sim.run import run_scenario

MODELS = ("all-MiniLM-L6-v2", "bert-base-uncased")


@st.composite
def faults(draw, shards: int, n_browsers: int):
    kind = draw(st.sampled_from([k for k in F]))
    at = draw(st.floats(0.0, 3000.0, allow_nan=False).map(lambda x: round(x, 1)))
    if kind in (F.SHARD_ERROR, F.CASCADE):
        shard, browser = draw(st.integers(0, shards - 1)), None
    elif draw(st.booleans()):
        shard, browser = draw(st.integers(0, shards - 1)), None
    else:
        shard, browser = None, str(draw(st.integers(0, n_browsers - 1)))
    kw: dict = {}
    if kind == F.DISCONNECT:
        kw["reconnect_delay_ms"] = draw(st.none() | st.floats(10.0, 4000.0))
    if kind in (F.HANG, F.SLOW, F.MEMORY_PRESSURE):
        kw["duration_ms"] = draw(st.none() | st.floats(50.0, 4000.0))
    if kind == F.SLOW:
        kw["factor"] = draw(st.floats(1.5, 8.0))
    if kind == F.MEMORY_PRESSURE:
        kw["level"] = draw(st.sampled_from(["low", "medium", "high"]))
    if kind == F.CASCADE:
        kw["interval_ms"] = draw(st.floats(50.0, 1500.0))
    return FaultSpec(kind, at, shard=shard, browser=browser, **kw)


@st.composite
def scenarios(draw):
    model = draw(st.sampled_from(MODELS))
    shards = draw(st.integers(1, 4))
    shard_type = draw(st.sampled_from(list(ShardType)))
    try:
        make_plan(model, shards, shard_type)
    except PlanError:
        assume(False)
    n_browsers = draw(st.integers(1, 4)) if draw(st.booleans()) else shards
    browsers = tuple(draw(st.sampled_from(["chromium", "firefox"])) for _ in range(n_browsers)) \
        if n_browsers != shards or draw(st.booleans()) else ()
    n_b = len(browsers) or shards
    if draw(st.booleans()):
        workload = Workload(iterations=draw(st.integers(3, 15)))
    else:
        # think_ms 0 included: a closed loop whose shard became unavailable must still end
        # (tests/sim/test_run.py::test_closed_loop_with_an_unavailable_shard_ends).
        workload = Workload(kind="closed_loop", concurrency=draw(st.integers(2, 4)),
                            duration_s=float(draw(st.integers(2, 5))),
                            think_ms=draw(st.sampled_from([0.0, 10.0, 50.0])))
    return Scenario(
        model, shards=shards, shard_type=shard_type, browsers=browsers,
        placement=draw(st.sampled_from(["round_robin", "capacity", "specialization", "history"])),
        fault_tolerance_level=draw(st.sampled_from(list(FaultToleranceLevel))),
        recovery_strategy=draw(st.none() | st.sampled_from(list(RecoveryStrategy))),
        workload=workload, faults=tuple(draw(st.lists(faults(shards, n_b), max_size=3))),
        seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_keep_the_run_invariants(invariants, s):
    run = run_scenario(s)
    invariants(run, s)

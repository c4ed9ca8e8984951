"""Run one scenario in the simulator: scenario + profile + seed -> event log (+ result).

Rules: pure function of its inputs (byte-identical logs for identical inputs; tested).
The log holds the compiled input events first, then everything the run did, with
`source = 'sim'`. Times of run events are ms since the run started (launch included).
"""

from __future__ import annotations

import gc
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Iterator

from coordinator.config import config_for_profile, placement_record
from coordinator.core import Coordinator
from events.records import RunStarted, to_events
from events.scenario import Scenario
from events.scenario_compile import compile_scenario
from events.schema import EventLog
from models.partition import ShardPlan, make_plan
from shardtwin.vocab import Source
from sim.profile import DEFAULT_PROFILE, Profile
from sim.world import SimWorld


@dataclass(frozen=True, slots=True)
class SimRun:
    log: EventLog
    plan: ShardPlan
    coordinator: Coordinator
    sim_events: int


@lru_cache(maxsize=256)
def _plan(model: str, shards: int, shard_type: str, batch: int, seq: int) -> ShardPlan:
    return make_plan(model, shards, shard_type, batch_size=batch, seq_len=seq)


def plan_for(s: Scenario) -> ShardPlan:
    return _plan(s.model, s.shards, str(s.shard_type), s.workload.batch_size, s.workload.seq_len)


def run_scenario(s: Scenario, profile: Profile = DEFAULT_PROFILE, seed: int | None = None,
                 run_id: str | None = None, history_speed: dict | None = None,
                 time_limit_ms: float | None = None, placement: dict | None = None) -> SimRun:
    """`time_limit_ms` (default: the world's, one simulated hour) aborts the run when reached.
    `placement`: decide from this placement record (a real run's) instead of the profile's speeds."""
    seed = s.seed if seed is None else seed
    plan = plan_for(s)
    cfg = config_for_profile(s, plan, profile, history_speed, placement)
    coord = Coordinator(cfg)
    coord._commit(RunStarted(0.0, engine="sim"))
    inputs = list(compile_scenario(s))
    plans = partial(_plan, s.model, s.shards, str(s.shard_type))   # (batch, seq) -> plan, cached

    with _fewer_gc_passes():
        limit = {} if time_limit_ms is None else {"time_limit_ms": time_limit_ms}
        world = SimWorld(coord, plan, plans, profile, str(s.backend), seed, inputs, mtbf_s=s.mtbf_s, **limit)
        world.run()
        events = (*inputs, *to_events(coord.log, len(inputs)))
    run_id = run_id or f"sim-{uuid.UUID(int=_stable_int(s, seed, profile, placement)).hex[:16]}"
    return SimRun(EventLog(run_id, Source.SIM, events), plan, coord, world.sim_events)


@contextmanager
def _fewer_gc_passes(gen0: int = 20_000) -> Iterator[None]:
    """A run allocates ~10^4 short-lived records, events and SimPy entries; with the default
    gen-0 threshold (700) the cyclic collector runs dozens of times per run and rescans the
    growing log each time (about a tenth of a run's CPU). Collections still happen, just
    less often; the previous thresholds are restored afterwards."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], gen0), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _stable_int(s: Scenario, seed: int, profile: Profile, placement: dict | None = None) -> int:
    import hashlib
    import json
    from events.scenario_file import scenario_hash
    key = f"{scenario_hash(s)}|{seed}|{profile.name}|{profile.version}"
    if placement:
        key += "|" + json.dumps(placement, sort_keys=True)
    h = hashlib.sha256(key.encode()).hexdigest()
    return int(h[:32], 16)


def sim_result(run: SimRun, scenario: Scenario, profile: Profile, **extra) -> dict:
    """The seed result JSON of a simulated run, with what every sim result says about itself."""
    from events.metrics import seed_result
    return seed_result(run.log, scenario, run.plan, run.coordinator.s,
                       baseline_mb=min(b.baseline_mb for b in profile.browsers.values()),
                       extra={"profile": {"name": profile.name, "version": profile.version,
                                          "calibrated": profile.calibrated},
                              "weights": "none (simulated: analytic cost model)",
                              "placement": placement_record(run.coordinator.cfg),
                              "sim_events": run.sim_events, **extra})

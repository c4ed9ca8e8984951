"""Run one scenario for real: scenario -> exported shards -> browsers -> event log (source=real).

Rules: the same coordinator configuration as the simulator (coordinator.config.config_for_profile),
under a profile the caller passes (real/ never imports sim/: experiments choose it, by default
sim.profile.DEFAULT_PROFILE);
the log holds the compiled input events first, then everything the run did. Whatever
happens (error, Ctrl-C), every browser is ended and the events so far are returned.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from coordinator.config import config_for_profile
from coordinator.core import Coordinator
from events.records import RunStarted, to_event
from events.scenario import Scenario
from events.scenario_compile import compile_scenario
from events.schema import EventLog, numbered
from models.partition import ShardPlan, make_plan
from real.driver import RealDriver
from real.remote import RemoteOptions
from real.shards import ShardSet, prepare_shards
from shardtwin.vocab import Source


class PlacementProfile(Protocol):
    """What placement reads from a calibration profile (sim.profile.Profile is one)."""
    browsers: Mapping[str, Any]      # each with memory_budget_mb

    def gflops(self, kind: str, backend: str) -> float: ...


@dataclass
class RealRun:
    log: EventLog
    plan: ShardPlan
    coordinator: Coordinator
    shards: ShardSet
    aborted: str | None
    joins: list[dict] | None = None   # join URLs announced for remote slots (real/remote.py)


def run_real(s: Scenario, run_id: str | None = None, headed: bool = False, launcher: str = "auto",
             timeout_s: float = 600.0, on_log=None, on_coordinator=None,
             history_speed: dict | None = None, on_server=None, remote: RemoteOptions | None = None,
             *, profile: PlacementProfile, texts: tuple[str, ...] | None = None) -> RealRun:
    """`profile`: whose compute rates and memory budget configure placement, exactly as the
    simulator configures its coordinator under that profile. `texts`: the sentences the requests
    carry (default: real.shards.SENTENCES)."""
    plan = make_plan(s.model, s.shards, s.shard_type, batch_size=s.workload.batch_size, seq_len=s.workload.seq_len)
    shards = prepare_shards(plan, seed=s.seed, texts=texts)
    coord = Coordinator(config_for_profile(s, plan, profile, history_speed))
    coord._commit(RunStarted(0.0, engine="real"))
    if on_coordinator is not None:
        on_coordinator(coord)   # read-only access for observers (tests, progress)
    inputs = list(compile_scenario(s))
    driver = RealDriver(coord, shards, inputs, backend=str(s.backend), headed=headed, launcher=launcher,
                        run_timeout_s=timeout_s, on_server=on_server, remote=remote or RemoteOptions())
    run_id = run_id or uuid.uuid4().hex
    try:
        asyncio.run(driver.run())
    finally:
        log = EventLog(run_id, Source.REAL, numbered([*inputs, *(to_event(rec) for rec in coord.log)]))
        if on_log is not None:
            on_log(log)
    return RealRun(log, plan, coord, shards, driver.aborted, list(driver.joins))

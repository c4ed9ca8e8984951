"""Compile a Scenario into its input event log, and rebuild the Scenario from it.

Rules:
- `compile_scenario` is a pure function of the scenario: same scenario, same events.
- t_ms is relative to the workload start (all browsers ready). Events are ordered by
  (t_ms, kind priority, generation order) and then numbered seq 0..n-1. Priority at
  equal times: SCENARIO_COMPILED, CLIENTS_SCHEDULED, FAULT_SCHEDULED, REQUEST_SCHEDULED,
  WORKLOAD_DEADLINE (a fault at t applies before a request arriving at t).
- Randomness: open-loop arrivals use stream ARRIVAL_STREAM (= 0) of
  `numpy.random.SeedSequence(scenario.seed).spawn(...)`. Other engines drawing from the
  same seed must use spawn indices >= 1 (child i's spawn key is (i,) whatever n is).
- Faults: one FAULT_SCHEDULED each (detail = the fault's dict plus `fault`, its index in
  scenario.faults; the `browser` column holds the resolved browser id, e.g. firefox-1). A cascade becomes one browser_crash per shard from `shard`
  (detail `cascade: true`, `cascade_index` k) at at_ms + k * interval_ms.
  The mtbf random failure process is not expanded here (the simulator draws it).
- SCENARIO_COMPILED carries the canonical scenario dict, so `scenario_from_events`
  is lossless.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from events.schema import Event, EventKind, canonical_json, numbered
from events.scenario_types import FaultSpec, Scenario
from events.scenario_file import fault_to_dict, parse_scenario, scenario_hash, scenario_to_dict
from shardtwin.errors import InputError, ScenarioError
from shardtwin.vocab import FailureType, WorkloadKind

ARRIVAL_STREAM = 0

_PRIORITY = {
    EventKind.SCENARIO_COMPILED: 0,
    EventKind.CLIENTS_SCHEDULED: 1,
    EventKind.FAULT_SCHEDULED: 2,
    EventKind.REQUEST_SCHEDULED: 3,
    EventKind.WORKLOAD_DEADLINE: 4,
}


def _event(kind: EventKind, t_ms: float, detail: dict[str, Any] | None = None, **cols: Any) -> Event:
    return Event(kind, float(t_ms), 0, detail=canonical_json(detail) if detail else None, **cols)


def _arrival_times(s: Scenario) -> list[float]:
    w = s.workload
    horizon = w.duration_s * 1000.0
    period = 1000.0 / w.rate_per_s
    if w.arrival == "fixed":
        return [k * period for k in range(int(np.ceil(horizon / period))) if k * period < horizon]
    rng = np.random.default_rng(np.random.SeedSequence(s.seed).spawn(ARRIVAL_STREAM + 1)[ARRIVAL_STREAM])
    times: list[float] = []
    t = 0.0
    while True:
        t += float(rng.exponential(period))
        if t >= horizon:
            return times
        times.append(t)


def _workload_events(s: Scenario) -> list[Event]:
    w = s.workload
    shape = {"batch_size": w.batch_size, "seq_len": w.seq_len}
    if w.kind is WorkloadKind.ITERATIONS:
        return [_event(EventKind.CLIENTS_SCHEDULED, 0.0, {"total": w.iterations, **shape}, value=1.0)]
    deadline = _event(EventKind.WORKLOAD_DEADLINE, w.duration_s * 1000.0)
    if w.kind is WorkloadKind.CLOSED_LOOP:
        return [_event(EventKind.CLIENTS_SCHEDULED, 0.0, {"think_ms": w.think_ms, **shape},
                       value=float(w.concurrency)), deadline]
    arrivals = [_event(EventKind.REQUEST_SCHEDULED, t, shape, request_id=i)
                for i, t in enumerate(_arrival_times(s))]
    return [*arrivals, deadline]


def _fault_events(s: Scenario) -> list[Event]:
    out: list[Event] = []
    for i, f in enumerate(s.faults):
        d = fault_to_dict(f)
        if f.type is not FailureType.CASCADE:
            # browser column: the resolved browser id (shard targets resolve at placement).
            bid = None if f.browser is None else s.browser_ids()[s.resolve_browser(f.browser)]
            out.append(_event(EventKind.FAULT_SCHEDULED, f.at_ms, {**d, "fault": i},
                              shard=f.shard, browser=bid))
            continue
        count = f.count if f.count is not None else s.shards - f.shard
        for k in range(count):
            t = f.at_ms + k * f.interval_ms
            crash = fault_to_dict(FaultSpec(FailureType.BROWSER_CRASH, t, shard=f.shard + k))
            out.append(_event(EventKind.FAULT_SCHEDULED, t,
                              {**crash, "fault": i, "cascade": True, "cascade_index": k},
                              shard=f.shard + k))
    return out


def compile_scenario(s: Scenario) -> tuple[Event, ...]:
    """The ordered input event log of a scenario (see module rules)."""
    head = _event(EventKind.SCENARIO_COMPILED, 0.0,
                  {"hash": scenario_hash(s), "name": s.name, "scenario": scenario_to_dict(s)})
    raw = [head, *_workload_events(s), *_fault_events(s)]
    order = sorted(range(len(raw)), key=lambda i: (raw[i].t_ms, _PRIORITY[raw[i].kind], i))
    return numbered(raw[i] for i in order)


def scenario_from_events(events: Iterable[Event]) -> Scenario:
    """Rebuild the Scenario from the SCENARIO_COMPILED event of a log (lossless)."""
    for e in events:
        if e.kind == EventKind.SCENARIO_COMPILED:
            try:
                d = json.loads(e.detail or "")["scenario"]
            except (ValueError, KeyError, TypeError):
                raise InputError("scenario_compiled event has no scenario in its detail") from None
            return parse_scenario(d)
    raise InputError("event log has no scenario_compiled event")


def fault_from_event(e: Event) -> FaultSpec:
    """The FaultSpec a FAULT_SCHEDULED event stands for (cascade steps as browser_crash)."""
    if e.kind != EventKind.FAULT_SCHEDULED:
        raise ScenarioError("kind", str(e.kind), "fault_scheduled")
    d = {k: v for k, v in e.details().items() if k in FaultSpec.__dataclass_fields__}
    return FaultSpec(**d)

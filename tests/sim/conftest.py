"""Shared helpers for the simulator tests: folding a run's log and checking its invariants.

Fixtures hand out functions (pytest --import-mode=importlib cannot import a sibling module).
"""

from __future__ import annotations

import pytest

from coordinator.state import LAUNCHING, READY, apply, initial_state
from events import records as r
from events.scenario import compile_scenario
from events.schema import EventKind as K


def run_records(run, scenario) -> list[r.Record]:
    """The typed records the coordinator logged: the events after the compiled input prefix."""
    n = len(compile_scenario(scenario))
    events = run.log.events
    assert [e.kind for e in events[:n]] == [e.kind for e in compile_scenario(scenario)]
    assert events[n].kind == K.RUN_STARTED
    return [r.from_event(e) for e in events[n:]]


def check_run(run, scenario) -> None:
    """No request lost or duplicated; one primary per shard; work goes only to READY primaries;
    a primary is only ever placed on a ready-or-launching browser; settings ordered."""
    s = run.coordinator.s
    assert s.heartbeat_interval_ms < s.detector_timeout_ms < s.request_timeout_ms
    ev = run.log.events
    submitted = [e.request_id for e in ev if e.kind == K.REQUEST_SUBMITTED]
    ends = [e.request_id for e in ev if e.kind in (K.REQUEST_COMPLETED, K.REQUEST_FAILED)]
    assert len(submitted) == len(set(submitted)), "a request id submitted twice"
    assert sorted(ends) == sorted(submitted), "lost or duplicated request outcome"
    assert [e.kind for e in ev].count(K.RUN_FINISHED) == 1

    cfg = run.coordinator.cfg
    st = initial_state(cfg)
    primary: dict[int, set[str]] = {sh.index: set() for sh in cfg.shards}   # independent tracker
    for rec in run_records(run, scenario):
        if isinstance(rec, r.ShardPlaced) and rec.role == "primary":
            status = st.browsers[rec.browser].status
            assert status in (READY, LAUNCHING) or (status == "idle" and st.workload_started is None), \
                f"{rec} onto a {status} browser"
            primary[rec.shard] = {rec.browser}
        elif isinstance(rec, r.ShardLost):
            primary[rec.shard].discard(rec.browser)
        elif isinstance(rec, r.ShardStarted):
            assert st.shards[rec.shard].primary == rec.browser, f"{rec}: primary is {st.shards[rec.shard].primary}"
            assert st.browsers[rec.browser].status == READY, f"{rec}: browser {st.browsers[rec.browser].status}"
        apply(st, rec)
        for i, holders in primary.items():
            assert len(holders) <= 1
            assert st.shards[i].primary == (next(iter(holders)) if holders else None)


@pytest.fixture(scope="session")
def records_of():
    return run_records


@pytest.fixture(scope="session")
def invariants():
    return check_run

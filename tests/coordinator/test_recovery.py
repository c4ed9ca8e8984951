"""Recovery strategies x failure kinds, driven through the fake driver (no SimPy).

Setup for every case: 2 shards in a chain, shard 0 on chromium-0, shard 1 on firefox-1,
one standby (chromium-2) from the medium level's settings with the strategy swapped in.
Six requests from one client; the fault hits chromium-0 10 ms into the workload, while
request 0's shard 0 is running there.
"""

from __future__ import annotations

import pytest

from coordinator.settings import resolve
from events import records as r
from shardtwin.vocab import FaultToleranceLevel as L, RecoveryStrategy as RS

FAILED = ("failed",)
STANDBY = "chromium-2"
B0 = "chromium-0"

# failure kind -> strategy -> (recovered via action, shard 0 ends on) or FAILED
EXPECTED: dict[str, dict[RS, tuple]] = {
    "exit": {
        RS.NONE: FAILED, RS.RETRY: FAILED, RS.RECONNECT: FAILED,     # reconnect is skipped: the process is gone
        RS.RESTART: ("restart", B0), RS.FAILOVER: ("failover", STANDBY),
        RS.PROGRESSIVE: ("failover", STANDBY), RS.PARALLEL: ("parallel", STANDBY),
    },
    "closed_restored": {
        RS.NONE: FAILED, RS.RETRY: ("reconnect", B0), RS.RECONNECT: ("reconnect", B0),
        RS.RESTART: ("restart", B0), RS.FAILOVER: ("failover", STANDBY),
        RS.PROGRESSIVE: ("reconnect", B0), RS.PARALLEL: ("parallel", STANDBY),
    },
    "closed_never": {
        RS.NONE: FAILED, RS.RETRY: FAILED, RS.RECONNECT: FAILED,
        RS.RESTART: ("restart", B0), RS.FAILOVER: ("failover", STANDBY),
        RS.PROGRESSIVE: ("failover", STANDBY), RS.PARALLEL: ("parallel", STANDBY),
    },
    "hang": {
        RS.NONE: FAILED, RS.RETRY: FAILED, RS.RECONNECT: FAILED,
        RS.RESTART: ("restart", B0), RS.FAILOVER: ("failover", STANDBY),
        RS.PROGRESSIVE: ("failover", STANDBY), RS.PARALLEL: ("parallel", STANDBY),
    },
    "shard_error": {
        RS.NONE: FAILED, RS.RETRY: ("retry", B0), RS.RECONNECT: ("retry", B0), RS.RESTART: ("retry", B0),
        RS.FAILOVER: ("retry", B0), RS.PROGRESSIVE: ("retry", B0), RS.PARALLEL: ("retry", B0),
    },
}

CASES = [(kind, strat) for kind, row in EXPECTED.items() for strat in RS]


def _drive(fake, cfg_for, kind: str, strategy: RS):
    s = resolve(L.MEDIUM, strategy)
    drv = fake(make := cfg_for(s))  # noqa: F841
    drv.clients(total=6)
    match kind:
        case "exit":
            drv.crash(10.0, B0)
        case "closed_restored":
            drv.disconnect(10.0, B0, restore_after=300.0)      # < reconnect timeout (1000 ms)
        case "closed_never":
            drv.disconnect(10.0, B0)
        case "hang":
            drv.hang(10.0, B0)
        case "shard_error":
            drv.shard_error(0.0, B0, 0)
    return drv.run()


def test_every_pair_is_covered():
    assert all(set(row) == set(RS) for row in EXPECTED.values())
    assert len(CASES) == 35


@pytest.mark.parametrize("kind,strategy", CASES, ids=[f"{k}-{s.value}" for k, s in CASES])
def test_recovery_outcome(fake, cfg_for, invariants, rebuilt, kind, strategy):
    drv = _drive(fake, cfg_for, kind, strategy)
    coord = drv.coord
    assert drv.done and coord.finished
    invariants(drv.cfg, coord.log)
    assert rebuilt(drv.cfg, coord.log).snapshot() == coord.st.snapshot()
    expected = EXPECTED[kind][strategy]
    done = [x for x in drv.records(r.RecoveryCompleted) if x.browser == B0]
    failed = [x for x in drv.records(r.RecoveryFailed) if x.browser == B0]
    outcomes = drv.outcomes()
    assert len(outcomes) == 6
    if kind == "shard_error":
        if expected == FAILED:
            assert [x.request_id for x in failed] == [0] and not done
            assert outcomes[0] == "failed:shard_error"
            assert all(outcomes[q] == "completed" for q in range(1, 6))
        else:
            assert not failed
            assert [(x.request_id, x.action, x.target) for x in done] == [(0, "retry", B0)]
            assert all(o == "completed" for o in outcomes.values())
            starts = [x for x in drv.records(r.ShardStarted) if x.request_id == 0 and x.shard == 0]
            assert [(x.browser, x.attempt) for x in starts] == [(B0, 0), (B0, 1)]
        return
    detected = [x for x in drv.records(r.FailureDetected) if x.browser == B0]
    assert len(detected) == 1 and detected[0].shards == (0,)
    if expected == FAILED:
        assert len(failed) == 1 and failed[0].request_id is None and not done
        assert coord.st.shards[0].status == "unavailable"
        assert set(outcomes.values()) == {"failed:shard_unavailable"}
    else:
        action, target = expected
        assert not failed
        assert [(x.request_id, x.action, x.target) for x in done] == [(None, action, target)]
        assert done[0].recovery_ms > 0
        assert coord.st.shards[0].primary == target and coord.st.shards[0].status == "serving"
        assert all(o == "completed" for o in outcomes.values()), outcomes
        # The lost run is redone (a new attempt), only for shard 0 of request 0.
        starts = [x for x in drv.records(r.ShardStarted) if x.request_id == 0 and x.shard == 0]
        assert [x.attempt for x in starts] == [0, 1] and starts[1].browser == target
        assert len([x for x in drv.records(r.ShardStarted) if x.request_id == 0 and x.shard == 1]) == 1


@pytest.mark.parametrize("kind", ["closed_never", "hang"])
def test_failed_recovery_waits_for_the_reconnect_timeout(fake, cfg_for, kind):
    """reconnect: the shard stays down for the reconnect timeout, then RecoveryFailed."""
    drv = _drive(fake, cfg_for, kind, RS.RECONNECT)
    det = next(x for x in drv.records(r.FailureDetected) if x.browser == B0)
    fail = next(x for x in drv.records(r.RecoveryFailed) if x.browser == B0)
    assert fail.t_ms - det.t_ms == pytest.approx(drv.cfg.settings.reconnect_timeout_ms)
    if kind == "hang":   # detected by silence: last heartbeat + detector timeout (fixed at medium)
        assert det.cause == "heartbeat_timeout"
        sus = next(x for x in drv.records(r.FailureSuspected) if x.browser == B0)
        assert sus.silence_ms == pytest.approx(drv.cfg.settings.detector_timeout_ms)


def test_progressive_escalates_reconnect_then_failover(fake, cfg_for):
    drv = _drive(fake, cfg_for, "closed_never", RS.PROGRESSIVE)
    actions = [x.action for x in drv.records(r.RecoveryStarted) if x.browser == B0]
    assert actions == ["detect", "reconnect", "failover"]
    fence = [cmd for _, cmd in drv.commands if type(cmd).__name__ == "KillBrowser"]
    assert [k.browser for k in fence] == [B0]


def test_progressive_without_standby_or_live_peer_falls_to_restart(fake, cfg_for):
    """Only one worker and no standby: failover has no target, so restart is next."""
    from dataclasses import replace
    s = replace(resolve(L.MEDIUM, RS.PROGRESSIVE), standby_browsers=0)
    drv = fake(cfg_for(s, workers=("chromium",)))
    drv.clients(total=4).disconnect(10.0, B0)
    drv.run()
    assert [x.action for x in drv.records(r.RecoveryStarted)] == ["detect", "reconnect", "restart"]
    assert [x.action for x in drv.records(r.RecoveryCompleted)] == ["restart"]
    assert set(drv.outcomes().values()) == {"completed"}


def test_hang_that_ends_within_reconnect_timeout_is_reclaimed(fake, cfg_for, invariants):
    """The page answers again while reconnect waits: its shards come back (reloaded)."""
    s = resolve(L.MEDIUM, RS.RECONNECT)
    drv = fake(cfg_for(s)).clients(total=4).hang(10.0, B0, wake_after=2_400.0)   # detection ~2000 ms after
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    assert [x.action for x in drv.records(r.RecoveryCompleted)] == ["reconnect"]
    assert drv.coord.st.shards[0].primary == B0
    assert set(drv.outcomes().values()) == {"completed"}


def test_persistent_shard_error_fails_the_request_after_max_retries(fake, cfg_for, invariants):
    s = resolve(L.MEDIUM, RS.RETRY)                # max_retries 2, backoff 50 ms doubling
    drv = fake(cfg_for(s)).clients(total=3).shard_error(0.0, B0, 0, times=3)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    starts = [x for x in drv.records(r.ShardStarted) if x.request_id == 0 and x.shard == 0]
    assert [x.attempt for x in starts] == [0, 1, 2]
    assert starts[1].t_ms - starts[0].t_ms == pytest.approx(20.0 + 50.0)
    assert starts[2].t_ms - starts[1].t_ms == pytest.approx(20.0 + 100.0)
    assert drv.outcomes()[0] == "failed:shard_error"
    assert [x.request_id for x in drv.records(r.RecoveryFailed)] == [0]
    # the error budget is per request: the next requests run clean and complete
    assert drv.outcomes()[1] == drv.outcomes()[2] == "completed"
    assert drv.coord.st.requests[1].errors == {}


def test_restart_on_crash_reported_as_close_then_exit(fake, cfg_for, invariants, rebuilt):
    """A real crash is reported twice (socket closed, then process exited, as sim/world.py and
    real/ do). The exit notice belongs to the *old* process; it must not kill the relaunch.

    low level = restart with one restart attempt. Expected: restart recovers every request.
    """
    s = resolve(L.LOW)
    drv = fake(cfg_for(s)).clients(total=5).crash(10.0, B0, close_first=True)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    assert not drv.records(r.RecoveryFailed), drv.records(r.RecoveryFailed)
    assert [x.action for x in drv.records(r.RecoveryCompleted)] == ["restart"]
    assert set(drv.outcomes().values()) == {"completed"}

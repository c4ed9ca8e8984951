"""Request lifecycle, hot replicas, failover targets, stale results, timeouts, event sourcing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coordinator import commands as c
from coordinator.settings import resolve
from events import records as r
from shardtwin.vocab import FaultToleranceLevel as L, RecoveryStrategy as RS

B0, B1 = "chromium-0", "firefox-1"


def test_happy_path_runs_shards_in_dependency_order(fake, cfg_for, invariants, rebuilt):
    drv = fake(cfg_for(resolve(L.NONE), shards=3)).clients(total=4)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    assert set(drv.outcomes().values()) == {"completed"}
    for q in range(4):
        starts = [x.shard for x in drv.records(r.ShardStarted) if x.request_id == q]
        assert starts == [0, 1, 2]
    lat = [x.latency_ms for x in drv.records(r.RequestCompleted)]
    assert lat == [pytest.approx(60.0)] * 4               # 3 shards x 20 ms, no overlap for one client
    assert [x.reason for x in drv.records(r.RunFinished)] == ["done"]
    assert rebuilt(drv.cfg, drv.coord.log) == drv.coord.st


def test_workload_waits_for_every_shard_to_serve(fake, cfg_for):
    drv = fake(cfg_for(resolve(L.NONE)), launch_ms=lambda b: 100.0 if b == B0 else 700.0).clients(total=1)
    drv.run()
    started = drv.records(r.WorkloadStarted)[0].t_ms
    assert started == pytest.approx(700.0 + 50.0)
    assert drv.records(r.RequestSubmitted)[0].t_ms == started


def test_critical_hot_replica_promotion_recovers_in_zero_ms(fake, cfg_for, invariants):
    s = resolve(L.CRITICAL)
    drv = fake(cfg_for(s)).clients(total=5).crash(10.0, B0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    placed = [(x.shard, x.browser, x.role) for x in drv.records(r.ShardPlaced) if x.t_ms == 0.0]
    assert (0, "chromium-2", "replica") in placed and (1, "firefox-3", "replica") in placed
    done = drv.records(r.RecoveryCompleted)
    assert [(x.action, x.target) for x in done] == [("promote", "chromium-2")]
    assert done[0].recovery_ms == 0.0
    det = drv.records(r.FailureDetected)[0]
    redo = [x for x in drv.records(r.ShardStarted) if x.request_id == 0 and x.shard == 0][-1]
    assert (redo.browser, redo.attempt, redo.t_ms) == ("chromium-2", 1, det.t_ms)   # rerun at once, no load
    assert not [cmd for _, cmd in drv.commands if isinstance(cmd, c.LoadShard) and cmd.browser == "chromium-2"
                and _ > 0.0 and _ >= det.t_ms]
    assert set(drv.outcomes().values()) == {"completed"}


def test_critical_is_faster_than_failover_with_a_cold_standby(fake, cfg_for):
    out = {}
    for name, s in (("critical", resolve(L.CRITICAL)), ("failover", replace(resolve(L.CRITICAL), replicas=0))):
        drv = fake(cfg_for(s)).clients(total=5).crash(10.0, B0)
        drv.run()
        out[name] = drv.records(r.RecoveryCompleted)[0]
    assert out["critical"].recovery_ms == 0.0
    assert out["failover"].action == "failover" and out["failover"].recovery_ms == pytest.approx(50.0)  # load


def test_failover_skips_a_standby_that_is_still_launching(fake, cfg_for, invariants):
    s = resolve(L.MEDIUM, RS.FAILOVER)
    drv = fake(cfg_for(s), launch_ms=lambda b: 5000.0 if b == "chromium-2" else 100.0)
    drv.clients(total=4).crash(10.0, B0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    done = drv.records(r.RecoveryCompleted)
    assert [(x.action, x.target) for x in done] == [("failover", B1)]
    assert not [x for x in drv.records(r.ShardPlaced) if x.browser == "chromium-2" and x.role == "primary"]
    assert set(drv.outcomes().values()) == {"completed"}


def test_failover_skips_a_dead_standby_and_fails_without_live_target(fake, cfg_for, invariants):
    s = replace(resolve(L.MEDIUM, RS.FAILOVER))
    drv = fake(cfg_for(s, workers=("chromium",))).clients(total=4)
    drv.crash(5.0, "chromium-1")          # the standby dies first (it holds nothing: no recovery)
    drv.crash(10.0, B0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    assert not [x for x in drv.records(r.ShardPlaced) if x.t_ms > 0 and x.role == "primary"]
    assert [x.browser for x in drv.records(r.RecoveryFailed)] == [B0]
    assert set(drv.outcomes().values()) == {"failed:shard_unavailable"}


def test_parallel_restart_wins_when_no_failover_target(fake, cfg_for, invariants):
    s = replace(resolve(L.HIGH), standby_browsers=0)
    drv = fake(cfg_for(s, workers=("chromium",))).clients(total=3).crash(10.0, B0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    assert [(x.action, x.target) for x in drv.records(r.RecoveryCompleted)] == [("parallel", None)]
    assert drv.coord.st.shards[0].primary == B0
    assert set(drv.outcomes().values()) == {"completed"}


def test_parallel_first_browser_to_load_serves(fake, cfg_for, invariants):
    """Standby ready, but its load is slower than relaunch + load of the failed browser."""
    s = resolve(L.HIGH)
    drv = fake(cfg_for(s), launch_ms=10.0, load_ms=50.0).clients(total=3).disconnect(10.0, B0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    done = drv.records(r.RecoveryCompleted)
    assert len(done) == 1 and done[0].recovery_ms == pytest.approx(50.0)    # the standby's load
    assert drv.coord.st.shards[0].primary == "chromium-2"
    assert set(drv.outcomes().values()) == {"completed"}


def test_stale_result_from_a_hung_page_is_ignored(fake, cfg_for, invariants, rebuilt):
    """The page hangs mid-run, is declared failed, wakes up and delivers attempt 0's result
    after the request was already redispatched: the fold counts it stale, nothing else."""
    s = resolve(L.MEDIUM, RS.RECONNECT)
    drv = fake(cfg_for(s)).clients(total=3).hang(10.0, B0, wake_after=2_400.0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    comp = [x for x in drv.records(r.ShardCompleted) if x.request_id == 0 and x.shard == 0]
    assert [x.attempt for x in comp] == [0, 1]
    assert drv.coord.st.stale == 1
    assert len([x for x in drv.records(r.ShardStarted) if x.request_id == 0 and x.shard == 1]) == 1
    assert len([x for x in drv.records(r.RequestCompleted) if x.request_id == 0]) == 1
    assert rebuilt(drv.cfg, drv.coord.log).snapshot() == drv.coord.st.snapshot()


def test_injected_old_attempt_result_changes_nothing(fake, cfg_for, rebuilt):
    s = resolve(L.MEDIUM, RS.RETRY)
    drv = fake(cfg_for(s)).clients(total=2).shard_error(0.0, B0, 0)
    # 100 ms in, request 0's shard 0 attempt 1 is done and shard 1 runs: replay attempt 0's success.
    drv.at_rel(100.0, lambda: drv.observe(r.ShardCompleted(drv.now, request_id=0, shard=0, browser=B0, attempt=0)))
    drv.at_rel(100.0, lambda: drv.observe(r.ShardFailed(drv.now, request_id=0, shard=1, browser=B1, attempt=7,
                                                        reason="shard_error")))
    drv.run()
    assert drv.coord.st.stale == 2
    assert len(drv.records(r.RequestCompleted)) == 2 and not drv.records(r.RequestFailed)
    assert drv.coord.st.requests[0].errors == {0: 1}
    assert rebuilt(drv.cfg, drv.coord.log).snapshot() == drv.coord.st.snapshot()


def test_request_timeout_fails_a_request_exactly_once(fake, cfg_for, invariants):
    # reconnect waits 10 s, the request only 3 s: the timeout fires first, then RecoveryFailed.
    s = replace(resolve(L.MEDIUM, RS.RECONNECT), request_timeout_ms=3000.0, reconnect_timeout_ms=10_000.0)
    drv = fake(cfg_for(s)).clients(concurrency=2, total=4).hang(10.0, B0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    fails = drv.records(r.RequestFailed)
    by_req = {x.request_id: x for x in fails}
    assert len(by_req) == len(fails) == 4
    timed_out = [x for x in fails if x.reason == "timeout"]
    assert timed_out and all(x.latency_ms == pytest.approx(3000.0) for x in timed_out)
    assert {x.reason for x in fails} == {"timeout"}
    # the reconnect recovery is still waiting when the last request times out
    assert not drv.records(r.RecoveryFailed) and drv.coord.st.recoveries
    late = drv.coord.timer(("reconnect", B0), drv.now + 10_000.0)   # it gives up now
    assert len(drv.records(r.RequestFailed)) == 4 and [x.browser for x in drv.records(r.RecoveryFailed)] == [B0]
    assert not [cmd for cmd in late if isinstance(cmd, c.RunShard)]
    # a late timer for a request that already ended does nothing
    q = timed_out[0].request_id
    n = len(drv.coord.log)
    assert drv.coord.timer(("req", q), drv.now + 1.0) == [] and len(drv.coord.log) == n


def test_completed_request_cancels_its_timeout(fake, cfg_for):
    drv = fake(cfg_for(resolve(L.NONE))).clients(total=2)
    drv.run()
    for q in (0, 1):
        armed = [t for t, cmd in drv.commands if isinstance(cmd, c.ArmTimer) and cmd.key == ("req", q)]
        cancel = [t for t, cmd in drv.commands if isinstance(cmd, c.CancelTimer) and cmd.key == ("req", q)]
        assert len(armed) == 1 and len(cancel) == 1
    assert not [x for x in drv.records(r.RequestFailed)]


def test_strategy_none_fails_later_submissions_immediately(fake, cfg_for):
    drv = fake(cfg_for(resolve(L.NONE))).clients(total=5).crash(10.0, B0)
    drv.run()
    fails = drv.records(r.RequestFailed)
    assert [x.reason for x in fails] == ["shard_unavailable"] * 5
    assert all(x.latency_ms == 0.0 for x in fails[1:])


def test_closed_loop_deadline_drains_in_flight(fake, cfg_for, invariants):
    drv = fake(cfg_for(resolve(L.NONE))).clients(concurrency=3, deadline_ms=500.0)
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    sub = drv.records(r.RequestSubmitted)
    assert {x.client for x in sub} == {0, 1, 2}
    assert all(x.t_ms - drv.t0 <= 500.0 for x in sub)
    assert set(drv.outcomes().values()) == {"completed"}
    assert drv.records(r.RunFinished)[0].t_ms > drv.t0 + 500.0


def test_duplicate_browser_ready_keeps_state_equal_to_fold(fake, cfg_for, rebuilt):
    drv = fake(cfg_for(resolve(L.NONE))).clients(total=2)
    drv.at_rel(5.0, lambda: drv.observe(r.BrowserReady(drv.now, browser=B1)))
    drv.run()
    assert drv.coord.st.stale == 1
    assert rebuilt(drv.cfg, drv.coord.log).snapshot() == drv.coord.st.snapshot()


def test_drain_keeps_detector_bookkeeping(fake, cfg_for, invariants):
    """A bounded closed loop drains its remaining requests when a shard is lost for good; the
    drain must not forget which detector timers are pending: a heartbeat from a READY page
    with no recovery in progress never re-arms (or otherwise commands) anything."""
    drv = fake(cfg_for(resolve(L.NONE)), run_ms=lambda b, s: 500.0 if s == 0 else 3000.0)
    # Request 100 passes shard 0 before the crash and keeps firefox-1 busy for 3 s afterwards;
    # the client's first request is on shard 0 when chromium-0 dies, fails, and drains the rest.
    drv.at_rel(0.0, lambda: drv.observe(r.RequestScheduled(drv.now, request_id=100)))
    drv.at_rel(600.0, lambda: drv.observe(r.ClientsScheduled(drv.now, concurrency=1, total=3)))
    drv.crash(700.0, B0)
    noisy: list = []
    handle = drv.coord.handle

    def watched(obs, now):
        quiet = (type(obs) is r.HeartbeatReceived and not drv.coord.st.recoveries
                 and drv.coord.st.browsers[obs.browser].status == "ready")
        cmds = handle(obs, now)
        if quiet and cmds:
            noisy.append((now, obs.browser, cmds))
        return cmds
    drv.coord.handle = watched
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    fails = drv.records(r.RequestFailed)
    assert sorted(x.request_id for x in fails) == [101, 102, 103]           # drained
    assert drv.outcomes()[100] == "completed"
    beats_after = [x for x in drv.records(r.HeartbeatReceived) if x.t_ms > fails[-1].t_ms]
    assert beats_after                                                       # the case is exercised
    assert noisy == []


@pytest.mark.parametrize("think_ms", [0.0, 40.0])
def test_abort_fails_in_flight_and_starts_nothing(fake, cfg_for, invariants, think_ms):
    drv = fake(cfg_for(resolve(L.NONE))).clients(concurrency=3, think_ms=think_ms)
    out: list = []
    drv.at_rel(1000.0, lambda: (out.extend(drv.coord.abort(drv.now, "time_limit")), setattr(drv, "done", True)))
    drv.run()
    invariants(drv.cfg, drv.coord.log)
    assert not drv.coord.st.active and drv.coord.finished
    assert not [cmd for cmd in out if isinstance(cmd, (c.RunShard, c.ArmTimer))]
    n = len(drv.records(r.RequestSubmitted))
    assert drv.coord.timer(("client", 0), drv.now + 1.0) == []            # a late client timer submits nothing
    assert len(drv.records(r.RequestSubmitted)) == n

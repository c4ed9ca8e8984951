"""sim.run.run_scenario: determinism, event sourcing, fault-tolerance levels (speed vs memory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from coordinator.state import fold, initial_state
from events.metrics import fault_timeline, seed_result
from events.records import RequestFailed, RunFinished
from events.scenario import FaultSpec, Scenario, Workload
from events.schema import to_arrow
from sim.profile import DEFAULT_PROFILE
from sim.run import run_scenario

ROOT = Path(__file__).resolve().parents[2]

BUSY = Scenario(
    "all-MiniLM-L6-v2", shards=3, fault_tolerance_level="medium", seed=11,
    workload=Workload(kind="closed_loop", concurrency=3, duration_s=3.0),
    faults=(FaultSpec("shard_error", 100.0, shard=1), FaultSpec("disconnect", 400.0, shard=2, reconnect_delay_ms=200.0),
            FaultSpec("hang", 900.0, browser="1", duration_ms=500.0), FaultSpec("browser_crash", 1500.0, shard=0),
            FaultSpec("slow", 2000.0, shard=1, factor=3.0, duration_ms=300.0)))


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def test_same_inputs_give_byte_identical_logs():
    a, b = run_scenario(BUSY), run_scenario(BUSY)
    ta, tb = to_arrow(a.log), to_arrow(b.log)
    assert ta.equals(tb)
    assert _ipc(ta) == _ipc(tb)
    assert len(ta) > 300


def test_a_different_seed_gives_a_different_log():
    a, b = run_scenario(BUSY, seed=11), run_scenario(BUSY, seed=12)
    assert a.log.run_id != b.log.run_id
    ta, tb = to_arrow(a.log).drop_columns(["run_id"]), to_arrow(b.log).drop_columns(["run_id"])
    assert not ta.equals(tb)
    assert ta.column("t_ms").to_pylist() != tb.column("t_ms").to_pylist()


def test_logs_do_not_depend_on_the_process_hash_seed():
    code = ("import hashlib,sys; sys.path.insert(0, %r)\n"
            "import pyarrow as pa\n"
            "from events.scenario import FaultSpec, Scenario, Workload\n"
            "from events.schema import to_arrow\nfrom sim.run import run_scenario\n"
            "s = Scenario('all-MiniLM-L6-v2', shards=3, fault_tolerance_level='critical', seed=5,"
            " workload=Workload(kind='closed_loop', concurrency=2, duration_s=2.0),"
            " faults=(FaultSpec('browser_crash', 300.0, shard=1), FaultSpec('hang', 600.0, shard=0)))\n"
            "t = to_arrow(run_scenario(s).log); sink = pa.BufferOutputStream()\n"
            "w = pa.ipc.new_stream(sink, t.schema); w.write_table(t); w.close()\n"
            "print(hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest())\n") % str(ROOT)
    digests = set()
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def _rebuild(run, s):
    from events import records as r
    from events.scenario import compile_scenario
    recs = [r.from_event(e) for e in run.log.events[len(compile_scenario(s)):]]
    return fold(initial_state(run.coordinator.cfg), recs)


def test_folding_the_logged_records_rebuilds_the_live_state(records_of):
    run = run_scenario(BUSY)
    recs = records_of(run, BUSY)
    assert len(recs) == len(run.coordinator.log)
    st = fold(initial_state(run.coordinator.cfg), recs)
    assert st.snapshot() == run.coordinator.st.snapshot()
    assert st == run.coordinator.st                      # every field, not only the snapshot
    kinds = {type(x).__name__ for x in recs}
    assert {"FailureDetected", "RecoveryCompleted", "ShardFailed", "ConnectionRestored"} <= kinds


def test_fold_rebuilds_state_after_a_crash_at_level_high(records_of):
    """Regression (fixed in 1d35ddf): a late BrowserReady was counted stale outside the fold."""
    s = Scenario("all-MiniLM-L6-v2", shards=2, fault_tolerance_level="high",
                 workload=Workload(iterations=10), faults=(FaultSpec("browser_crash", 100.0, shard=0),))
    run = run_scenario(s)
    st = fold(initial_state(run.coordinator.cfg), records_of(run, s))
    assert st.snapshot() == run.coordinator.st.snapshot()


def test_closed_loop_with_an_unavailable_shard_ends(invariants):
    s = Scenario("all-MiniLM-L6-v2", shards=2, workload=Workload(kind="closed_loop", concurrency=2, duration_s=2.0),
                 faults=(FaultSpec("browser_crash", 100.0, shard=0),))
    run = run_scenario(s)
    invariants(run, s)


@pytest.mark.parametrize("limit_ms", [2000.0, 3000.0, 5000.0])
def test_time_limit_abort_ends_every_request_exactly_once(invariants, records_of, limit_ms):
    """Aborting a closed loop fails what is in flight and submits nothing new: a failed
    request's client must not start its next request in the middle of the abort."""
    s = Scenario("all-MiniLM-L6-v2", shards=3, fault_tolerance_level="medium", seed=3,
                 workload=Workload(kind="closed_loop", concurrency=3, duration_s=30.0))
    run = run_scenario(s, time_limit_ms=limit_ms)
    invariants(run, s)
    finished = [x for x in records_of(run, s) if isinstance(x, RunFinished)]
    assert [(x.t_ms, x.reason) for x in finished] == [(limit_ms, "time_limit")]
    assert not run.coordinator.st.active
    aborted = [x for x in records_of(run, s) if isinstance(x, RequestFailed) and x.reason == "time_limit"]
    assert len(aborted) == 3                                  # one in flight per client


def _crash_run(level: str):
    s = Scenario("all-MiniLM-L6-v2", shards=2, fault_tolerance_level=level, seed=2,
                 workload=Workload(iterations=12), faults=(FaultSpec("browser_crash", 150.0, shard=0),))
    run = run_scenario(s)
    res = seed_result(run.log, s, run.plan, run.coordinator.s)
    return run, res, fault_timeline(run.log)[0]


def test_higher_levels_recover_faster():
    out = {lvl: _crash_run(lvl) for lvl in ("low", "medium", "high", "critical")}
    for lvl, (run, res, ft) in out.items():
        assert ft["recovered"], (lvl, ft)
        assert res["requests"]["failed"] == 0 and res["requests"]["lost"] == 0
    rec = {lvl: out[lvl][1]["recovery_metrics"]["recovery_time_ms"] for lvl in out}
    outage = {lvl: out[lvl][2]["outage_ms"] for lvl in out}
    assert rec["critical"] == 0.0 and out["critical"][2]["action"] == "promote"
    assert rec["critical"] < rec["high"] and rec["critical"] < rec["medium"]
    assert outage["critical"] < outage["high"] and outage["critical"] < outage["medium"]
    # a warm standby (medium failover, high parallel) beats a relaunch (low restart: launch + load)
    assert rec["high"] <= rec["medium"] < rec["low"] and out["low"][2]["action"] == "restart"


def test_level_none_loses_the_shard():
    run, res, ft = _crash_run("none")
    assert not ft["recovered"]
    assert res["requests"]["failed"] > 0 and set(res["requests"]["failed_reasons"]) == {"shard_unavailable"}


def test_level_low_restarts_after_a_crash():
    """Regression (fixed in 1d35ddf): the old process's exit notice killed the restart."""
    run, res, ft = _crash_run("low")
    assert ft["recovered"] and ft["action"] == "restart"
    assert res["requests"]["failed"] == 0


def test_higher_levels_use_more_memory():
    mem = {}
    for lvl in ("none", "low", "medium", "high", "critical"):
        s = Scenario("all-MiniLM-L6-v2", shards=2, fault_tolerance_level=lvl, workload=Workload(iterations=3))
        run = run_scenario(s)
        mem[lvl] = seed_result(run.log, s, run.plan, run.coordinator.s)["memory_usage_mb"]
    base = DEFAULT_PROFILE.browsers["chromium"].baseline_mb
    assert mem["none"] == mem["low"] < mem["medium"] == mem["high"] < mem["critical"]
    assert mem["medium"] - mem["none"] == pytest.approx(base)                 # one empty standby
    assert mem["critical"] - mem["none"] == pytest.approx(2 * base + 90.9, abs=0.5)   # 2 standbys + replicas

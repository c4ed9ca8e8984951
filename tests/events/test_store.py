"""DuckDB store: scenario/run round trips, one-transaction writes, stale runs, Parquet, views, bad paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from events.scenario import (ScenarioBuilder, compile_scenario, dump_scenario, load_scenario,
                             scenario_from_events, scenario_hash)
from events.schema import Event, EventKind, EventLog
from events.store import Store
from shardtwin.errors import StoreError
from shardtwin.vocab import Source

REPO = Path(__file__).resolve().parents[2]
K = EventKind


def _scenario():
    return ScenarioBuilder("bert").shards(3).fault_tolerance("medium").crash("firefox").seed(3).build()


def _run_events(scenario, extra=()):
    ev = list(compile_scenario(scenario))
    return tuple(ev + [e.with_seq(len(ev) + i) for i, e in enumerate(extra)])


def test_scenario_file_to_store_and_back(tmp_path):
    path = dump_scenario(_scenario(), tmp_path / "s.yaml")
    s = load_scenario(path)
    events = _run_events(s, [Event.make(K.RUN_FINISHED, 10.0, reason="done")])
    with Store(tmp_path / "db.duckdb") as st:
        run_id = st.begin_run("sim", s, "default-v1", host_info_={"cpus": 2})
        st.append_events(run_id, events[:2])
        st.finish_run(run_id, EventLog(run_id, Source.SIM, events), result={"ok": True})
    with Store(tmp_path / "db.duckdb") as st:
        assert st.load_scenario(scenario_hash(s)) == s
        log = st.run_events(run_id)
        rec = st.run(run_id)
    assert log.events == events and log.source is Source.SIM
    assert scenario_from_events(log.events) == s
    assert (rec.status, rec.result, rec.host_info, rec.calibration_profile, rec.seed) == \
        ("finished", {"ok": True}, {"cpus": 2}, "default-v1", 3)
    assert rec.finished_at >= rec.started_at


def test_failed_finish_rolls_back_and_run_stays_running(tmp_path, monkeypatch):
    s = _scenario()
    events = _run_events(s)
    with Store(tmp_path / "db.duckdb") as st:
        run_id = st.begin_run(Source.REAL, s)

        def broken(*_a, **_k):
            raise duckdb.IOException("disk full")
        monkeypatch.setattr(st, "_set_status", broken)
        with pytest.raises(StoreError, match="rolled back"):
            st.finish_run(run_id, EventLog(run_id, Source.REAL, events))
        monkeypatch.undo()
        assert st.run(run_id).status == "running"
        assert st.query("SELECT count(*) AS n FROM events")[0]["n"] == 0
        st.abort_run(run_id, reason="test")
        assert st.run(run_id).status == "aborted"
        assert st.run_events(run_id).events == events  # the buffered events were kept and written


def test_event_conflicts_and_unknown_runs(tmp_path):
    s = _scenario()
    with Store(tmp_path / "db.duckdb") as st:
        run_id = st.begin_run("sim", s)
        st.append_events(run_id, [Event.make(K.RUN_STARTED, 0.0, seq=0)])
        with pytest.raises(StoreError, match="seq 0"):
            st.append_events(run_id, [Event.make(K.RUN_FINISHED, 1.0, seq=0)])
        with pytest.raises(StoreError, match="not running"):
            st.finish_run("nope")
        with pytest.raises(StoreError, match="no run"):
            st.run("nope")


def test_leaving_the_block_aborts_open_runs(tmp_path):
    with pytest.raises(RuntimeError):
        with Store(tmp_path / "db.duckdb") as st:
            run_id = st.begin_run("sim", _scenario())
            st.append_events(run_id, [Event.make(K.RUN_STARTED, 0.0)])
            raise RuntimeError("driver crashed")
    with Store(tmp_path / "db.duckdb") as st:
        assert st.run(run_id).status == "aborted"
        assert len(st.run_events(run_id).events) == 1


def test_run_of_a_killed_process_is_marked_aborted(tmp_path):
    db = tmp_path / "db.duckdb"
    code = ("import os; from events.store import Store; from events.scenario import Scenario;"
            f"st = Store({str(db)!r}); print(st.begin_run('real', Scenario('bert')), flush=True);"
            "st.con.close(); os._exit(9)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    run_id = out.stdout.strip()
    assert out.returncode == 9 and len(run_id) == 32, out.stderr
    with Store(db) as st:
        rec = st.run(run_id)
    assert rec.status == "aborted" and rec.result == {"aborted": "writer process died"}


def test_parquet_export_import_is_identical_and_idempotent(tmp_path):
    s = _scenario()
    events = _run_events(s, [Event.make(K.REQUEST_COMPLETED, 5.0, request_id=0, value=5.0)])
    with Store(tmp_path / "a.duckdb") as st:
        run_id = st.begin_run("sim", s, "p1")
        st.finish_run(run_id, EventLog(run_id, Source.SIM, events), {"latency_ms": 5.0})
        st.export_run(run_id, tmp_path / "run.parquet")
        original = st.run(run_id)
    with Store(tmp_path / "b.duckdb") as st:
        assert st.import_run(tmp_path / "run.parquet") == run_id
        assert st.import_run(tmp_path / "run.parquet") == run_id
        assert st.run(run_id) == original
        assert st.run_events(run_id).events == events
        assert st.load_scenario(original.scenario_hash) == s
        assert st.query("SELECT count(*) AS n FROM events")[0]["n"] == len(events)
        assert len(st.runs()) == 1
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with Store(tmp_path / "b.duckdb") as st, pytest.raises(StoreError):
        st.import_run(tmp_path / "junk.parquet")


def _log(run_id: str) -> EventLog:
    e = Event.make
    rows = [
        e(K.REQUEST_SUBMITTED, 10, request_id=0), e(K.REQUEST_COMPLETED, 40, request_id=0, value=30),
        e(K.REQUEST_SUBMITTED, 50, request_id=1),
        e(K.FAULT_INJECTED, 60, browser="firefox-1", type="browser_crash"),
        e(K.FAILURE_DETECTED, 80, browser="firefox-1"),
        e(K.RECOVERY_FAILED, 100, browser="firefox-1", strategy="progressive"),
        e(K.RECOVERY_COMPLETED, 300, browser="firefox-1", strategy="progressive", value=220),
        e(K.REQUEST_FAILED, 320, request_id=1, value=270, reason="timeout"),
        e(K.REQUEST_SUBMITTED, 330, request_id=2),                       # never finishes: lost
        e(K.FAULT_INJECTED, 400, browser="chromium-0", type="hang"),
        e(K.FAILURE_DETECTED, 900, browser="chromium-0"),
        e(K.RECOVERY_FAILED, 950, browser="chromium-0", strategy="restart"),
        e(K.FAULT_INJECTED, 1000, browser="firefox-1", type="disconnect"),  # never detected
    ]
    return EventLog(run_id, Source.SIM, tuple(ev.with_seq(i) for i, ev in enumerate(rows)))


def test_views_compute_latency_and_recovery(tmp_path):
    with Store(tmp_path / "db.duckdb") as st:
        run_id = st.begin_run("sim", _scenario())
        st.finish_run(run_id, _log(run_id))
        lat = st.query("SELECT request_id, submitted_ms, finished_ms, latency_ms, outcome, reason"
                       " FROM request_latency ORDER BY request_id")
        rec = st.query("SELECT fault_seq, type, browser, injected_ms, detection_ms, recovery_ms, outage_ms,"
                       " strategy, success FROM fault_recovery ORDER BY fault_seq")
    assert [tuple(r.values()) for r in lat] == [
        (0, 10.0, 40.0, 30.0, "completed", None), (1, 50.0, 320.0, 270.0, "failed", "timeout"),
        (2, 330.0, None, None, None, None)]
    assert [tuple(r.values()) for r in rec] == [
        (3, "browser_crash", "firefox-1", 60.0, 20.0, 220.0, 240.0, "progressive", True),
        (9, "hang", "chromium-0", 400.0, 500.0, 50.0, 550.0, "restart", False),
        (12, "disconnect", "firefox-1", 1000.0, None, None, None, None, None)]


def test_profiles_are_versioned(tmp_path):
    with Store(tmp_path / "db.duckdb") as st:
        p1 = st.save_profile("h200", {"gflops": 1.0})
        p2 = st.save_profile("h200", {"gflops": 2.0}, residuals={"rmse": 0.1})
        assert (p1.version, p2.version) == (1, 2)
        assert st.load_profile("h200") == p2
        assert st.load_profile("h200", 1) == p1
        with pytest.raises(StoreError, match="known: h200"):
            st.load_profile("other")
        with pytest.raises(StoreError, match="already exists"):
            st.save_profile("h200", {}, version=2)


def test_unusable_paths_give_one_line_store_errors(tmp_path):
    ro_file = tmp_path / "ro.duckdb"
    Store(ro_file).close()
    ro_file.chmod(0o444)
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro_dir.chmod(0o555)
    (tmp_path / "junk.duckdb").write_bytes(b"this is not a database" * 100)
    try:
        for bad in (ro_file, ro_dir / "new.duckdb", tmp_path / "missing" / "x.duckdb", tmp_path,
                    tmp_path / "junk.duckdb"):
            with pytest.raises(StoreError) as err:
                Store(bad)
            assert "\n" not in str(err.value)
    finally:
        ro_dir.chmod(0o755)
        ro_file.chmod(0o644)

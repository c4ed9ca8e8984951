"""End-to-end: the coordinator drives real Chromium and Firefox running all-MiniLM-L6-v2 shards.

Each test is one real run (at most 3 browsers: 2 workers + 1 standby). Faults are real:
SIGKILL of the browser's process group, an injected socket drop, a real main-thread hang.
After recovery, every completed request's embedding must equal the unsharded
onnxruntime reference (cosine >= 0.99999).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

import real.browsers as browsers
from events.scenario import parse_scenario
from events.schema import EventKind as K
from real.run import run_real
from sim.profile import DEFAULT_PROFILE

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SEQ = 32


def _scenario(faults, level="medium", **tolerance):
    return parse_scenario({
        "model": "all-MiniLM-L6-v2", "shards": 2, "browsers": ["chromium", "firefox"],
        "fault_tolerance_level": level, "tolerance": {"detector_timeout_ms": 5000.0, **tolerance},
        "workload": {"kind": "iterations", "iterations": 8, "seq_len": SEQ}, "faults": faults})


@pytest.fixture(autouse=True)
def _browsers(need):
    need("chromium")
    need("firefox")


def _kinds(run):
    return [e.kind for e in run.log.events]


def _assert_all_completed_and_correct(run):
    ev = run.log.events
    submitted = [e.request_id for e in ev if e.kind == K.REQUEST_SUBMITTED]
    completed = [e.request_id for e in ev if e.kind == K.REQUEST_COMPLETED]
    assert submitted and sorted(completed) == sorted(submitted), _summary(run)
    cosines = run.shards.reference_cosines()
    assert cosines and all(c >= 0.99999 for c in cosines.values()), cosines


def _summary(run):
    keep = (K.FAULT_INJECTED, K.FAILURE_DETECTED, K.RECOVERY_STARTED, K.RECOVERY_COMPLETED, K.RECOVERY_FAILED,
            K.REQUEST_FAILED, K.RUN_FINISHED, K.CONNECTION_CLOSED, K.CONNECTION_RESTORED, K.BROWSER_CRASHED)
    return [(round(e.t_ms), str(e.kind), e.browser, e.detail) for e in run.log.events if e.kind in keep]


def _recovered(run, cause=None, action=None):
    det = [e for e in run.log.events if e.kind == K.FAILURE_DETECTED and e.browser == "firefox-1"]
    assert det, _summary(run)
    if cause:
        assert det[0].details()["cause"] == cause, _summary(run)
    done = [e for e in run.log.events if e.kind == K.RECOVERY_COMPLETED and e.browser == "firefox-1"]
    assert done and done[0].value > 0, _summary(run)
    if action:
        assert done[0].details()["action"] == action, _summary(run)


def test_browser_crash_is_recovered_and_outputs_stay_correct():
    run = run_real(_scenario([{"type": "browser_crash", "at_ms": 300.0, "browser": "firefox"}]),
                   profile=DEFAULT_PROFILE, timeout_s=240)
    assert run.aborted is None
    _recovered(run, cause="exited", action="failover")
    _assert_all_completed_and_correct(run)
    # every load (the failover's too) carries the page's own split: weight fetch + session create,
    # on the page clock, inside the coordinator's asked-to-loaded time
    loads = [e.details() | {"load_ms": e.value} for e in run.log.events if e.kind == K.SHARD_LOADED]
    assert len(loads) >= 3, loads
    assert all(d["fetch_ms"] > 0 and d["create_ms"] > 0 and d["fetch_ms"] + d["create_ms"] <= d["load_ms"] + 1.0
               for d in loads), loads
    assert not browsers.leftover_browser_pids()


def test_hang_is_detected_by_the_heartbeat_timeout():
    s = _scenario([{"type": "hang", "at_ms": 300.0, "browser": "firefox", "duration_ms": 20000.0}],
                  detector_timeout_ms=2500.0)
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240)
    _recovered(run, cause="heartbeat_timeout")
    suspected = [e for e in run.log.events if e.kind == K.FAILURE_SUSPECTED and e.browser == "firefox-1"]
    assert suspected and suspected[0].details()["silence_ms"] >= 2500.0
    _assert_all_completed_and_correct(run)


def test_disconnect_then_reconnect_resumes_on_the_same_browser():
    s = _scenario([{"type": "disconnect", "at_ms": 300.0, "browser": "firefox", "reconnect_delay_ms": 300.0}],
                  level="low")
    s = parse_scenario({**__import__("events.scenario", fromlist=["scenario_to_dict"]).scenario_to_dict(s),
                        "recovery_strategy": "reconnect"})
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240)
    assert K.CONNECTION_RESTORED in _kinds(run), _summary(run)
    _recovered(run, cause="connection_closed", action="reconnect")
    _assert_all_completed_and_correct(run)


def test_browser_killed_from_outside_is_detected_and_recovered():
    """kill -9 by someone else (not shardtwin's fault injector) is handled the same way."""
    holder = {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            coord = holder.get("coord")
            if coord is not None and coord.st.workload_started is not None and coord.st.completed >= 1:
                for p in psutil.process_iter(["pid", "cmdline"]):
                    cmd = " ".join(p.info["cmdline"] or [])
                    if browsers.MARKER_PREFIX in cmd and "firefox" in cmd and "-contentproc" not in cmd:
                        os.kill(p.info["pid"], signal.SIGKILL)
                        holder["killed"] = p.info["pid"]
                        return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    run = run_real(_scenario([]), profile=DEFAULT_PROFILE, timeout_s=240,
                   on_coordinator=lambda c: holder.setdefault("coord", c))
    t.join(5)
    assert "killed" in holder
    assert not [e for e in run.log.events if e.kind == K.FAULT_INJECTED]
    _recovered(run)
    _assert_all_completed_and_correct(run)
    assert not browsers.leftover_browser_pids()

"""End-to-end: the faults test_real_run.py does not cover, really injected into real browsers.

all-MiniLM-L6-v2 (real weights), seq 32, chromium + firefox (+ the medium level's standby):
- memory_pressure: the page really allocates and touches `level` MB (medium = 768); the
  browser's PSS samples (MEMORY_SAMPLED) show the growth; the run survives and stays correct
  (the page touches the memory in one main-thread loop: on a loaded host that silences its
  heartbeats for seconds, and with the medium level's 2 s detector timeout the browser is
  then failed over as hung - seen in bench/real_pipeline.py; here the timeout is 20 s);
- shard_error: the page's next run of the shard throws; the coordinator retries on the same
  browser and the request completes, correctly;
- slow: Chromium is throttled through CDP (Emulation.setCPUThrottlingRate; the process launcher
  has a --remote-debugging-pipe session), Firefox has no CDP and gets the page's own slow factor
  (a busy-wait after each run). Either way the page-measured compute time of that browser's
  shards grows by roughly the factor (measured here, Chromium warm, x4 -> x3-4, x10 -> x10;
  the baseline is the runs just before the fault: Chromium's first WASM runs are slower);
- cascade: 3 shards, the browser holding shard 1 crashes, 1.5 s later the one holding shard 2;
  at level medium every request ends completed, or failed with a reason; none is lost.
After every fault, each completed request's embedding has cosine >= 0.99999 with the unsharded
onnxruntime reference. ~60-90 s in all on 2 cores.
"""

from __future__ import annotations

import statistics

import pytest

import real.browsers as browsers
from events.scenario import parse_scenario
from events.schema import EventKind as K
from real.driver import PRESSURE_MB
from real.run import run_real
from sim.profile import DEFAULT_PROFILE

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SEQ = 32


@pytest.fixture(autouse=True)
def _browsers(need):
    need("chromium")
    need("firefox")


# Detection by heartbeat is not under test here (test_real_run covers hang): a generous timeout keeps a
# page that is busy loading on a shared 2-core host from being suspected.
def _scenario(faults, shards=2, level="medium", rate=None, duration_s=None, iterations=8, **tolerance):
    workload = ({"kind": "open_loop", "rate_per_s": rate, "arrival": "fixed", "duration_s": duration_s, "seq_len": SEQ}
                if rate else {"kind": "iterations", "iterations": iterations, "seq_len": SEQ})
    return parse_scenario({
        "model": "all-MiniLM-L6-v2", "shards": shards, "browsers": ["chromium", "firefox"],
        "fault_tolerance_level": level, "tolerance": {"detector_timeout_ms": 20000.0, **tolerance},
        "workload": workload, "faults": faults})


def _summary(run):
    keep = (K.FAULT_INJECTED, K.FAILURE_DETECTED, K.RECOVERY_STARTED, K.RECOVERY_COMPLETED, K.RECOVERY_FAILED,
            K.REQUEST_FAILED, K.RUN_FINISHED, K.SHARD_FAILED, K.BROWSER_CRASHED, K.CONNECTION_CLOSED)
    return [(round(e.t_ms), str(e.kind), e.request_id, e.shard, e.browser, e.detail)
            for e in run.log.events if e.kind in keep]


def _outcomes(run):
    ev = run.log.events
    submitted = sorted(e.request_id for e in ev if e.kind == K.REQUEST_SUBMITTED)
    completed = sorted(e.request_id for e in ev if e.kind == K.REQUEST_COMPLETED)
    failed = {e.request_id: e.details().get("reason") for e in ev if e.kind == K.REQUEST_FAILED}
    return submitted, completed, failed


def _assert_correct(run):
    """Every completed request's embedding equals the unsharded reference (cosine >= 0.99999)."""
    assert run.shards.results, _summary(run)
    for q, cos in run.shards.reference_cosines().items():
        assert cos >= 0.99999, (q, cos)


def _all_completed(run):
    submitted, completed, failed = _outcomes(run)
    assert run.aborted is None and submitted and completed == submitted and not failed, _summary(run)


def _injected(run, fault):
    inj = [e for e in run.log.events if e.kind == K.FAULT_INJECTED and e.details()["fault"] == fault]
    assert inj and inj[0].browser, _summary(run)
    return inj[0]


def test_memory_pressure_really_allocates_and_the_run_survives():
    # the driver samples PSS 1 s in and then every 5 s: the workload outlasts the injection by more
    # than one period, so a sample after it is certain (with 4 s, one run in ~10 ended first)
    s = _scenario([{"type": "memory_pressure", "at_ms": 800.0, "browser": "firefox", "level": "medium"}],
                  rate=4.0, duration_s=7.0)
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240)
    inj = _injected(run, "memory_pressure")
    mb = PRESSURE_MB["medium"]
    samples = [(e.t_ms, e.value) for e in run.log.events if e.kind == K.MEMORY_SAMPLED and e.browser == inj.browser]
    # the page's own report of what it holds (fault_applied ack) ...
    assert any(t >= inj.t_ms and v == float(mb) for t, v in samples), samples
    # ... and the browser's PSS (sampled every second by the driver) really grew by most of it
    before = [v for t, v in samples if t < inj.t_ms and v != float(mb)]
    after = [v for t, v in samples if t > inj.t_ms and v != float(mb)]
    assert before and after, samples
    growth = max(after) - statistics.median(before)
    print(f"\nmemory_pressure medium on {inj.browser}: PSS {statistics.median(before):.0f} -> {max(after):.0f} MB "
          f"(+{growth:.0f}, injected {mb})")
    assert growth >= 0.6 * mb, samples
    _all_completed(run)
    _assert_correct(run)


def test_shard_error_is_retried_and_the_output_stays_correct():
    s = _scenario([{"type": "shard_error", "at_ms": 300.0, "shard": 1}])
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240)
    inj = _injected(run, "shard_error")
    failed = [e for e in run.log.events if e.kind == K.SHARD_FAILED and e.shard == 1 and e.t_ms >= inj.t_ms]
    assert failed and failed[0].details()["reason"] == "shard_error", _summary(run)
    q, a = failed[0].request_id, failed[0].attempt
    det = [e for e in run.log.events if e.kind == K.FAILURE_DETECTED and e.request_id == q]
    assert det and det[0].details()["cause"] == "shard_error", _summary(run)
    retried = [e for e in run.log.events if e.kind == K.SHARD_COMPLETED and e.request_id == q and e.shard == 1]
    assert retried and retried[-1].attempt > a and retried[-1].browser == failed[0].browser, _summary(run)
    _all_completed(run)
    _assert_correct(run)


@pytest.mark.parametrize("kind,mechanism", [("chromium", "cdp"), ("firefox", "page")])
def test_slow_multiplies_that_browsers_compute_time(kind, mechanism, monkeypatch):
    factor = 4.0
    used: list[str] = []
    original = browsers.BrowserHandle.set_cpu_throttle

    async def spy(self, rate):
        await original(self, rate)
        used.append("cdp")
    monkeypatch.setattr(browsers.BrowserHandle, "set_cpu_throttle", spy)
    s = _scenario([{"type": "slow", "at_ms": 4000.0, "browser": kind, "factor": factor}], rate=4.0, duration_s=7.0)
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240)
    inj = _injected(run, "slow")
    assert (used == ["cdp"]) == (mechanism == "cdp"), used
    mine = [(e.t_ms, e.value) for e in run.log.events if e.kind == K.SHARD_COMPLETED and e.browser == inj.browser]
    # the baseline is the last runs before: Chromium's first WASM runs are 2-8x slower (tier-up)
    # Baseline: the steadier half of the last runs before (on a busy host Chromium's tier-up and
    # neighbours' load inflate single runs; the slow factor must show against the page's own pace).
    before = sorted(v for t, v in mine if t < inj.t_ms)[:6] if len(mine) < 8 else \
        sorted([v for t, v in mine if t < inj.t_ms][-8:])[:4]
    after = [v for t, v in mine if t > inj.t_ms + 300.0]   # a run in flight at injection time is mixed
    assert len(before) >= 3 and len(after) >= 3, mine
    ratio = statistics.median(after) / statistics.median(before)
    print(f"\nslow x{factor} on {inj.browser} via {mechanism}: compute median {statistics.median(before):.1f} -> "
          f"{statistics.median(after):.1f} ms (x{ratio:.2f})")
    assert factor / 2 <= ratio <= factor * 2, (ratio, before, after)
    _all_completed(run)
    _assert_correct(run)


def test_cascade_every_request_completes_or_fails_with_a_reason():
    s = _scenario([{"type": "cascade", "at_ms": 500.0, "shard": 1, "interval_ms": 1500.0}], shards=3,
                  rate=4.0, duration_s=4.0)
    run = run_real(s, profile=DEFAULT_PROFILE, timeout_s=240)
    crashes = [e for e in run.log.events if e.kind == K.FAULT_INJECTED and e.details()["fault"] == "browser_crash"]
    assert len(crashes) == 2 and [c.shard for c in crashes] == [1, 2], _summary(run)
    assert crashes[1].t_ms - crashes[0].t_ms == pytest.approx(1500.0, abs=300.0)
    hit = {c.browser for c in crashes if c.browser}
    assert hit, _summary(run)
    detected = {e.browser for e in run.log.events if e.kind == K.FAILURE_DETECTED}
    assert hit <= detected, _summary(run)
    submitted, completed, failed = _outcomes(run)
    assert run.aborted is None and submitted, _summary(run)
    assert sorted([*completed, *failed]) == submitted, _summary(run)   # each exactly once, none lost
    assert all(failed.values()), failed                                  # failures say why
    print(f"\ncascade: crashed {sorted(hit)}; {len(completed)}/{len(submitted)} completed, failed {failed}")
    assert len(completed) >= len(submitted) // 2, _summary(run)
    _assert_correct(run)
    assert not browsers.leftover_browser_pids()

"""Processor sharing on a host (sim/host.py) and what it means for a whole scenario."""

from __future__ import annotations

import dataclasses

import pytest
import simpy

from events.metrics import latency_summary
from events.scenario import Scenario, Workload
from sim.host import Host
from sim.profile import DEFAULT_PROFILE
from sim.run import run_scenario


def _finish_times(cores: float, works: list[float], threads: float = 1.0, starts: list[float] | None = None):
    env = simpy.Environment()
    host = Host(env, cores)
    done: dict[int, float] = {}
    for i, w in enumerate(works):
        def go(i=i, w=w):
            host.start(w, threads, lambda: done.__setitem__(i, env.now))
        at = (starts or [0.0] * len(works))[i]
        ev = env.timeout(at)
        ev.callbacks.append(lambda _e, go=go: go())
    env.run()
    return [done[i] for i in range(len(works))]


@pytest.mark.parametrize("n,factor", [(1, 1.0), (2, 1.0), (3, 1.5), (4, 2.0)])
def test_equal_jobs_on_two_cores(n, factor):
    assert _finish_times(2.0, [100.0] * n) == pytest.approx([100.0 * factor] * n)


def test_two_thread_jobs_share_by_demand():
    assert _finish_times(2.0, [100.0], threads=2.0) == pytest.approx([100.0])
    assert _finish_times(2.0, [100.0, 100.0], threads=2.0) == pytest.approx([200.0, 200.0])


def test_late_arrival_and_departure_change_the_rate():
    # 3 jobs of 100 on 2 cores; the third arrives at 50: 0-50 full speed (2 jobs), then 2/3 speed.
    t = _finish_times(2.0, [100.0, 100.0, 100.0], starts=[0.0, 0.0, 50.0])
    # jobs 0,1 have 50 left at t=50, at 2/3 speed -> done at 125; job 2 then has 50 left alone -> 175
    assert t == pytest.approx([125.0, 125.0, 175.0])


def test_pause_cancel_and_scale():
    env = simpy.Environment()
    host = Host(env, 1.0)
    done: dict[str, float] = {}
    a = host.start(100.0, 1.0, lambda: done.__setitem__("a", env.now))
    b = host.start(100.0, 1.0, lambda: done.__setitem__("b", env.now))
    host.pause(b, True)                          # a alone: 100 ms
    env.run(until=50.0)
    host.scale(a, 2.0)                           # 50 left -> 100 left
    env.run(until=151.0)
    assert done == {"a": pytest.approx(150.0)}
    host.pause(b, False)
    c = host.start(1000.0, 1.0, lambda: done.__setitem__("c", env.now))
    host.cancel(c)
    env.run()
    assert done["b"] == pytest.approx(251.0) and "c" not in done


def _throughput(browsers: tuple[str, ...], cores: float, seed: int = 3) -> tuple[float, float]:
    prof = dataclasses.replace(DEFAULT_PROFILE, host_cores=cores)
    s = Scenario("all-MiniLM-L6-v2", shards=4, browsers=browsers, seed=seed,
                 workload=Workload(kind="closed_loop", concurrency=4, duration_s=4.0))
    run = run_scenario(s, prof)
    lat = latency_summary(run.log)
    assert lat["requests"]["failed"] == 0 and lat["requests"]["lost"] == 0
    return lat["throughput_rps"], lat["latency_ms"]["mean"]


def test_more_browsers_than_cores_do_not_compute_faster():
    four, lat4 = _throughput(("chromium",) * 4, 2.0)
    two, lat2 = _throughput(("chromium",) * 2, 2.0)
    assert four <= two * 1.03
    assert lat4 >= lat2 * 0.97
    # ...while with enough cores the same 4 browsers do help: the model is sensitive to cores.
    four_wide, _ = _throughput(("chromium",) * 4, 8.0)
    assert four_wide > 1.3 * four


def test_a_full_host_shares_its_cores_by_weight():
    """CFS: a renderer at weight 0.2 beside a two-thread nice-0 job on 2 cores gets 2 x 0.2 / 2.2 of a core."""
    env = simpy.Environment()
    host = Host(env, 2.0)
    done: dict[str, float] = {}
    host.start(100.0, 1.0, lambda: done.__setitem__("page", env.now), weight=0.2)
    host.start(1000.0, 2.0, lambda: done.__setitem__("launch", env.now), weight=1.0)
    env.run(until=500.0)
    assert "page" not in done                     # 100 ms of work at 0.18 speed: 550 ms
    env.run()
    assert done["page"] == pytest.approx(100.0 / (2 * 0.2 / 2.2))
    # equal weights: the old rule (cores / demand) exactly
    assert _finish_times(2.0, [100.0] * 3) == pytest.approx([150.0] * 3)


def test_a_hung_page_burns_a_core_until_it_wakes():
    from events.scenario import parse_scenario
    from events.schema import EventKind as K
    prof = dataclasses.replace(DEFAULT_PROFILE, host_cores=1.0)
    base = {"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": ["chromium", "firefox"],
            "fault_tolerance_level": "none", "workload": {"kind": "iterations", "iterations": 30}}
    calm = run_scenario(parse_scenario(base), prof)
    # firefox hangs for 1 s early on; chromium's runs in that second share the single core with the spin
    hung = run_scenario(parse_scenario({**base, "faults": [{"type": "hang", "browser": "firefox", "at_ms": 0.0,
                                                           "duration_ms": 1000.0}]}), prof)

    def chromium_compute(log, until):
        t0 = next(e.t_ms for e in log.events if e.kind == K.WORKLOAD_STARTED)
        return [e.value for e in log.events if e.kind == K.SHARD_COMPLETED and e.browser.startswith("chromium")
                and e.t_ms - t0 < until]
    assert chromium_compute(hung.log, 1000.0)
    assert min(chromium_compute(hung.log, 1000.0)) > 1.5 * max(chromium_compute(calm.log, 1e9))

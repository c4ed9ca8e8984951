import pytest


def test_every_coordinator_command_has_a_world_action():
    from coordinator import commands as c
    from sim.world import SimWorld
    assert set(SimWorld._COMMANDS) == set(c.Command.__args__)


def test_a_page_runs_its_loads_one_after_another():
    """worker.js chains every task: two shards placed on one page load in turn, the second without
    the runtime init of the page's first session."""
    import dataclasses

    from events.scenario import parse_scenario
    from events.schema import EventKind as K
    from sim.profile import DEFAULT_PROFILE as P
    from sim.run import run_scenario
    prof = dataclasses.replace(P, browsers={**P.browsers, "chromium": dataclasses.replace(
        P.browsers["chromium"], load_ms=50.0, load_ms_per_mb=2.0, page_init_ms=1000.0, launch_sd_ms=0.0)})
    s = parse_scenario({"model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": ["chromium"],
                        "workload": {"kind": "iterations", "iterations": 2}})
    run = run_scenario(s, prof)
    started = [e for e in run.log.events if e.kind == K.SHARD_LOAD_STARTED]
    loaded = [e for e in run.log.events if e.kind == K.SHARD_LOADED]
    assert len(started) == 2 and started[0].t_ms == started[1].t_ms          # both asked at once
    mb = {sh.index: sh.weight_mb for sh in run.plan.shards}
    lat = 2 * prof.link_latency_ms
    first, second = sorted(loaded, key=lambda e: e.t_ms)
    assert first.t_ms - started[0].t_ms == pytest.approx(lat + 50.0 + 2.0 * mb[first.shard] + 1000.0)
    assert second.t_ms - first.t_ms == pytest.approx(lat + 50.0 + 2.0 * mb[second.shard])   # queued, no init
    assert second.value == pytest.approx(second.t_ms - started[1].t_ms)     # its load time includes the wait

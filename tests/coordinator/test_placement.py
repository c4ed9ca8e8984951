"""Placement policies (coordinator/placement.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from coordinator.placement import failover_target, place, replica_targets
from coordinator.settings import resolve
from shardtwin.errors import UnknownNameError
from shardtwin.vocab import FaultToleranceLevel as L, PlacementPolicy as P

NONE = resolve(L.NONE)


def test_round_robin_cycles_workers_and_skips_standbys(cfg_for):
    cfg = cfg_for(resolve(L.CRITICAL), shards=5, workers=("chromium", "firefox"))
    assert place(cfg) == {0: "chromium-0", 1: "firefox-1", 2: "chromium-0", 3: "firefox-1", 4: "chromium-0"}


def test_capacity_gives_the_fast_browser_more_shards(cfg_for):
    cfg = cfg_for(NONE, shards=4, placement=P.CAPACITY, gflops={"chromium-0": 3.0, "firefox-1": 1.0})
    counts = Counter(place(cfg).values())
    assert counts == {"chromium-0": 3, "firefox-1": 1}
    slow_first = cfg_for(NONE, shards=4, placement=P.CAPACITY, gflops={"chromium-0": 1.0, "firefox-1": 3.0})
    assert Counter(place(slow_first).values()) == {"firefox-1": 3, "chromium-0": 1}


def test_capacity_equal_speeds_balances_work_not_count(cfg_for):
    cfg = cfg_for(NONE, shards=3, placement=P.CAPACITY, shard_gflops=(4.0, 1.0, 1.0))
    a = place(cfg)
    assert a[0] != a[1] and a[1] != a[0] and a[1] == a[2]   # the big shard alone


def test_capacity_respects_memory(cfg_for):
    cfg = cfg_for(NONE, shards=4, placement=P.CAPACITY, gflops={"chromium-0": 10.0, "firefox-1": 1.0},
                  weight_mb=1000.0, memory_mb=2000.0)
    assert Counter(place(cfg).values()) == {"chromium-0": 2, "firefox-1": 2}


@pytest.mark.parametrize("model_type,spec,want", [
    ("audio", "", "firefox"), ("vision", "", "chromium"),
    ("multimodal", "audio", "firefox"), ("multimodal", "vision", "chromium"),
])
def test_specialization_prefers_the_seed_browser(cfg_for, model_type, spec, want):
    cfg = cfg_for(NONE, shards=3, workers=("chromium", "firefox", "chromium", "firefox"), placement=P.SPECIALIZATION,
                  model_type=model_type, specializations=(spec,) * 3)
    a = place(cfg)
    assert all(b.startswith(want) for b in a.values()), a
    assert len(set(a.values())) == 2          # spread over the matching browsers


def test_specialization_mixed_shards_and_fallback(cfg_for):
    cfg = cfg_for(NONE, shards=3, workers=("chromium", "firefox"), placement=P.SPECIALIZATION,
                  model_type="multimodal", specializations=("vision", "audio", "text"))
    a = place(cfg)
    assert a[0] == "chromium-0" and a[1] == "firefox-1"
    assert a[2] == "chromium-0"               # text wants edge: none here, so round robin


def test_history_uses_measured_speeds(cfg_for):
    kw = dict(shards=4, gflops={"chromium-0": 3.0, "firefox-1": 1.0})
    assert Counter(place(cfg_for(NONE, placement=P.HISTORY, **kw)).values())["chromium-0"] == 3   # no history: profile
    measured = cfg_for(NONE, placement=P.HISTORY, history_speed={"firefox": 3.0, "chromium": 1.0}, **kw)
    assert Counter(place(measured).values()) == {"firefox-1": 3, "chromium-0": 1}
    assert Counter(place(replace(measured, placement=P.CAPACITY)).values())["chromium-0"] == 3


def test_unknown_policy_lists_the_known(cfg_for):
    with pytest.raises(UnknownNameError, match="round_robin"):
        place(replace(cfg_for(NONE), placement="nearest"))


def test_replicas_prefer_standbys_and_never_the_primary(cfg_for):
    crit = cfg_for(resolve(L.CRITICAL), shards=3)
    prim = place(crit)
    reps = replica_targets(crit, prim)
    assert reps == {0: "chromium-2", 1: "firefox-3", 2: "chromium-2"}
    no_standby = cfg_for(replace(resolve(L.CRITICAL), standby_browsers=0), shards=3)
    reps = replica_targets(no_standby, place(no_standby))
    assert all(reps[s] != p for s, p in place(no_standby).items())


def test_failover_target_only_among_ready_with_memory(cfg_for):
    cfg = cfg_for(resolve(L.MEDIUM), memory_mb=100.0)
    assert failover_target(cfg, [], {}, set(), {}, 10.0) is None
    assert failover_target(cfg, ["firefox-1", "chromium-2"], {"firefox-1": 1}, {"chromium-0"}, {}, 10.0) == "chromium-2"
    assert failover_target(cfg, ["firefox-1"], {"firefox-1": 1}, set(), {}, 10.0) == "firefox-1"
    assert failover_target(cfg, ["firefox-1"], {}, set(), {"firefox-1": 95.0}, 10.0) is None
    assert failover_target(cfg, ["chromium-0"], {}, {"chromium-0"}, {}, 10.0) is None

"""What the coordinator is told once, before a run: shards, browser slots, settings.

Rules: built from a Scenario and its ShardPlan (plus speeds from a profile or from
history) by `build_config`; frozen; no IO. Browser ids are `<kind>-<index>` in the
order of the scenario's browser list, then the standbys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from coordinator.settings import Settings, resolve
from shardtwin.vocab import Browser, PlacementPolicy


@dataclass(frozen=True, slots=True)
class ShardInfo:
    index: int
    name: str
    deps: tuple[int, ...]
    weight_mb: float
    gflops: float
    specialization: str = ""


@dataclass(frozen=True, slots=True)
class BrowserSlot:
    id: str
    kind: Browser
    role: str = "worker"          # worker | standby
    gflops: float = 1.0           # expected speed for this browser's backend (capacity placement)
    memory_mb: float = 4096.0     # budget for shards


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    shards: tuple[ShardInfo, ...]
    browsers: tuple[BrowserSlot, ...]
    settings: Settings
    placement: PlacementPolicy = PlacementPolicy.ROUND_ROBIN
    model_type: str = "text"
    history_speed: Mapping[str, float] = field(default_factory=dict)   # browser kind -> measured GFLOPS

    def sinks(self) -> tuple[int, ...]:
        """Shards no other shard depends on: a request is complete when they are all done."""
        needed = {d for s in self.shards for d in s.deps}
        return tuple(s.index for s in self.shards if s.index not in needed)


def config_for_profile(scenario, plan, profile, history_speed: Mapping[str, float] | None = None,
                       placement: Mapping | None = None) -> CoordinatorConfig:
    """The configuration both engines use under a calibration profile: placement speeds from its
    compute rates, the smallest page memory budget. A real run and its simulated twin must decide
    alike (a failover target, a capacity placement), so they take it from the same profile.
    `placement`: a run's `placement_record` instead (a twin of a real run made under another
    profile decides as that run did)."""
    if placement:
        speeds, memory_mb = placement["speed_gflops"], float(placement["memory_mb"])
        return build_config(scenario, plan, memory_mb=memory_mb, history_speed=history_speed,
                            speed_of=lambda k, b: float(speeds[str(k)]) if str(k) in speeds else profile.gflops(k, b))
    return build_config(scenario, plan, speed_of=profile.gflops,
                        memory_mb=min(b.memory_budget_mb for b in profile.browsers.values()),
                        history_speed=history_speed)


def placement_record(cfg: CoordinatorConfig) -> dict:
    """What a run's placement decisions were made from (each browser kind's speed, the page memory
    budget): stored with the run so that a later simulated twin can decide alike."""
    return {"speed_gflops": {str(b.kind): b.gflops for b in cfg.browsers},
            "memory_mb": min((b.memory_mb for b in cfg.browsers), default=0.0)}


def build_config(scenario, plan, *, speed_of, memory_mb: float,
                 history_speed: Mapping[str, float] | None = None) -> CoordinatorConfig:
    """Config for `scenario` split by `plan`; speed_of(kind, backend) -> GFLOPS."""
    settings: Settings = resolve(scenario.fault_tolerance_level, scenario.recovery_strategy, scenario.tolerance)
    kinds = list(scenario.browser_list())
    slots: list[BrowserSlot] = []
    for i, k in enumerate(kinds):
        slots.append(BrowserSlot(f"{k}-{i}", Browser(k), "worker",
                                 speed_of(k, scenario.backend), memory_mb))
    for j in range(settings.standby_browsers):
        k = kinds[j % len(kinds)]
        idx = len(kinds) + j
        slots.append(BrowserSlot(f"{k}-{idx}", Browser(k), "standby",
                                 speed_of(k, scenario.backend), memory_mb))
    shards = tuple(ShardInfo(s.index, s.name, tuple(s.deps), float(s.weight_mb), float(s.gflops),
                             getattr(s, "specialization", "") or "") for s in plan.shards)
    return CoordinatorConfig(shards, tuple(slots), settings, scenario.placement,
                             str(plan.model_type), dict(history_speed or {}))

"""Placement policies: which browser gets which shard, and where replicas and failovers go.

Rules:
- Pure: (config, live browsers) -> assignments. Registry keyed by PlacementPolicy; a
  miss raises UnknownNameError listing the known names.
- Initial placement uses worker browsers only; standbys stay empty for failover.
- A failover target is never a browser that is not READY (invariant, tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

from coordinator.config import BrowserSlot, CoordinatorConfig, ShardInfo
from shardtwin.errors import UnknownNameError
from shardtwin.vocab import PlacementPolicy

if TYPE_CHECKING:
    from coordinator.state import State
    from events.schema import Event

Assignment = dict[int, str]     # shard -> browser id

# The seed guide's preferences: audio -> firefox, vision -> chromium, text -> edge (webnn).
PREFERRED_KIND = {"audio": "firefox", "vision": "chromium", "text": "edge", "multimodal": "chromium"}


def _workers(cfg: CoordinatorConfig) -> list[BrowserSlot]:
    return [b for b in cfg.browsers if b.role == "worker"]


def round_robin(cfg: CoordinatorConfig) -> Assignment:
    ws = _workers(cfg)
    return {s.index: ws[i % len(ws)].id for i, s in enumerate(cfg.shards)}


def _weighted(cfg: CoordinatorConfig, speed: Mapping[str, float]) -> Assignment:
    """Longest-processing-time first onto the browser that would finish earliest, within memory."""
    ws = _workers(cfg)
    load = {b.id: 0.0 for b in ws}
    mem = {b.id: 0.0 for b in ws}
    out: Assignment = {}
    for s in sorted(cfg.shards, key=lambda s: (-s.gflops, s.index)):
        fits = [b for b in ws if mem[b.id] + s.weight_mb <= b.memory_mb] or ws
        best = min(fits, key=lambda b: ((load[b.id] + s.gflops) / max(speed.get(b.id, 1e-9), 1e-9),
                                        len([x for x in out.values() if x == b.id]), b.id))
        out[s.index] = best.id
        load[best.id] += s.gflops
        mem[best.id] += s.weight_mb
    return out


def capacity(cfg: CoordinatorConfig) -> Assignment:
    return _weighted(cfg, {b.id: b.gflops for b in cfg.browsers})


def history(cfg: CoordinatorConfig) -> Assignment:
    """Capacity placement with speeds measured in past runs (by browser kind), else the profile's."""
    return _weighted(cfg, {b.id: cfg.history_speed.get(str(b.kind), b.gflops) for b in cfg.browsers})


def _shard_kind(s: ShardInfo, model_type: str) -> str:
    spec = s.specialization
    if "vision" in spec:
        return "vision"
    if "audio" in spec:
        return "audio"
    if "text" in spec:
        return "text"
    return model_type


def specialization(cfg: CoordinatorConfig) -> Assignment:
    ws = _workers(cfg)
    fallback = round_robin(cfg)
    used: dict[str, int] = {b.id: 0 for b in ws}
    out: Assignment = {}
    for s in cfg.shards:
        want = PREFERRED_KIND.get(_shard_kind(s, cfg.model_type), "")
        matching = [b for b in ws if str(b.kind) == want]
        if matching:
            best = min(matching, key=lambda b: (used[b.id], b.id))
            out[s.index] = best.id
        else:
            out[s.index] = fallback[s.index]
        used[out[s.index]] += 1
    return out


POLICIES: dict[PlacementPolicy, Callable[[CoordinatorConfig], Assignment]] = {
    PlacementPolicy.ROUND_ROBIN: round_robin,
    PlacementPolicy.CAPACITY: capacity,
    PlacementPolicy.SPECIALIZATION: specialization,
    PlacementPolicy.HISTORY: history,
}


def place(cfg: CoordinatorConfig) -> Assignment:
    try:
        policy = POLICIES[PlacementPolicy(cfg.placement)]
    except (KeyError, ValueError):
        raise UnknownNameError("placement policy", cfg.placement, [p.value for p in PlacementPolicy]) from None
    return policy(cfg)


def replica_targets(cfg: CoordinatorConfig, primaries: Assignment) -> Assignment:
    """One hot replica per shard on a different browser, preferring standbys, then the next worker."""
    ids = [b.id for b in cfg.browsers]
    standbys = [b.id for b in cfg.browsers if b.role == "standby"]
    out: Assignment = {}
    for i, (s, p) in enumerate(sorted(primaries.items())):
        if standbys:
            out[s] = standbys[i % len(standbys)]
        elif len(ids) > 1:
            out[s] = ids[(ids.index(p) + 1) % len(ids)]
    return out


def failover_target(cfg: CoordinatorConfig, ready: list[str], loads: Mapping[str, int],
                    exclude: set[str], memory_used: Mapping[str, float], need_mb: float) -> str | None:
    """Prefer an empty standby, then the least-loaded live worker with memory to spare."""
    slots = {b.id: b for b in cfg.browsers}
    cands = [b for b in ready if b not in exclude and memory_used.get(b, 0.0) + need_mb <= slots[b].memory_mb]
    if not cands:
        return None
    return min(cands, key=lambda b: (0 if slots[b].role == "standby" and loads.get(b, 0) == 0 else 1,
                                     loads.get(b, 0) / max(slots[b].gflops, 1e-9), b))


def fault_target(state: State, ev: Event) -> str | None:
    """The browser a scheduled fault hits: the one the event names, else the one holding the
    primary of the event's shard now (None: no target). Both drivers aim faults with this."""
    if ev.browser:
        return ev.browser
    if ev.shard is not None:
        return state.shards[ev.shard].primary
    return None

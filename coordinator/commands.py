"""Commands: what the coordinator asks a driver to do. Imperative names, frozen records.

Rules: a driver carries a command out and reports what happened as observations
(events.records); it never decides anything itself. Timers are commands too, so the
coordinator never sleeps: ArmTimer(key) replaces any armed timer with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from shardtwin.frozen import fast_init


@dataclass(frozen=True, slots=True)
class LaunchBrowser:
    browser: str
    kind: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class KillBrowser:
    """Fence a browser: SIGKILL its processes so it can never answer again."""
    browser: str
    reason: str


@dataclass(frozen=True, slots=True)
class CloseBrowser:
    browser: str


@dataclass(frozen=True, slots=True)
class LoadShard:
    browser: str
    shard: int


@dataclass(frozen=True, slots=True)
class RunShard:
    browser: str
    request_id: int
    shard: int
    attempt: int
    batch_size: int
    seq_len: int
    inputs: tuple[int, ...]       # shards whose kept outputs are this run's inputs (empty: the request input)


@dataclass(frozen=True, slots=True)
class ArmTimer:
    key: Hashable
    at_ms: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: Hashable


@dataclass(frozen=True, slots=True)
class FinishRun:
    reason: str


Command = LaunchBrowser | KillBrowser | CloseBrowser | LoadShard | RunShard | ArmTimer | CancelTimer | FinishRun

for _cls in Command.__args__:
    fast_init(_cls)

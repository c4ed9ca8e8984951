"""Fault-tolerance levels mapped to concrete settings, and their resolution.

Rules:
- `LEVELS` is the one table of what each level means (documented in the README).
- A scenario's explicit overrides win over its level's values; its recovery
  strategy (if given) wins over the level's strategy.
- Resolved settings always satisfy: heartbeat interval < detector timeout <
  request timeout (for phi-accrual the timeout is the detector's upper bound).
  Anything else raises ConfigError naming the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from shardtwin.errors import ConfigError
from shardtwin.vocab import FaultToleranceLevel, RecoveryStrategy


@dataclass(frozen=True, slots=True)
class Settings:
    level: FaultToleranceLevel
    strategy: RecoveryStrategy
    standby_browsers: int
    replicas: int                 # hot replicas per shard (0 or 1)
    heartbeat_interval_ms: float
    detector: str                 # fixed | phi
    detector_timeout_ms: float    # fixed: silence that means failure; phi: hard upper bound
    phi_threshold: float
    max_retries: int              # per shard per request (shard errors), and per recovery action
    backoff_ms: float             # first retry delay; doubles each attempt
    request_timeout_ms: float
    reconnect_timeout_ms: float   # how long reconnect (or progressive's first stage) waits
    restart_attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {f.name: str(getattr(self, f.name)) if f.name in ("level", "strategy") else getattr(self, f.name)
                for f in fields(self)}


L, S = FaultToleranceLevel, RecoveryStrategy

# level: standby, replicas, hb interval, detector, timeout, phi, retries, backoff, request timeout,
#        reconnect timeout, restart attempts, strategy
LEVELS: dict[FaultToleranceLevel, Settings] = {
    L.NONE: Settings(L.NONE, S.NONE, 0, 0, 1000.0, "fixed", 5000.0, 8.0, 0, 100.0, 120_000.0, 0.0, 0),
    L.LOW: Settings(L.LOW, S.RESTART, 0, 0, 1000.0, "fixed", 3000.0, 8.0, 1, 100.0, 120_000.0, 3000.0, 1),
    L.MEDIUM: Settings(L.MEDIUM, S.PROGRESSIVE, 1, 0, 500.0, "fixed", 2000.0, 8.0, 2, 50.0, 120_000.0, 1000.0, 2),
    L.HIGH: Settings(L.HIGH, S.PARALLEL, 1, 0, 250.0, "phi", 1500.0, 8.0, 3, 25.0, 120_000.0, 750.0, 3),
    L.CRITICAL: Settings(L.CRITICAL, S.FAILOVER, 2, 1, 200.0, "phi", 1000.0, 6.0, 3, 25.0, 120_000.0, 500.0, 3),
}

_OVERRIDABLE = ("standby_browsers", "replicas", "heartbeat_interval_ms", "detector", "detector_timeout_ms",
                "phi_threshold", "max_retries", "backoff_ms", "request_timeout_ms")


def resolve(level: FaultToleranceLevel, strategy: RecoveryStrategy | None = None,
            overrides: Any = None) -> Settings:
    """The level's settings with the scenario's strategy and non-None overrides applied."""
    s = LEVELS[level]
    if strategy is not None:
        s = replace(s, strategy=strategy)
        if strategy != RecoveryStrategy.NONE and s.reconnect_timeout_ms == 0:
            s = replace(s, reconnect_timeout_ms=3000.0)
        if strategy != RecoveryStrategy.NONE and s.restart_attempts == 0:
            s = replace(s, restart_attempts=1)
        if strategy == RecoveryStrategy.RETRY and s.max_retries == 0:
            s = replace(s, max_retries=2)
    if overrides is not None:
        changes = {k: getattr(overrides, k) for k in _OVERRIDABLE
                   if getattr(overrides, k, None) is not None}
        s = replace(s, **changes)
    check(s)
    return s


def check(s: Settings) -> None:
    if s.detector not in ("fixed", "phi"):
        raise ConfigError(f"detector {s.detector!r} is not known; accepted: fixed, phi")
    if s.heartbeat_interval_ms <= 0:
        raise ConfigError(f"heartbeat interval must be > 0 ms, got {s.heartbeat_interval_ms}")
    if not s.heartbeat_interval_ms < s.detector_timeout_ms:
        raise ConfigError(
            f"heartbeat interval ({s.heartbeat_interval_ms:g} ms) must be shorter than the detector timeout "
            f"({s.detector_timeout_ms:g} ms): rule heartbeat interval < detector timeout < request timeout")
    if not s.detector_timeout_ms < s.request_timeout_ms:
        raise ConfigError(
            f"detector timeout ({s.detector_timeout_ms:g} ms) must be shorter than the request timeout "
            f"({s.request_timeout_ms:g} ms): rule heartbeat interval < detector timeout < request timeout")
    if s.replicas not in (0, 1):
        raise ConfigError(f"replicas must be 0 or 1, got {s.replicas}")
    if s.standby_browsers < 0 or s.max_retries < 0:
        raise ConfigError("standby_browsers and max_retries must be >= 0")
    if s.phi_threshold <= 0:
        raise ConfigError(f"phi threshold must be > 0, got {s.phi_threshold}")

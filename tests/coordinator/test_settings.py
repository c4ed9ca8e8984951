"""Fault-tolerance levels -> settings (coordinator/settings.py LEVELS) and the ordering rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coordinator.settings import LEVELS, check, resolve
from events.scenario import Tolerance
from shardtwin.errors import ConfigError
from shardtwin.vocab import FaultToleranceLevel as L, RecoveryStrategy as RS

RULE = "heartbeat interval < detector timeout < request timeout"

# The table as documented in settings.py (and DESIGN.md: critical = a hot replica for every
# shard; low = retry + restart only). Columns: strategy, standbys, replicas, heartbeat ms,
# detector, detector timeout ms, phi threshold, retries, backoff ms, request timeout ms,
# reconnect timeout ms, restart attempts.
DOCUMENTED = {
    L.NONE: (RS.NONE, 0, 0, 1000.0, "fixed", 5000.0, 8.0, 0, 100.0, 120_000.0, 0.0, 0),
    L.LOW: (RS.RESTART, 0, 0, 1000.0, "fixed", 3000.0, 8.0, 1, 100.0, 120_000.0, 3000.0, 1),
    L.MEDIUM: (RS.PROGRESSIVE, 1, 0, 500.0, "fixed", 2000.0, 8.0, 2, 50.0, 120_000.0, 1000.0, 2),
    L.HIGH: (RS.PARALLEL, 1, 0, 250.0, "phi", 1500.0, 8.0, 3, 25.0, 120_000.0, 750.0, 3),
    L.CRITICAL: (RS.FAILOVER, 2, 1, 200.0, "phi", 1000.0, 6.0, 3, 25.0, 120_000.0, 500.0, 3),
}
FIELDS = ("strategy", "standby_browsers", "replicas", "heartbeat_interval_ms", "detector", "detector_timeout_ms",
          "phi_threshold", "max_retries", "backoff_ms", "request_timeout_ms", "reconnect_timeout_ms",
          "restart_attempts")


@pytest.mark.parametrize("level", list(L))
def test_level_resolves_to_documented_settings(level):
    s = resolve(level)
    assert s.level == level
    assert tuple(getattr(s, f) for f in FIELDS) == DOCUMENTED[level]
    assert s == LEVELS[level]
    assert s.heartbeat_interval_ms < s.detector_timeout_ms < s.request_timeout_ms


def test_levels_grow_stricter():
    order = [L.NONE, L.LOW, L.MEDIUM, L.HIGH, L.CRITICAL]
    hb = [LEVELS[x].heartbeat_interval_ms for x in order]
    det = [LEVELS[x].detector_timeout_ms for x in order]
    assert hb == sorted(hb, reverse=True) and det == sorted(det, reverse=True)
    assert [LEVELS[x].standby_browsers for x in order] == sorted(LEVELS[x].standby_browsers for x in order)
    assert LEVELS[L.CRITICAL].replicas == 1 and all(LEVELS[x].replicas == 0 for x in order[:-1])
    assert LEVELS[L.LOW].strategy == RS.RESTART and LEVELS[L.LOW].max_retries >= 1


def test_strategy_and_overrides_win():
    s = resolve(L.NONE, RS.RETRY, Tolerance(heartbeat_interval_ms=100.0, detector="phi", request_timeout_ms=9000.0))
    assert s.strategy == RS.RETRY and s.detector == "phi"
    assert s.max_retries == 2 and s.restart_attempts == 1 and s.reconnect_timeout_ms == 3000.0  # made usable
    assert (s.heartbeat_interval_ms, s.detector_timeout_ms, s.request_timeout_ms) == (100.0, 5000.0, 9000.0)
    # None leaves the level's value; strategy none stays inert
    assert resolve(L.MEDIUM, None, Tolerance()) == LEVELS[L.MEDIUM]
    assert resolve(L.NONE, RS.NONE).restart_attempts == 0


@pytest.mark.parametrize("level,override,names", [
    (L.NONE, Tolerance(heartbeat_interval_ms=5000.0), ("heartbeat interval", "detector timeout")),
    (L.MEDIUM, Tolerance(heartbeat_interval_ms=2500.0), ("heartbeat interval", "detector timeout")),
    (L.LOW, Tolerance(detector_timeout_ms=120_000.0), ("detector timeout", "request timeout")),
    (L.CRITICAL, Tolerance(request_timeout_ms=900.0), ("detector timeout", "request timeout")),
    (L.HIGH, Tolerance(detector_timeout_ms=200.0), ("heartbeat interval", "detector timeout")),
])
def test_ordering_violation_names_the_rule(level, override, names):
    with pytest.raises(ConfigError) as exc:
        resolve(level, None, override)
    msg = str(exc.value)
    assert RULE in msg and all(n in msg for n in names)
    assert "\n" not in msg


@pytest.mark.parametrize("change,needle", [
    ({"detector": "gossip"}, "detector"), ({"heartbeat_interval_ms": 0.0}, "heartbeat interval"),
    ({"replicas": 2}, "replicas"), ({"max_retries": -1}, "max_retries"), ({"phi_threshold": 0.0}, "phi"),
])
def test_other_bad_settings_raise_config_error(change, needle):
    fields = {f: getattr(LEVELS[L.MEDIUM], f) for f in ("standby_browsers", "replicas", "heartbeat_interval_ms",
                                                          "detector", "detector_timeout_ms", "phi_threshold",
                                                          "max_retries", "backoff_ms", "request_timeout_ms")}
    with pytest.raises(ConfigError, match=needle):
        resolve(L.MEDIUM, None, SimpleNamespace(**{**fields, **change}))


def test_check_accepts_every_level():
    for s in LEVELS.values():
        check(s)

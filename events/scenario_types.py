"""Scenario types: what one run asks for — model, shards, browsers, workload, faults, tolerance.

Import them from events.scenario (the public face); this module holds the definitions.

Rules:
- Frozen, slotted dataclasses. Constructors validate and normalise every field
  (enum strings -> StrEnum members, ints -> floats for times, lists -> tuples) and
  raise ScenarioError(field_path, bad_value, accepted) — never another exception.
- Fields that do not apply (e.g. `level` on a crash, `rate_per_s` on a closed loop)
  must stay at their default, so every scenario has exactly one canonical dict.
- Times in the object are milliseconds (`*_ms`) except `Workload.duration_s` and
  `Scenario.mtbf_s`; fault times are relative to the workload start (all browsers ready).
- Browser ids are `<kind>-<index in browser_list()>` (default two shards: chromium-0,
  firefox-1). A fault's `browser` target is an id, a kind (first browser of that kind)
  or a decimal index into browser_list(); `Scenario.resolve_browser` maps it to an index.
- The canonical dict (`scenario_to_dict`) includes every default; `scenario_hash` is
  sha256 of its canonical JSON, first 16 hex digits (scenario_file.py); the input
  event log: scenario_compile.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from shardtwin.errors import ScenarioError, UnknownNameError
from shardtwin.vocab import (Backend, Browser, FailureType, FaultToleranceLevel, PlacementPolicy,
                             PressureLevel, RecoveryStrategy, ShardType, WorkloadKind)

MAX_SHARDS = 1024
MAX_OPEN_LOOP_ARRIVALS = 1_000_000   # rate * duration cap: compile stays bounded
DEFAULT_SLOW_FACTOR = 4.0
DETECTORS = ("fixed", "phi")
ARRIVALS = ("poisson", "fixed")


# --- field validators: each returns the normalised value or raises ScenarioError ---

def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _int(path: str, v: object, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ScenarioError(path, v, f"an integer in [{lo}, {hi}]")
    return int(v)


def _num(path: str, v: object, lo: float = 0.0, open_lo: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and (v > lo if open_lo else v >= lo)
    if not ok:
        raise ScenarioError(path, v, f"a finite number {'>' if open_lo else '>='} {lo:g}")
    return float(v)


def _enum(path: str, v: object, enum: type[StrEnum]) -> Any:
    if isinstance(v, enum):
        return v
    if isinstance(v, str):
        try:
            return enum(v.strip().lower())
        except ValueError:
            pass
    raise ScenarioError(path, v, "one of " + ", ".join(m.value for m in enum))


def _choice(path: str, v: object, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ScenarioError(path, v, "one of " + ", ".join(choices))
    return v


def _text(path: str, v: object, allow_empty: bool = False, max_len: int = 200) -> str:
    if not isinstance(v, str) or (not v and not allow_empty) or len(v) > max_len:
        raise ScenarioError(path, v, f"a {'' if allow_empty else 'non-empty '}string of at most {max_len} characters")
    return v


def _opt(validator, path: str, v: object, *args: Any) -> Any:
    return None if v is None else validator(path, v, *args)


# --- FaultSpec ---

# Which optional parameters each failure type takes; any other must be None.
_FAULT_PARAMS: dict[FailureType, frozenset[str]] = {
    FailureType.SHARD_ERROR: frozenset(),
    FailureType.BROWSER_CRASH: frozenset(),
    FailureType.DISCONNECT: frozenset({"reconnect_delay_ms"}),
    FailureType.HANG: frozenset({"duration_ms"}),
    FailureType.SLOW: frozenset({"duration_ms", "factor"}),
    FailureType.MEMORY_PRESSURE: frozenset({"duration_ms", "level"}),
    FailureType.CASCADE: frozenset({"interval_ms", "count"}),
}
_SHARD_TARGET_ONLY = (FailureType.SHARD_ERROR, FailureType.CASCADE)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One injected fault. Target: `shard` (the browser holding its primary) or `browser`."""

    type: FailureType
    at_ms: float
    shard: int | None = None
    browser: str | None = None
    duration_ms: float | None = None
    reconnect_delay_ms: float | None = None
    level: PressureLevel | None = None
    factor: float | None = None
    interval_ms: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        t = _enum("type", self.type, FailureType)
        _set(self, "type", t)
        _set(self, "at_ms", _num("at_ms", self.at_ms))
        _set(self, "shard", _opt(_int, "shard", self.shard, 0, MAX_SHARDS - 1))
        _set(self, "browser", _opt(_text, "browser", self.browser))
        _set(self, "duration_ms", _opt(_num, "duration_ms", self.duration_ms, 0.0, True))
        _set(self, "reconnect_delay_ms", _opt(_num, "reconnect_delay_ms", self.reconnect_delay_ms))
        _set(self, "level", _opt(_enum, "level", self.level, PressureLevel))
        _set(self, "factor", _opt(_num, "factor", self.factor, 1.0, True))
        _set(self, "interval_ms", _opt(_num, "interval_ms", self.interval_ms, 0.0, True))
        _set(self, "count", _opt(_int, "count", self.count, 1, MAX_SHARDS))
        if t is FailureType.SLOW and self.factor is None:
            _set(self, "factor", DEFAULT_SLOW_FACTOR)
        self._check_applicable(t)
        self._check_target(t)

    def _check_applicable(self, t: FailureType) -> None:
        for name in ("duration_ms", "reconnect_delay_ms", "level", "factor", "interval_ms", "count"):
            value = getattr(self, name)
            if value is not None and name not in _FAULT_PARAMS[t]:
                users = ", ".join(k.value for k, ps in _FAULT_PARAMS.items() if name in ps)
                raise ScenarioError(name, value, f"null for a {t.value} fault (only {users} take it)")
        if t is FailureType.MEMORY_PRESSURE and self.level is None:
            raise ScenarioError("level", None, "one of " + ", ".join(m.value for m in PressureLevel))
        if t is FailureType.CASCADE and self.interval_ms is None:
            raise ScenarioError("interval_ms", None, "a finite number > 0 for a cascade")

    def _check_target(self, t: FailureType) -> None:
        if t in _SHARD_TARGET_ONLY:
            if self.browser is not None:
                raise ScenarioError("browser", self.browser, f"null for a {t.value} fault (it targets a shard)")
            if self.shard is None:
                raise ScenarioError("shard", None, f"a shard index for a {t.value} fault")
        elif (self.shard is None) == (self.browser is None):
            raise ScenarioError("browser" if self.browser is not None else "shard", self.browser,
                                f"exactly one target (shard or browser) for a {t.value} fault")


# --- Workload ---

@dataclass(frozen=True, slots=True)
class Workload:
    """Requests: fixed iterations (sequential), open loop (rate) or closed loop (N clients)."""

    kind: WorkloadKind = WorkloadKind.ITERATIONS
    iterations: int = 10
    rate_per_s: float | None = None
    arrival: str = "poisson"
    concurrency: int = 1
    duration_s: float | None = None
    batch_size: int = 1
    seq_len: int = 128
    think_ms: float = 0.0

    def __post_init__(self) -> None:
        k = _enum("kind", self.kind, WorkloadKind)
        _set(self, "kind", k)
        _set(self, "iterations", _int("iterations", self.iterations, 1, 10_000_000))
        _set(self, "rate_per_s", _opt(_num, "rate_per_s", self.rate_per_s, 0.0, True))
        _set(self, "arrival", _choice("arrival", self.arrival, ARRIVALS))
        _set(self, "concurrency", _int("concurrency", self.concurrency, 1, 100_000))
        _set(self, "duration_s", _opt(_num, "duration_s", self.duration_s, 0.0, True))
        _set(self, "batch_size", _int("batch_size", self.batch_size, 1, 65_536))
        _set(self, "seq_len", _int("seq_len", self.seq_len, 1, 1_048_576))
        _set(self, "think_ms", _num("think_ms", self.think_ms))
        self._check_kind(k)

    def _check_kind(self, k: WorkloadKind) -> None:
        used = {WorkloadKind.ITERATIONS: {"iterations"},
                WorkloadKind.OPEN_LOOP: {"rate_per_s", "arrival", "duration_s"},
                WorkloadKind.CLOSED_LOOP: {"concurrency", "duration_s", "think_ms"}}[k]
        for f in fields(self):
            if f.name in ("kind", "batch_size", "seq_len") or f.name in used:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                raise ScenarioError(f.name, value, f"{f.default!r} (unused by a {k.value} workload)")
        for name in used & {"rate_per_s", "duration_s"}:
            if getattr(self, name) is None:
                raise ScenarioError(name, None, f"a finite number > 0 for a {k.value} workload")
        if k is WorkloadKind.OPEN_LOOP and self.rate_per_s * self.duration_s > MAX_OPEN_LOOP_ARRIVALS:
            raise ScenarioError("rate_per_s", self.rate_per_s,
                                f"rate * duration_s <= {MAX_OPEN_LOOP_ARRIVALS} arrivals")


# --- Tolerance ---

@dataclass(frozen=True, slots=True)
class Tolerance:
    """Overrides of the fault-tolerance level's settings; None = the level's default."""

    standby_browsers: int | None = None
    replicas: int | None = None
    heartbeat_interval_ms: float | None = None
    detector: str | None = None
    detector_timeout_ms: float | None = None
    phi_threshold: float | None = None
    max_retries: int | None = None
    backoff_ms: float | None = None
    request_timeout_ms: float | None = None

    def __post_init__(self) -> None:
        _set(self, "standby_browsers", _opt(_int, "standby_browsers", self.standby_browsers, 0, 64))
        _set(self, "replicas", _opt(_int, "replicas", self.replicas, 0, 16))
        _set(self, "heartbeat_interval_ms", _opt(_num, "heartbeat_interval_ms", self.heartbeat_interval_ms, 0.0, True))
        _set(self, "detector", _opt(_choice, "detector", self.detector, DETECTORS))
        _set(self, "detector_timeout_ms", _opt(_num, "detector_timeout_ms", self.detector_timeout_ms, 0.0, True))
        _set(self, "phi_threshold", _opt(_num, "phi_threshold", self.phi_threshold, 0.0, True))
        _set(self, "max_retries", _opt(_int, "max_retries", self.max_retries, 0, 1000))
        _set(self, "backoff_ms", _opt(_num, "backoff_ms", self.backoff_ms))
        _set(self, "request_timeout_ms", _opt(_num, "request_timeout_ms", self.request_timeout_ms, 0.0, True))
        if self.detector == "fixed" and self.phi_threshold is not None:
            raise ScenarioError("phi_threshold", self.phi_threshold, "null with the fixed detector")
        # Ordering rule (among the values given): heartbeat < detector timeout < request timeout.
        chain = [(n, getattr(self, n)) for n in ("heartbeat_interval_ms", "detector_timeout_ms", "request_timeout_ms")]
        given = [(n, v) for n, v in chain if v is not None]
        for (lo_name, lo), (hi_name, hi) in zip(given, given[1:]):
            if not lo < hi:
                raise ScenarioError(hi_name, hi, f"a value > {lo_name} ({lo:g})")


# --- Scenario ---

def _canonical_model(name: str) -> str:
    """The catalogue's canonical name for `name` (aliases resolved); any name if no catalogue."""
    try:
        from models.catalogue import get_model
    except ModuleNotFoundError as exc:
        if exc.name in ("models.catalogue", "models"):
            return name
        raise
    try:
        return get_model(name).name
    except UnknownNameError as exc:
        raise ScenarioError("model", name, "one of " + ", ".join(sorted(map(str, exc.known)))) from None


@dataclass(frozen=True, slots=True)
class Scenario:
    """One run's complete input. Empty `browsers` = one per shard alternating chromium, firefox."""

    model: str
    shards: int = 2
    shard_type: ShardType = ShardType.LAYER
    browsers: tuple[Browser, ...] = ()
    backend: Backend = Backend.WASM
    placement: PlacementPolicy = PlacementPolicy.ROUND_ROBIN
    fault_tolerance_level: FaultToleranceLevel = FaultToleranceLevel.NONE
    recovery_strategy: RecoveryStrategy | None = None
    workload: Workload = field(default_factory=Workload)
    faults: tuple[FaultSpec, ...] = ()
    tolerance: Tolerance = field(default_factory=Tolerance)
    seed: int = 0
    name: str = ""
    mtbf_s: float | None = None

    def __post_init__(self) -> None:
        _set(self, "model", _canonical_model(_text("model", self.model)))
        _set(self, "shards", _int("shards", self.shards, 1, MAX_SHARDS))
        _set(self, "shard_type", _enum("shard_type", self.shard_type, ShardType))
        _set(self, "browsers", self._checked_browsers())
        _set(self, "backend", _enum("backend", self.backend, Backend))
        _set(self, "placement", _enum("placement", self.placement, PlacementPolicy))
        _set(self, "fault_tolerance_level", _enum("fault_tolerance_level", self.fault_tolerance_level,
                                                  FaultToleranceLevel))
        _set(self, "recovery_strategy", _opt(_enum, "recovery_strategy", self.recovery_strategy, RecoveryStrategy))
        for name, cls in (("workload", Workload), ("tolerance", Tolerance)):
            if not isinstance(getattr(self, name), cls):
                raise ScenarioError(name, getattr(self, name), f"a {cls.__name__}")
        _set(self, "seed", _int("seed", self.seed, 0, 2**63 - 1))
        _set(self, "name", _text("name", self.name, allow_empty=True))
        _set(self, "mtbf_s", _opt(_num, "mtbf_s", self.mtbf_s, 0.0, True))
        if not isinstance(self.faults, (tuple, list)):
            raise ScenarioError("faults", self.faults, "a list of faults")
        _set(self, "faults", tuple(self.faults))
        for i, f in enumerate(self.faults):
            self._check_fault(i, f)

    def _checked_browsers(self) -> tuple[Browser, ...]:
        if not isinstance(self.browsers, (tuple, list)) or len(self.browsers) > MAX_SHARDS:
            raise ScenarioError("browsers", self.browsers, "a list of browser kinds")
        return tuple(_enum(f"browsers[{i}]", b, Browser) for i, b in enumerate(self.browsers))

    def _check_fault(self, i: int, f: object) -> None:
        if not isinstance(f, FaultSpec):
            raise ScenarioError(f"faults[{i}]", f, "a FaultSpec")
        if f.shard is not None and f.shard >= self.shards:
            raise ScenarioError(f"faults[{i}].shard", f.shard, f"a shard index < shards ({self.shards})")
        if f.count is not None and f.shard is not None and f.shard + f.count > self.shards:
            raise ScenarioError(f"faults[{i}].count", f.count, f"at most shards - shard ({self.shards - f.shard})")
        if f.browser is not None and self.resolve_browser(f.browser) is None:
            raise ScenarioError(f"faults[{i}].browser", f.browser,
                                "a browser id (" + ", ".join(self.browser_ids()) + "), kind or index")

    def browser_list(self) -> tuple[Browser, ...]:
        """The browsers to launch (standby browsers of the tolerance level not included)."""
        if self.browsers:
            return self.browsers
        return tuple(Browser.CHROMIUM if i % 2 == 0 else Browser.FIREFOX for i in range(self.shards))

    def browser_ids(self) -> tuple[str, ...]:
        return tuple(f"{b.value}-{i}" for i, b in enumerate(self.browser_list()))

    def resolve_browser(self, target: str) -> int | None:
        """Index into browser_list() of a fault target (id, kind or index); None if none matches."""
        kinds = [b.value for b in self.browser_list()]
        ids = self.browser_ids()
        t = target.strip().lower()
        if t in ids:
            return ids.index(t)
        if t in kinds:
            return kinds.index(t)
        if t.isdecimal() and int(t) < len(kinds):
            return int(t)
        return None

    def summary(self) -> str:
        w = self.workload
        match w.kind:
            case WorkloadKind.ITERATIONS:
                load = f"{w.iterations} iterations"
            case WorkloadKind.OPEN_LOOP:
                load = f"{w.rate_per_s:g}/s {w.arrival} for {w.duration_s:g}s"
            case WorkloadKind.CLOSED_LOOP:
                load = f"{w.concurrency} clients for {w.duration_s:g}s"
        return (f"{self.model} {self.shards}x{self.shard_type.value} on {','.join(self.browser_ids())} "
                f"{self.backend.value}, ft={self.fault_tolerance_level.value}, {load}, "
                f"{len(self.faults)} fault(s), seed {self.seed}")

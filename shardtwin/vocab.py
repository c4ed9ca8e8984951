"""The one vocabulary of shardtwin (see DESIGN.md). Every package uses these names.

Each registry keyed by one of these StrEnums raises UnknownNameError listing the
known names on a miss (`parse(EnumType, value, what)`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from shardtwin.errors import UnknownNameError


class ModelType(StrEnum):
    TEXT = "text"
    VISION = "vision"
    AUDIO = "audio"
    MULTIMODAL = "multimodal"


class ShardType(StrEnum):
    LAYER = "layer"
    ATTENTION_FEEDFORWARD = "attention_feedforward"
    COMPONENT = "component"


class PlacementPolicy(StrEnum):
    ROUND_ROBIN = "round_robin"
    CAPACITY = "capacity"
    SPECIALIZATION = "specialization"
    HISTORY = "history"


class Browser(StrEnum):
    CHROMIUM = "chromium"
    FIREFOX = "firefox"
    EDGE = "edge"      # sim profile only (no Linux package here)
    SAFARI = "safari"  # sim profile only


class Backend(StrEnum):
    WEBGPU = "webgpu"
    WASM = "wasm"
    WEBNN = "webnn"


class FailureType(StrEnum):
    SHARD_ERROR = "shard_error"
    BROWSER_CRASH = "browser_crash"
    DISCONNECT = "disconnect"
    HANG = "hang"
    SLOW = "slow"
    MEMORY_PRESSURE = "memory_pressure"
    CASCADE = "cascade"


class PressureLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class RecoveryStrategy(StrEnum):
    NONE = "none"
    RETRY = "retry"
    RECONNECT = "reconnect"
    RESTART = "restart"
    FAILOVER = "failover"
    PROGRESSIVE = "progressive"
    PARALLEL = "parallel"


class FaultToleranceLevel(StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Source(StrEnum):
    SIM = "sim"
    REAL = "real"


class WorkloadKind(StrEnum):
    ITERATIONS = "iterations"      # fixed number of requests, one after another
    OPEN_LOOP = "open_loop"        # arrivals at a rate (poisson or fixed)
    CLOSED_LOOP = "closed_loop"    # N concurrent clients for a duration


E = TypeVar("E", bound=StrEnum)


def parse(enum: type[E], value: object, what: str) -> E:
    """Look a name up in a StrEnum; a miss raises UnknownNameError listing the known names."""
    try:
        return enum(str(value).strip().lower())
    except ValueError:
        raise UnknownNameError(what, value, [m.value for m in enum]) from None

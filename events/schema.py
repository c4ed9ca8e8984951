"""The event schema shared by the simulator and the real executor.

Rules:
- An Event is a frozen past-tense record of one thing that happened (or, for input
  events, that the scenario says will happen). It never changes after creation.
- One Arrow table holds every event of every run of both engines (`EVENT_SCHEMA`).
- `detail` is canonical JSON (sorted keys, compact) so that identical runs give
  byte-identical logs; `Event.make(..., **detail)` builds it.
- Conversion Event <-> Arrow row is lossless (tested by round-trip properties).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, NamedTuple

import pyarrow as pa

from shardtwin.errors import InputError
from shardtwin.vocab import Source


class EventKind(StrEnum):
    # --- input events: the compiled scenario (what will be asked / injected) ---
    SCENARIO_COMPILED = "scenario_compiled"        # detail: hash, name, scenario (canonical dict)
    REQUEST_SCHEDULED = "request_scheduled"        # open-loop / iterations arrival at t
    CLIENTS_SCHEDULED = "clients_scheduled"        # closed loop: value = concurrency
    WORKLOAD_DEADLINE = "workload_deadline"        # no new requests after t
    FAULT_SCHEDULED = "fault_scheduled"            # detail: fault spec (type, ...) + fault = its index
    # --- run lifecycle ---
    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    RUN_ABORTED = "run_aborted"
    WORKLOAD_STARTED = "workload_started"          # every primary shard serving; input times count from here
    # --- browsers ---
    BROWSER_LAUNCH_REQUESTED = "browser_launch_requested"
    BROWSER_READY = "browser_ready"                # value = launch ms; detail: capabilities
    BROWSER_CLOSED = "browser_closed"
    BROWSER_CRASHED = "browser_crashed"            # the process is gone (observed)
    BACKEND_FALLBACK = "backend_fallback"          # detail: wanted, got, reason
    MEMORY_SAMPLED = "memory_sampled"              # value = MB
    HEARTBEAT_RECEIVED = "heartbeat_received"      # no value or detail: gap = t_ms minus the browser's previous
    CONNECTION_CLOSED = "connection_closed"
    CONNECTION_RESTORED = "connection_restored"
    # --- shards ---
    SHARD_PLACED = "shard_placed"                  # detail: role primary|replica
    SHARD_LOAD_STARTED = "shard_load_started"
    SHARD_LOADED = "shard_loaded"                  # value = load ms
    SHARD_LOST = "shard_lost"
    SHARD_LOAD_FAILED = "shard_load_failed"        # detail: reason
    # --- requests ---
    REQUEST_SUBMITTED = "request_submitted"
    SHARD_STARTED = "shard_started"
    SHARD_COMPLETED = "shard_completed"            # value = compute ms
    SHARD_FAILED = "shard_failed"                  # detail: reason
    TRANSFER_COMPLETED = "transfer_completed"      # value = bytes; detail: ms, direction in|out
    REQUEST_COMPLETED = "request_completed"        # value = latency ms
    REQUEST_FAILED = "request_failed"              # value = latency ms; detail: reason
    # --- faults, detection, recovery ---
    FAULT_INJECTED = "fault_injected"              # detail: fault (the failure type), params
    FAULT_CLEARED = "fault_cleared"
    FAILURE_SUSPECTED = "failure_suspected"        # detector fired; detail: detector, silence_ms
    FAILURE_DETECTED = "failure_detected"          # no value; detail: cause, shards (request_id: shard error)
    RECOVERY_STARTED = "recovery_started"          # detail: strategy, action, target, shards
    RECOVERY_COMPLETED = "recovery_completed"      # value = ms since detection
    RECOVERY_FAILED = "recovery_failed"
    # --- real-only facts ---
    PROCESS_OBSERVED = "process_observed"          # value = RSS MB; detail: pid
    MESSAGE_REJECTED = "message_rejected"          # worker channel refused a frame


INPUT_KINDS = frozenset({
    EventKind.SCENARIO_COMPILED, EventKind.REQUEST_SCHEDULED, EventKind.CLIENTS_SCHEDULED,
    EventKind.WORKLOAD_DEADLINE, EventKind.FAULT_SCHEDULED,
})


EVENT_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("source", pa.dictionary(pa.int8(), pa.string()), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("t_ms", pa.float64(), nullable=False),
    pa.field("kind", pa.dictionary(pa.int16(), pa.string()), nullable=False),
    pa.field("request_id", pa.int64()),
    pa.field("shard", pa.int32()),
    pa.field("browser", pa.string()),
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("value", pa.float64()),
    pa.field("detail", pa.string()),
])


def canonical_json(obj: Any) -> str:
    """Compact, sorted JSON: the same data always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


class Event(NamedTuple):
    """One row of the event log. `seq` orders events within a run (ties in t_ms).

    Immutable; a NamedTuple rather than a frozen dataclass because the simulator builds
    millions of them (construction is 3-4x cheaper, and so is pickling to pool workers)."""

    kind: EventKind
    t_ms: float
    seq: int = 0
    request_id: int | None = None
    shard: int | None = None
    browser: str | None = None
    attempt: int = 0
    value: float | None = None
    detail: str | None = None

    @staticmethod
    def make(kind: EventKind, t_ms: float, *, request_id: int | None = None, shard: int | None = None,
             browser: str | None = None, attempt: int = 0, value: float | None = None,
             seq: int = 0, **detail: Any) -> "Event":
        if value is not None and not math.isfinite(value):
            raise ValueError(f"event value must be finite, got {value}")
        return Event(kind, float(t_ms), seq, request_id, shard, browser, attempt,
                     None if value is None else float(value),
                     canonical_json(detail) if detail else None)

    def details(self) -> dict[str, Any]:
        return json.loads(self.detail) if self.detail else {}

    def with_seq(self, seq: int) -> "Event":
        return self._replace(seq=seq)


@dataclass(frozen=True, slots=True)
class EventLog:
    """All events of one run of one engine, in seq order."""

    run_id: str
    source: Source
    events: tuple[Event, ...] = field(default_factory=tuple)


def to_arrow(log: EventLog) -> pa.Table:
    ev = log.events
    n = len(ev)
    cols = {
        "run_id": pa.array([log.run_id] * n, pa.string()),
        "source": pa.array([str(log.source)] * n, pa.string()).dictionary_encode().cast(EVENT_SCHEMA.field("source").type),
        "seq": pa.array([e.seq for e in ev], pa.int64()),
        "t_ms": pa.array([e.t_ms for e in ev], pa.float64()),
        "kind": pa.array([str(e.kind) for e in ev], pa.string()).dictionary_encode().cast(EVENT_SCHEMA.field("kind").type),
        "request_id": pa.array([e.request_id for e in ev], pa.int64()),
        "shard": pa.array([e.shard for e in ev], pa.int32()),
        "browser": pa.array([e.browser for e in ev], pa.string()),
        "attempt": pa.array([e.attempt for e in ev], pa.int32()),
        "value": pa.array([e.value for e in ev], pa.float64()),
        "detail": pa.array([e.detail for e in ev], pa.string()),
    }
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)


def from_arrow(table: pa.Table) -> list[EventLog]:
    """Split an events table (any column order, dictionary or plain strings) into per-run logs."""
    missing = [f.name for f in EVENT_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InputError(f"event table lacks column(s) {', '.join(missing)}; expected {', '.join(EVENT_SCHEMA.names)}")
    rows = table.select(EVENT_SCHEMA.names).to_pylist()
    logs: dict[tuple[str, str], list[Event]] = {}
    for r in rows:
        try:
            kind = EventKind(r["kind"])
        except ValueError:
            raise InputError(f"unknown event kind {r['kind']!r} in event table") from None
        logs.setdefault((r["run_id"], r["source"]), []).append(Event(
            kind, r["t_ms"], r["seq"], r["request_id"], r["shard"], r["browser"],
            r["attempt"], r["value"], r["detail"]))
    return [EventLog(run_id, Source(src), tuple(sorted(evs, key=lambda e: e.seq)))
            for (run_id, src), evs in logs.items()]


def numbered(events: Iterable[Event], start: int = 0) -> tuple[Event, ...]:
    """Give events consecutive seq numbers in the given order."""
    return tuple(e.with_seq(start + i) for i, e in enumerate(events))


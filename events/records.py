"""Typed event records: one frozen, slotted, past-tense dataclass per event kind.

Rules:
- A record is what the coordinator folds and what drivers observe; an `Event` row
  (events.schema) is how it is stored. `to_event` / `from_event` convert losslessly.
- Fields named `request_id`, `shard`, `browser`, `attempt` go to the columns of the
  same name; the field named in `VALUE` goes to `value`; every other field goes to
  the canonical JSON `detail`. Tuples are stored as JSON lists and come back as tuples.
- Records never change; a later fact is a new record.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

from events.schema import Event, EventKind, canonical_json
from shardtwin.frozen import fast_init

_COLUMNS = ("request_id", "shard", "browser", "attempt")


@dataclass(frozen=True, slots=True)
class Record:
    KIND: ClassVar[EventKind]
    VALUE: ClassVar[str | None] = None
    t_ms: float


# --- workload and run lifecycle --------------------------------------------

@dataclass(frozen=True, slots=True)
class ClientsScheduled(Record):
    KIND = EventKind.CLIENTS_SCHEDULED
    VALUE = "concurrency"
    concurrency: int = 1
    total: int | None = None          # stop after this many requests (iterations)
    think_ms: float = 0.0
    batch_size: int = 1
    seq_len: int = 128


@dataclass(frozen=True, slots=True)
class RequestScheduled(Record):
    KIND = EventKind.REQUEST_SCHEDULED
    request_id: int = 0
    batch_size: int = 1
    seq_len: int = 128


@dataclass(frozen=True, slots=True)
class WorkloadDeadline(Record):
    KIND = EventKind.WORKLOAD_DEADLINE


@dataclass(frozen=True, slots=True)
class WorkloadStarted(Record):
    KIND = EventKind.WORKLOAD_STARTED


@dataclass(frozen=True, slots=True)
class RunStarted(Record):
    KIND = EventKind.RUN_STARTED
    engine: str = ""


@dataclass(frozen=True, slots=True)
class RunFinished(Record):
    KIND = EventKind.RUN_FINISHED
    reason: str = "done"


# --- browsers ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BrowserLaunchRequested(Record):
    KIND = EventKind.BROWSER_LAUNCH_REQUESTED
    browser: str = ""
    kind: str = ""
    incarnation: int = 0
    role: str = "worker"              # worker | standby


@dataclass(frozen=True, slots=True)
class BrowserReady(Record):
    KIND = EventKind.BROWSER_READY
    VALUE = "launch_ms"
    browser: str = ""
    launch_ms: float = 0.0
    capabilities: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class BrowserExited(Record):
    """The browser process is gone (crash, OOM, killed from outside or by us)."""
    KIND = EventKind.BROWSER_CRASHED
    browser: str = ""
    reason: str = "exited"
    incarnation: int = 0              # which launch of the browser died (0: not known, the current one)


@dataclass(frozen=True, slots=True)
class BrowserClosed(Record):
    KIND = EventKind.BROWSER_CLOSED
    browser: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Record):
    KIND = EventKind.CONNECTION_CLOSED
    browser: str = ""
    incarnation: int = 0              # which launch's socket closed (0: not known, the current one)


@dataclass(frozen=True, slots=True)
class ConnectionRestored(Record):
    KIND = EventKind.CONNECTION_RESTORED
    browser: str = ""
    loaded: tuple[int, ...] = ()      # shards still loaded in the page


@dataclass(frozen=True, slots=True)
class HeartbeatReceived(Record):
    KIND = EventKind.HEARTBEAT_RECEIVED
    browser: str = ""


@dataclass(frozen=True, slots=True)
class MemorySampled(Record):
    KIND = EventKind.MEMORY_SAMPLED
    VALUE = "mb"
    browser: str = ""
    mb: float = 0.0


@dataclass(frozen=True, slots=True)
class BackendFallback(Record):
    KIND = EventKind.BACKEND_FALLBACK
    browser: str = ""
    wanted: str = ""
    got: str = ""
    reason: str = ""


# --- shards -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ShardPlaced(Record):
    KIND = EventKind.SHARD_PLACED
    shard: int = 0
    browser: str = ""
    role: str = "primary"             # primary | replica


@dataclass(frozen=True, slots=True)
class ShardLoadStarted(Record):
    KIND = EventKind.SHARD_LOAD_STARTED
    shard: int = 0
    browser: str = ""


@dataclass(frozen=True, slots=True)
class ShardLoaded(Record):
    KIND = EventKind.SHARD_LOADED
    VALUE = "load_ms"
    shard: int = 0
    browser: str = ""
    load_ms: float = 0.0               # asked to loaded, coordinator clock
    fetch_ms: float | None = None      # the page's own split (page clock; real runs only): weight fetch
    create_ms: float | None = None     # ... and session create


@dataclass(frozen=True, slots=True)
class ShardLoadFailed(Record):
    KIND = EventKind.SHARD_LOAD_FAILED
    shard: int = 0
    browser: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ShardLost(Record):
    KIND = EventKind.SHARD_LOST
    shard: int = 0
    browser: str = ""


# --- requests ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestSubmitted(Record):
    KIND = EventKind.REQUEST_SUBMITTED
    request_id: int = 0
    client: int | None = None
    batch_size: int = 1
    seq_len: int = 128


@dataclass(frozen=True, slots=True)
class ShardStarted(Record):
    KIND = EventKind.SHARD_STARTED
    request_id: int = 0
    shard: int = 0
    browser: str = ""
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class ShardCompleted(Record):
    KIND = EventKind.SHARD_COMPLETED
    VALUE = "compute_ms"
    request_id: int = 0
    shard: int = 0
    browser: str = ""
    attempt: int = 0
    compute_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ShardFailed(Record):
    KIND = EventKind.SHARD_FAILED
    request_id: int = 0
    shard: int = 0
    browser: str = ""
    attempt: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransferCompleted(Record):
    KIND = EventKind.TRANSFER_COMPLETED
    VALUE = "nbytes"
    request_id: int = 0
    shard: int = 0
    browser: str = ""
    nbytes: float = 0.0
    ms: float = 0.0
    direction: str = "in"             # in: coordinator -> browser; out: browser -> coordinator


@dataclass(frozen=True, slots=True)
class RequestCompleted(Record):
    KIND = EventKind.REQUEST_COMPLETED
    VALUE = "latency_ms"
    request_id: int = 0
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class RequestFailed(Record):
    KIND = EventKind.REQUEST_FAILED
    VALUE = "latency_ms"
    request_id: int = 0
    latency_ms: float = 0.0
    reason: str = ""


# --- faults, detection, recovery --------------------------------------------

@dataclass(frozen=True, slots=True)
class FaultInjected(Record):
    KIND = EventKind.FAULT_INJECTED
    fault: str = ""
    browser: str | None = None
    shard: int | None = None
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class FaultCleared(Record):
    KIND = EventKind.FAULT_CLEARED
    fault: str = ""
    browser: str | None = None


@dataclass(frozen=True, slots=True)
class FailureSuspected(Record):
    KIND = EventKind.FAILURE_SUSPECTED
    browser: str = ""
    detector: str = ""
    silence_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class FailureDetected(Record):
    KIND = EventKind.FAILURE_DETECTED
    browser: str = ""
    request_id: int | None = None     # set for a shard error: the request whose shard threw
    cause: str = ""                   # exited | connection_closed | heartbeat_timeout | load_failed
    shards: tuple[int, ...] = ()      # primary shards lost with it


@dataclass(frozen=True, slots=True)
class RecoveryStarted(Record):
    KIND = EventKind.RECOVERY_STARTED
    browser: str = ""                 # the failed browser
    request_id: int | None = None     # set when recovering one request's shard (shard error)
    strategy: str = ""
    action: str = ""                  # promote | reconnect | failover | restart | retry
    target: str | None = None         # where the shards go
    shards: tuple[int, ...] = ()
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class RecoveryCompleted(Record):
    KIND = EventKind.RECOVERY_COMPLETED
    VALUE = "recovery_ms"
    browser: str = ""
    request_id: int | None = None
    strategy: str = ""
    action: str = ""
    target: str | None = None
    recovery_ms: float = 0.0          # from detection to every lost shard serving again


@dataclass(frozen=True, slots=True)
class RecoveryFailed(Record):
    KIND = EventKind.RECOVERY_FAILED
    browser: str = ""
    request_id: int | None = None
    strategy: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProcessObserved(Record):
    KIND = EventKind.PROCESS_OBSERVED
    VALUE = "rss_mb"
    browser: str = ""
    pid: int = 0
    rss_mb: float = 0.0


@dataclass(frozen=True, slots=True)
class MessageRejected(Record):
    KIND = EventKind.MESSAGE_REJECTED
    browser: str | None = None
    reason: str = ""


RECORD_TYPES: dict[EventKind, type[Record]] = {   # dataclass(slots=True) replaces each class; the
    cls.KIND: cls for cls in Record.__subclasses__() if "__slots__" in cls.__dict__   # pre-slots one may linger
}
for _cls in RECORD_TYPES.values():
    fast_init(_cls)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _tupled(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tupled(x) for x in v)
    return v


_CONVERTERS: dict[type, Any] = {}


def _converter(cls: type) -> Any:
    """A record class's row converter, built once from its fields (the sim converts millions).

    The detail JSON of a record is cached by its field values: most detailed records of a
    run repeat the same few (request_submitted's batch/seq/client, shard_placed's role)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "t_ms"]
    col = {c: (f"r.{c}" if c in names else ("0" if c == "attempt" else "None")) for c in _COLUMNS}
    if "attempt" in names:
        col["attempt"] = "int(r.attempt or 0)"
    value = f"(None if r.{cls.VALUE} is None else float(r.{cls.VALUE}))" if cls.VALUE else "None"
    details = [n for n in names if n not in _COLUMNS and n != cls.VALUE]
    env = {"_Event": Event, "_K": cls.KIND, "_cj": canonical_json, "_js": _jsonable, "_cache": {}}
    if details:
        key = "(" + "".join(f"r.{n}, type(r.{n}), " for n in details) + ")"   # 1 == 1.0 == True, not in JSON
        make = "_cj({" + ", ".join(f"{n!r}: _js(r.{n})" for n in details) + "})"
        env["_detail"] = eval(f"lambda r: {make}", env)  # noqa: S307 - built from field names only
        env["_keyed"] = eval(f"lambda r: {key}", env)    # noqa: S307
        detail = "_cached(r)"
    else:
        detail = "None"
    src = (f"lambda r, seq: _Event(_K, float(r.t_ms), seq, {col['request_id']}, {col['shard']}, "
           f"{col['browser']}, {col['attempt']}, {value}, {detail})")

    def _cached(r: Any) -> str:
        k = env["_keyed"](r)
        if tuple in k:                      # nested values (1 and 1.0 inside would share a key): no caching
            return env["_detail"](r)
        try:
            got = env["_cache"].get(k)
        except TypeError:                   # an unhashable field value: no caching
            return env["_detail"](r)
        if got is None:
            if len(env["_cache"]) > 4096:
                env["_cache"].clear()
            got = env["_cache"][k] = env["_detail"](r)
        return got
    env["_cached"] = _cached
    fn = eval(src, env)  # noqa: S307 - source built above from dataclass field names only
    _CONVERTERS[cls] = fn
    return fn


def to_event(rec: Record, seq: int = 0) -> Event:
    conv = _CONVERTERS.get(type(rec)) or _converter(type(rec))
    return conv(rec, seq)


def to_events(recs: Iterable[Record], start: int = 0) -> list[Event]:
    """Records as rows numbered from `start` (what a run's log is stored as)."""
    convs = _CONVERTERS
    out = []
    for i, rec in enumerate(recs, start):
        conv = convs.get(type(rec)) or _converter(type(rec))
        out.append(conv(rec, i))
    return out


def from_event(ev: Event) -> Record:
    cls = RECORD_TYPES.get(ev.kind)
    if cls is None:
        raise KeyError(f"no typed record for event kind {ev.kind}")
    names = {f.name for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {"t_ms": ev.t_ms}
    for c in _COLUMNS:
        if c in names:
            kw[c] = getattr(ev, c)
    if cls.VALUE is not None:
        kw[cls.VALUE] = ev.value
    if ev.detail:
        for k, v in json.loads(ev.detail).items():
            kw[k] = _tupled(v)
    return cls(**kw)


# --- helpers both drivers share ----------------------------------------------

# Input kinds a driver replays as observations at their scheduled time (FAULT_SCHEDULED is
# injected instead; SCENARIO_COMPILED is not replayed).
REPLAYED_KINDS = frozenset({EventKind.CLIENTS_SCHEDULED, EventKind.REQUEST_SCHEDULED, EventKind.WORKLOAD_DEADLINE})

_NOT_FAULT_PARAMS = ("type", "at_ms", "shard", "browser")


def retimed(rec: Record, t_ms: float) -> Record:
    """The same record observed at `t_ms` (an input replayed when its time comes)."""
    return dataclasses.replace(rec, t_ms=t_ms)


def fault_params(details: dict) -> tuple[tuple[str, Any], ...]:
    """A scheduled fault's details as FaultInjected.params: sorted, without the targeting keys
    (type, at_ms, shard, browser) and without unset (None) values."""
    return tuple(sorted((k, v) for k, v in details.items() if k not in _NOT_FAULT_PARAMS and v is not None))

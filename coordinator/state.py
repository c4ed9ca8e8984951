"""Coordinator state as a fold over typed event records.

Rules:
- `apply(state, record)` is the only way state changes; the coordinator applies every
  observation it receives and every decision it makes, in log order. Hence
  `fold(initial_state(cfg), log)` rebuilds the live state exactly (tested).
- `apply` mutates the state it is given (one owner: the coordinator or a rebuild) for
  speed; it reads no clock and does no IO.
- Stale facts (a result for an attempt that is no longer running, a heartbeat from a
  fenced browser) change nothing but counters that say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from coordinator.config import CoordinatorConfig
from events import records as r

# Browser statuses
LAUNCHING, READY, DISCONNECTED, FAILED, DEAD, CLOSED = (
    "launching", "ready", "disconnected", "failed", "dead", "closed")
# Shard statuses
UNPLACED, LOADING, SERVING, RECOVERING, UNAVAILABLE = (
    "unplaced", "loading", "serving", "recovering", "unavailable")


@dataclass(slots=True)
class BrowserState:
    kind: str
    role: str
    status: str = "idle"
    incarnation: int = 0
    loaded: set[int] = field(default_factory=set)
    loading: set[int] = field(default_factory=set)
    last_heartbeat: float | None = None
    last_seen: float | None = None                         # last message of any kind (liveness evidence)
    beats: int = 0                                         # heartbeats since ready
    load_since_beat: bool = False                          # a shard load overlapped the current gap
    gaps: list[float] = field(default_factory=list)       # recent heartbeat gaps (phi-accrual window)
    settled_gaps: int = 0                                  # gaps added since ready or the last load ended


@dataclass(slots=True)
class ShardState:
    primary: str | None = None
    replicas: set[str] = field(default_factory=set)
    status: str = UNPLACED


@dataclass(slots=True)
class RequestState:
    submitted: float
    batch_size: int
    seq_len: int
    client: int | None
    done: set[int] = field(default_factory=set)
    running: dict[int, tuple[str, int]] = field(default_factory=dict)   # shard -> (browser, attempt)
    attempts: dict[int, int] = field(default_factory=dict)              # shard -> last attempt number
    errors: dict[int, int] = field(default_factory=dict)                # shard -> shard errors so far
    outcome: str | None = None                                          # completed | failed:<reason>


@dataclass(slots=True)
class RecoveryState:
    browser: str
    strategy: str
    detected: float
    shards: tuple[int, ...]
    action: str = ""
    target: str | None = None
    attempt: int = 0
    request_id: int | None = None


def recovery_key(browser: str, request_id: int | None) -> str:
    """A browser's recovery, or one request's shard-error recovery on that browser."""
    return browser if request_id is None else f"{browser}#req{request_id}"


@dataclass(slots=True)
class State:
    browsers: dict[str, BrowserState]
    shards: dict[int, ShardState]
    requests: dict[int, RequestState] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)
    recoveries: dict[str, RecoveryState] = field(default_factory=dict)
    workload_started: float | None = None
    deadline_passed: bool = False
    clients: dict[int, int] = field(default_factory=dict)     # client -> requests submitted
    client_total: int | None = None
    client_params: tuple[float, int, int] = (0.0, 1, 128)     # think_ms, batch, seq
    next_request: int = 0
    stale: int = 0
    completed: int = 0
    failed: int = 0
    finished: bool = False

    def snapshot(self) -> dict:
        """A comparable summary of the domain state (timers excluded)."""
        return {
            "browsers": {b: (s.status, s.incarnation, sorted(s.loaded)) for b, s in sorted(self.browsers.items())},
            "shards": {i: (s.primary, sorted(s.replicas), s.status) for i, s in sorted(self.shards.items())},
            "requests": {i: q.outcome for i, q in sorted(self.requests.items())},
            "recovering": sorted(self.recoveries),
            "completed": self.completed, "failed": self.failed, "stale": self.stale,
        }


def initial_state(cfg: CoordinatorConfig) -> State:
    return State(
        browsers={b.id: BrowserState(str(b.kind), b.role) for b in cfg.browsers},
        shards={s.index: ShardState() for s in cfg.shards},
    )


def is_stale(st: State, browser: str, incarnation: int) -> bool:
    """A process/connection fact about an incarnation we already replaced (0: not known)."""
    return bool(incarnation) and incarnation != st.browsers[browser].incarnation


def fold(state: State, recs: Iterable[r.Record]) -> State:
    for rec in recs:
        apply(state, rec)
    return state


def apply(st: State, rec: r.Record) -> State:  # noqa: C901 - one arm per record kind
    match rec:   # the most frequent records first
        case r.HeartbeatReceived(browser=b, t_ms=t):
            _heartbeat(st.browsers[b], t)
        case r.ShardStarted(request_id=q, shard=s, browser=b, attempt=a):
            rq = st.requests[q]
            rq.running[s] = (b, a)
            rq.attempts[s] = a
        case r.ShardCompleted(request_id=q, shard=s, browser=b, attempt=a):
            rq = st.requests.get(q)
            _seen(st.browsers[b], rec.t_ms)
            if rq is None or rq.running.get(s) != (b, a):
                st.stale += 1
            else:
                del rq.running[s]
                rq.done.add(s)
        case r.BrowserLaunchRequested(browser=b, incarnation=inc):
            bs = st.browsers[b]
            bs.status, bs.incarnation, bs.last_heartbeat, bs.last_seen = LAUNCHING, inc, None, None
            bs.beats, bs.load_since_beat, bs.settled_gaps = 0, False, 0
            bs.loaded.clear(); bs.loading.clear(); bs.gaps.clear()
        case r.BrowserReady(browser=b, t_ms=t):
            bs = st.browsers[b]
            if bs.status == LAUNCHING:
                bs.status, bs.last_heartbeat = READY, t
            else:
                st.stale += 1
        case r.BrowserExited(browser=b, incarnation=inc) if is_stale(st, b, inc):
            st.stale += 1     # the exit of an incarnation we already replaced
        case r.ConnectionClosed(browser=b, incarnation=inc) if is_stale(st, b, inc):
            st.stale += 1
        case r.BrowserExited(browser=b):
            _lose_browser(st.browsers[b], DEAD)
        case r.BrowserClosed(browser=b):
            _lose_browser(st.browsers[b], CLOSED)
        case r.ConnectionClosed(browser=b):
            bs = st.browsers[b]
            if bs.status == READY:
                bs.status = DISCONNECTED
        case r.ConnectionRestored(browser=b, loaded=loaded, t_ms=t):
            bs = st.browsers[b]
            if bs.status in (DISCONNECTED, FAILED):
                bs.status, bs.last_heartbeat = READY, t
                bs.loaded = set(loaded)   # what the page reports it still holds
        case r.FailureDetected(browser=b, cause=cause):
            bs = st.browsers[b]
            if cause != "shard_error" and bs.status not in (DEAD, CLOSED):
                bs.status = FAILED
        case r.ShardPlaced(shard=s, browser=b, role=role):
            sh = st.shards[s]
            if role == "primary":
                sh.replicas.discard(b)
                sh.primary = b
                sh.status = SERVING if s in st.browsers[b].loaded else LOADING
            else:
                sh.replicas.add(b)
        case r.ShardLoadStarted(shard=s, browser=b):
            st.browsers[b].loading.add(s)
            st.browsers[b].load_since_beat = True
        case r.ShardLoaded(shard=s, browser=b, t_ms=t):
            bs = st.browsers[b]
            _seen(bs, t)
            bs.loading.discard(s)
            bs.load_since_beat = True   # the gap now open overlapped this load (it began before the last beat)
            bs.settled_gaps = 0         # the new session's first runs follow
            if bs.status in (READY, LAUNCHING):
                bs.loaded.add(s)
                sh = st.shards[s]
                if sh.primary == b:
                    sh.status = SERVING
        case r.ShardLoadFailed(shard=s, browser=b):
            st.browsers[b].loading.discard(s)
        case r.ShardLost(shard=s, browser=b):
            st.browsers[b].loaded.discard(s)
            sh = st.shards[s]
            sh.replicas.discard(b)
            if sh.primary == b:
                sh.primary, sh.status = None, RECOVERING
        case r.RequestSubmitted(request_id=q, t_ms=t, client=c, batch_size=bsz, seq_len=sl):
            st.requests[q] = RequestState(t, bsz, sl, c)
            st.active.add(q)
            st.next_request = max(st.next_request, q + 1)
            if c is not None:
                st.clients[c] = st.clients.get(c, 0) + 1
        case r.ShardFailed(request_id=q, shard=s, browser=b, attempt=a, reason=why):
            if why != "browser_failed":       # the page itself answered (our own verdicts say browser_failed)
                _seen(st.browsers[b], rec.t_ms)
            rq = st.requests.get(q)
            if rq is None or rq.running.get(s) != (b, a):
                st.stale += 1
            else:
                del rq.running[s]
                if why != "browser_failed":
                    rq.errors[s] = rq.errors.get(s, 0) + 1
        case r.RequestCompleted(request_id=q):
            _finish(st, q, "completed")
            st.completed += 1
        case r.RequestFailed(request_id=q, reason=why):
            _finish(st, q, f"failed:{why}")
            st.failed += 1
        case r.RecoveryStarted(browser=b, request_id=q, strategy=strat, action=act, target=tgt, shards=shs,
                               attempt=a, t_ms=t):
            key = recovery_key(b, q)
            rec_ = st.recoveries.get(key)
            if rec_ is None:
                rec_ = st.recoveries[key] = RecoveryState(b, strat, t, tuple(shs), request_id=q)
            rec_.action, rec_.target, rec_.attempt = act, tgt, a
            for s in shs:
                if st.shards[s].status != SERVING:
                    st.shards[s].status = RECOVERING
        case r.RecoveryCompleted(browser=b, request_id=q):
            st.recoveries.pop(recovery_key(b, q), None)
        case r.RecoveryFailed(browser=b, request_id=q):
            rec_ = st.recoveries.pop(recovery_key(b, q), None)
            for s in (rec_.shards if rec_ else ()):
                if st.shards[s].primary is None:
                    st.shards[s].status = UNAVAILABLE
        case r.WorkloadStarted(t_ms=t):
            st.workload_started = t
        case r.WorkloadDeadline():
            st.deadline_passed = True
        case r.ClientsScheduled(total=total, think_ms=think, batch_size=bsz, seq_len=sl):
            st.client_total = total
            st.client_params = (think, bsz, sl)
        case r.RunFinished():
            st.finished = True
        case _:
            pass  # records that carry no coordinator state (faults, samples, transfers, ...)
    return st


def _lose_browser(bs: BrowserState, status: str) -> None:
    bs.status = status
    bs.loaded.clear(); bs.loading.clear()


def _heartbeat(bs: BrowserState, t: float) -> None:
    """The phi window holds gaps between two heartbeats of a settled page: not the gap from
    ready to the first heartbeat, nor a gap that a shard load overlapped (a load blocks some
    pages' main thread for seconds; the detector already tolerates loads, see recovery.py)."""
    if bs.status not in (READY, FAILED):
        return
    if bs.last_heartbeat is not None and bs.beats > 0 and not bs.load_since_beat and not bs.loading:
        bs.gaps.append(t - bs.last_heartbeat)
        bs.settled_gaps += 1
        if len(bs.gaps) > 100:
            del bs.gaps[0]
    bs.beats += 1
    bs.load_since_beat = False
    bs.last_heartbeat = t


def _seen(bs: BrowserState, t: float) -> None:
    """Any answer from a ready page is evidence that it is alive (piggybacked heartbeat)."""
    if bs.status == READY and (bs.last_seen is None or t > bs.last_seen):
        bs.last_seen = t


def _finish(st: State, q: int, outcome: str) -> None:
    rq = st.requests[q]
    rq.outcome = outcome
    rq.running.clear()
    st.active.discard(q)

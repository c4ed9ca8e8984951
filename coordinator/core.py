"""The coordinator: pure control plane shared by the simulator and the real executor.

Rules:
- sans-IO: `start(now)`, `handle(observation, now)` and `timer(key, now)` return commands;
  nothing here sleeps, reads a clock or touches a socket. `now` is the driver's clock (ms).
- Every observation and every decision is a typed record that goes through
  `_commit` (fold into state + append to `log`): state == fold(log), always.
- Request lifecycle: a request's shard runs as soon as all its dependencies are done and
  its shard has a SERVING primary on a READY browser. Completed shard outputs are kept
  (by the driver, keyed by request and shard), so recovery reruns only lost shards.
- Every submitted request ends in exactly one RequestCompleted or RequestFailed.
"""

from __future__ import annotations

from typing import Hashable

from coordinator import commands as c
from coordinator.config import CoordinatorConfig
from coordinator.detector import suspicion_delay
from coordinator.placement import place, replica_targets
from coordinator.recovery import RecoveryRules
from coordinator.state import LAUNCHING, READY, SERVING, UNAVAILABLE, State, apply, initial_state
from events import records as r


class Coordinator(RecoveryRules):
    def __init__(self, cfg: CoordinatorConfig) -> None:
        self.cfg = cfg
        self.s = cfg.settings
        self.st: State = initial_state(cfg)
        self.log: list[r.Record] = []
        self.deps = {sh.index: sh.deps for sh in cfg.shards}
        self.sinks = frozenset(cfg.sinks())
        self.weight_mb = {sh.index: sh.weight_mb for sh in cfg.shards}
        self._out: list[c.Command] = []
        self._backoff: set[tuple[int, int]] = set()   # (request, shard) waiting for a retry timer
        self._ladders: dict[str, tuple[str, ...]] = {}   # failed browser -> its recovery actions, in order
        self._draining = False
        self._aborted = False                            # abort() ran: no request may start any more
        self._hb_armed: set[str] = set()                 # browsers with a detector timer pending
        self._fenced: set[str] = set()                   # incarnations we already killed
        self._relaunches: dict[str, int] = {}            # spares relaunched per browser (capacity restore)
        self._now = 0.0

    # --- plumbing -----------------------------------------------------------

    def _commit(self, rec: r.Record) -> None:
        apply(self.st, rec)
        self.log.append(rec)

    def _cmd(self, cmd: c.Command) -> None:
        self._out.append(cmd)

    def _flush(self) -> list[c.Command]:
        out, self._out = self._out, []
        return out

    # --- entry points -------------------------------------------------------

    def start(self, now: float) -> list[c.Command]:
        """Place shards, launch every browser (workers and standbys)."""
        self._now = now
        primaries = place(self.cfg)
        for s, b in sorted(primaries.items()):
            self._commit(r.ShardPlaced(now, shard=s, browser=b, role="primary"))
        if self.s.replicas:
            for s, b in sorted(replica_targets(self.cfg, primaries).items()):
                self._commit(r.ShardPlaced(now, shard=s, browser=b, role="replica"))
        for slot in self.cfg.browsers:
            self._launch(slot.id)
        return self._flush()

    def handle(self, obs: r.Record, now: float) -> list[c.Command]:
        if type(obs) is r.HeartbeatReceived and not self.st.recoveries and obs.browser in self._hb_armed:
            # Fast path for the most frequent observation; exactly what _on_heartbeat would do
            # here (no recovery waits for it, its detector timer is armed, it cannot end the run).
            apply(self.st, obs)
            self.log.append(obs)
            return []
        self._now = now
        handler = self._HANDLERS.get(type(obs))
        if handler is None:
            self._commit(obs)             # facts the coordinator only records
        else:
            handler(self, obs)
        self._maybe_finish()
        return self._flush()

    def timer(self, key: Hashable, now: float) -> list[c.Command]:
        self._now = now
        kind = key[0]  # type: ignore[index]
        if kind == "hb":
            self._hb_armed.discard(key[1])  # type: ignore[index]
            self._on_heartbeat_timer(key[1])  # type: ignore[index]
        elif kind == "req":
            self._on_request_timeout(key[1])  # type: ignore[index]
        elif kind == "retry":
            self._backoff.discard((key[1], key[2]))  # type: ignore[index]
            self._dispatch(key[1])  # type: ignore[index]
        elif kind == "client":
            self._submit_for_client(key[1])  # type: ignore[index]
        elif kind == "reconnect":
            self._on_reconnect_timeout(key[1])  # type: ignore[index]
        self._maybe_finish()
        return self._flush()

    @property
    def finished(self) -> bool:
        return self.st.finished

    def abort(self, now: float, reason: str) -> list[c.Command]:
        """End the run now (time limit, Ctrl-C): every active request fails with `reason`."""
        self._now = now
        self._aborted = True      # failing a closed-loop client's request must not submit its next one
        for q in sorted(self.st.active):
            self._fail_request(q, reason)
        if not self.st.finished:
            self._commit(r.RunFinished(now, reason=reason))
            self._cmd(c.FinishRun(reason))
        return self._flush()

    # --- browsers and shards --------------------------------------------------

    def _launch(self, b: str) -> None:
        bs = self.st.browsers[b]
        inc = bs.incarnation + 1
        self._fenced.discard(b)
        self._commit(r.BrowserLaunchRequested(self._now, browser=b, kind=bs.kind, incarnation=inc, role=bs.role))
        self._cmd(c.LaunchBrowser(b, bs.kind, inc))

    def _load(self, b: str, s: int) -> None:
        if s in self.st.browsers[b].loaded or s in self.st.browsers[b].loading:
            return
        self._commit(r.ShardLoadStarted(self._now, shard=s, browser=b))
        self._cmd(c.LoadShard(b, s))

    def _arm_heartbeat(self, b: str, force: bool = True) -> None:
        """One pending detector timer per browser. A heartbeat does not re-arm it (force=False):
        when it fires it re-arms itself at last heartbeat + delay if that lies in the future."""
        if not force and b in self._hb_armed:
            return
        bs = self.st.browsers[b]
        last = bs.last_heartbeat if bs.last_heartbeat is not None else self._now
        self._arm_detector(b, last + suspicion_delay(bs.gaps, self.s, bs.settled_gaps))

    def _arm_detector(self, b: str, at: float) -> None:
        """(Re)arm b's detector timer and remember it is pending (the heartbeat fast path relies on it)."""
        self._hb_armed.add(b)
        self._cmd(c.ArmTimer(("hb", b), at))

    def _on_browser_ready(self, o: r.BrowserReady) -> None:
        if self.st.browsers[o.browser].status != LAUNCHING:
            self._commit(o)     # a duplicate or late ready: the fold counts it as stale
            return
        self._commit(o)
        self._arm_heartbeat(o.browser)
        if self._recovery_on_ready(o.browser):
            return
        for s, sh in self.st.shards.items():
            if sh.primary == o.browser or o.browser in sh.replicas:
                self._load(o.browser, s)

    def _on_heartbeat(self, o: r.HeartbeatReceived) -> None:
        self._commit(o)
        if self._recovery_on_heartbeat(o.browser):
            return
        if self.st.browsers[o.browser].status == READY:
            self._arm_heartbeat(o.browser, force=False)

    def _on_shard_loaded(self, o: r.ShardLoaded) -> None:
        self._commit(o)
        self._recovery_on_loaded(o.shard, o.browser)
        self._maybe_start_workload()
        self._dispatch_all()

    def _maybe_start_workload(self) -> None:
        st = self.st
        if st.workload_started is not None:
            return
        if any(sh.status != SERVING for sh in st.shards.values()):
            return
        if any(bs.loading for bs in st.browsers.values()):
            return
        self._commit(r.WorkloadStarted(self._now))

    # --- workload -------------------------------------------------------------

    def _on_clients(self, o: r.ClientsScheduled) -> None:
        self._commit(o)
        for client in range(int(o.concurrency)):
            self._submit_for_client(client)

    def _unavailable(self) -> bool:
        return any(sh.status == UNAVAILABLE for sh in self.st.shards.values())

    def _submit_for_client(self, client: int) -> None:
        st = self.st
        if st.deadline_passed or self._aborted:
            return
        if self._unavailable():
            self._drain_clients(client)
            return
        if st.client_total is not None and sum(st.clients.values()) >= st.client_total:
            return
        _, batch, seq = st.client_params
        self._submit(st.next_request, client, batch, seq)

    def _drain_clients(self, client: int) -> None:
        """The model lost a shard for good: a bounded workload's remaining requests are submitted
        and fail at once (counted, not silently dropped); an unbounded closed loop stops."""
        st = self.st
        if st.client_total is None or self._draining:
            return
        self._draining = True
        try:
            _, batch, seq = st.client_params
            while sum(st.clients.values()) < st.client_total:
                self._submit(st.next_request, client, batch, seq)
        finally:
            self._draining = False

    def _on_scheduled(self, o: r.RequestScheduled) -> None:
        self._commit(o)
        self._submit(o.request_id, None, o.batch_size, o.seq_len)

    def _submit(self, q: int, client: int | None, batch: int, seq: int) -> None:
        self._commit(r.RequestSubmitted(self._now, request_id=q, client=client, batch_size=batch, seq_len=seq))
        self._cmd(c.ArmTimer(("req", q), self._now + self.s.request_timeout_ms))
        if self._unavailable():
            self._fail_request(q, "shard_unavailable")
            return
        self._dispatch(q)

    def _workload_done(self) -> bool:
        st = self.st
        if st.deadline_passed or (self._unavailable() and st.client_total is None and st.clients):
            return True
        return st.client_total is not None and sum(st.clients.values()) >= st.client_total

    def _maybe_finish(self) -> None:
        st = self.st
        if st.finished:
            return
        if st.workload_started is None:
            setup_failed = self._unavailable()
            if not setup_failed:
                return
        else:
            setup_failed = False
            if st.active or not self._workload_done():   # cheap test first: called after every step
                return
        reason = "setup_failed" if setup_failed else "shard_unavailable" if self._unavailable() else "done"
        self._commit(r.RunFinished(self._now, reason=reason))
        self._cmd(c.FinishRun(reason))

    # --- requests ---------------------------------------------------------------

    def _ready_shards(self, q: int) -> list[int]:
        rq = self.st.requests[q]
        done, running, backoff = rq.done, rq.running, self._backoff
        return [s for s, ds in self.deps.items()
                if s not in done and s not in running and done.issuperset(ds)
                and (not backoff or (q, s) not in backoff)]

    def _dispatch(self, q: int) -> None:
        st = self.st
        if q not in st.active:
            return
        rq = st.requests[q]
        for s in self._ready_shards(q):
            sh = st.shards[s]
            if sh.status != SERVING or sh.primary is None or st.browsers[sh.primary].status != READY:
                continue   # waits for recovery (bounded by the request timeout)
            a = rq.attempts.get(s, -1) + 1
            self._commit(r.ShardStarted(self._now, request_id=q, shard=s, browser=sh.primary, attempt=a))
            self._cmd(c.RunShard(sh.primary, q, s, a, rq.batch_size, rq.seq_len, self.deps[s]))

    def _dispatch_all(self) -> None:
        for q in sorted(self.st.active):
            self._dispatch(q)

    def _on_shard_completed(self, o: r.ShardCompleted) -> None:
        self._commit(o)
        rq = self.st.requests.get(o.request_id)
        if rq is None or o.request_id not in self.st.active or o.shard not in rq.done:
            return
        self._recovery_on_shard_done(o.request_id, o.shard)
        if self.sinks <= rq.done:
            self._commit(r.RequestCompleted(self._now, request_id=o.request_id,
                                            latency_ms=self._now - rq.submitted))
            self._after_request(o.request_id)
        else:
            self._dispatch(o.request_id)

    def _on_shard_failed(self, o: r.ShardFailed) -> None:
        rq = self.st.requests.get(o.request_id)
        fresh = rq is not None and rq.running.get(o.shard) == (o.browser, o.attempt)
        self._commit(o)
        if fresh and o.request_id in self.st.active:
            self._shard_error(o)

    def _fail_request(self, q: int, reason: str) -> None:
        if q not in self.st.active:
            return
        rq = self.st.requests[q]
        self._commit(r.RequestFailed(self._now, request_id=q, latency_ms=self._now - rq.submitted, reason=reason))
        self._after_request(q)

    def _after_request(self, q: int) -> None:
        self._cmd(c.CancelTimer(("req", q)))
        client = self.st.requests[q].client
        if client is None or self._aborted:
            return
        think = self.st.client_params[0]
        if think > 0:
            self._cmd(c.ArmTimer(("client", client), self._now + think))
        else:
            self._submit_for_client(client)

    def _on_request_timeout(self, q: int) -> None:
        self._fail_request(q, "timeout")

    _HANDLERS = {
        r.BrowserReady: _on_browser_ready,
        r.HeartbeatReceived: _on_heartbeat,
        r.ShardLoaded: _on_shard_loaded,
        r.ClientsScheduled: _on_clients,
        r.RequestScheduled: _on_scheduled,
        r.ShardCompleted: _on_shard_completed,
        r.ShardFailed: _on_shard_failed,
        r.BrowserExited: RecoveryRules._on_exited,
        r.ConnectionClosed: RecoveryRules._on_connection_closed,
        r.ConnectionRestored: RecoveryRules._on_connection_restored,
        r.ShardLoadFailed: RecoveryRules._on_load_failed,
    }

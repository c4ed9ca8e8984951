"""Failure detection and recovery rules of the coordinator (mixed into Coordinator).

Rules:
- A browser failure is detected once (FailureDetected) and then owned by one recovery,
  keyed by the browser; a shard error is owned by a recovery keyed by (browser, request).
- Each strategy is a ladder of actions tried in order until one brings every lost shard
  back to SERVING (RecoveryCompleted) or none is left (RecoveryFailed -> shards
  UNAVAILABLE -> the requests that need them fail with 'shard_unavailable'):
    none: -            retry, reconnect: reconnect      restart: restart
    failover: failover progressive: reconnect -> failover -> restart
    parallel: failover and restart at once; the first browser to load a shard serves it
  `reconnect` is skipped when the browser process is known to be gone.
- Hot replicas are promoted before any action (zero-copy failover).
- A failover or restart first fences the failed browser (KillBrowser), so a hung page
  can never answer again; results from old attempts are ignored by the fold anyway.
- Failover never targets a browser that is not READY (placement.failover_target).
"""

from __future__ import annotations

from coordinator import commands as c
from coordinator.detector import suspicion_delay
from coordinator.placement import failover_target
from coordinator.state import (DISCONNECTED, FAILED, LAUNCHING, READY, SERVING, UNAVAILABLE, is_stale,
                               recovery_key)
from events import records as r
from shardtwin.vocab import RecoveryStrategy as RS

LADDERS: dict[RS, tuple[str, ...]] = {
    RS.NONE: (),
    RS.RETRY: ("reconnect",),
    RS.RECONNECT: ("reconnect",),
    RS.RESTART: ("restart",),
    RS.FAILOVER: ("failover",),
    RS.PROGRESSIVE: ("reconnect", "failover", "restart"),
    RS.PARALLEL: ("parallel",),
}


class RecoveryRules:
    # Provided by Coordinator: st, s, cfg, _now, _commit, _cmd, _launch, _load, _dispatch_all,
    # _fail_request, _backoff, _arm_heartbeat, _arm_detector, deps, weight_mb.

    # --- observations -----------------------------------------------------------

    def _on_exited(self, o: r.BrowserExited) -> None:
        if is_stale(self.st, o.browser, o.incarnation):
            self._commit(o)
            return
        b = o.browser
        before = self.st.browsers[b].status
        rec = self.st.recoveries.get(b)
        self._commit(o)
        if rec is not None:
            if rec.action in ("reconnect", "restart"):
                self._escalate(b, f"browser exited ({o.reason})")
        elif before in (READY, DISCONNECTED, LAUNCHING):
            self._fail_browser(b, "exited")

    def _on_connection_closed(self, o: r.ConnectionClosed) -> None:
        if is_stale(self.st, o.browser, o.incarnation):
            self._commit(o)
            return
        before = self.st.browsers[o.browser].status
        self._commit(o)
        if before == READY and o.browser not in self.st.recoveries:
            self._fail_browser(o.browser, "connection_closed")

    def _on_connection_restored(self, o: r.ConnectionRestored) -> None:
        self._commit(o)
        b = o.browser
        if self.st.browsers[b].status != READY:
            return
        rec = self.st.recoveries.get(b)
        if rec is not None and rec.action == "reconnect":
            self._take_back(b)
        else:
            self._arm_heartbeat(b)

    def _on_load_failed(self, o: r.ShardLoadFailed) -> None:
        self._commit(o)
        b = o.browser
        if b in self.st.recoveries:
            self._escalate(b, f"load failed: {o.reason}")
        elif self.st.browsers[b].status == READY:
            self._fail_browser(b, "load_failed")

    def _on_heartbeat_timer(self, b: str) -> None:
        bs = self.st.browsers[b]
        if bs.status != READY or bs.last_heartbeat is None:
            return
        delay = suspicion_delay(bs.gaps, self.s, bs.settled_gaps)
        last = max(bs.last_heartbeat, bs.last_seen or bs.last_heartbeat)   # results count as liveness
        silence = self._now - last
        if silence + 1e-9 < delay:
            self._arm_detector(b, last + delay)
            return
        if bs.loading:
            # Creating a shard session occupies the page's main thread for seconds (measured on
            # 2 cores): silence while a load is outstanding is not a failure. The load itself
            # ends in ShardLoaded, ShardLoadFailed or a closed connection.
            self._arm_detector(b, self._now + delay)
            return
        self._commit(r.FailureSuspected(self._now, browser=b, detector=self.s.detector, silence_ms=silence))
        self._fail_browser(b, "heartbeat_timeout")

    def _on_reconnect_timeout(self, b: str) -> None:
        rec = self.st.recoveries.get(b)
        if rec is not None and rec.action == "reconnect":
            self._escalate(b, "reconnect timed out")

    # --- hooks called by the core -------------------------------------------------

    def _recovery_on_heartbeat(self, b: str) -> bool:
        """A page that hung answers again while we wait for it: take it back."""
        rec = self.st.recoveries.get(b)
        if rec is None or rec.action != "reconnect" or self.st.browsers[b].status != FAILED:
            return False
        self._commit(r.ConnectionRestored(self._now, browser=b, loaded=()))
        self._take_back(b)
        return True

    def _recovery_on_ready(self, b: str) -> bool:
        rec = self.st.recoveries.get(b)
        if rec is None or rec.action not in ("restart", "parallel"):
            return False
        for s in rec.shards:
            if self.st.shards[s].status != SERVING:
                if rec.action == "restart":
                    self._commit(r.ShardPlaced(self._now, shard=s, browser=b, role="primary"))
                self._load(b, s)
        self._check_recoveries()
        return True

    def _recovery_on_loaded(self, s: int, b: str) -> None:
        st = self.st
        sh = st.shards[s]
        if sh.status != SERVING and st.browsers[b].status == READY and s in st.browsers[b].loaded:
            if any(s in rec.shards for rec in st.recoveries.values()):
                self._commit(r.ShardPlaced(self._now, shard=s, browser=b, role="primary"))
        self._check_recoveries()

    def _recovery_on_shard_done(self, q: int, s: int) -> None:
        for key, rec in sorted(self.st.recoveries.items()):
            if rec.request_id == q and s in rec.shards:
                self._commit(r.RecoveryCompleted(self._now, browser=rec.browser, request_id=q,
                                                 strategy=rec.strategy, action=rec.action, target=rec.target,
                                                 recovery_ms=self._now - rec.detected))

    # --- shard errors -------------------------------------------------------------------

    def _shard_error(self, o: r.ShardFailed) -> None:
        q, s, b = o.request_id, o.shard, o.browser
        errors = self.st.requests[q].errors.get(s, 0)
        key = recovery_key(b, q)
        strategy = str(self.s.strategy)
        if key not in self.st.recoveries:
            self._commit(r.FailureDetected(self._now, browser=b, request_id=q, cause="shard_error", shards=(s,)))
        if self.s.strategy != RS.NONE and errors <= self.s.max_retries:
            self._commit(r.RecoveryStarted(self._now, browser=b, request_id=q, strategy=strategy, action="retry",
                                           target=b, shards=(s,), attempt=errors))
            self._backoff.add((q, s))
            self._cmd(c.ArmTimer(("retry", q, s), self._now + self.s.backoff_ms * 2 ** (errors - 1)))
            return
        if key not in self.st.recoveries:
            self._commit(r.RecoveryStarted(self._now, browser=b, request_id=q, strategy=strategy,
                                           action=str(self.s.strategy), target=None, shards=(s,)))
        self._commit(r.RecoveryFailed(self._now, browser=b, request_id=q, strategy=strategy,
                                      reason=f"{o.reason}: no retries left"))
        self._fail_request(q, o.reason or "shard_error")

    # --- browser failures ------------------------------------------------------------

    def _fail_browser(self, b: str, cause: str) -> None:
        st = self.st
        lost = tuple(sorted(s for s, sh in st.shards.items() if sh.primary == b))
        self._commit(r.FailureDetected(self._now, browser=b, cause=cause, shards=lost))
        for q in sorted(st.active):
            for s, (bb, a) in sorted(st.requests[q].running.items()):
                if bb == b:
                    self._commit(r.ShardFailed(self._now, request_id=q, shard=s, browser=b, attempt=a,
                                               reason="browser_failed"))
        for s, sh in sorted(st.shards.items()):
            if sh.primary == b or b in sh.replicas:
                self._commit(r.ShardLost(self._now, shard=s, browser=b))
        if not lost:
            if cause == "heartbeat_timeout":
                self._fence(b)
            self._restore_capacity(b)
            return
        strategy = str(self.s.strategy)
        promoted = self._promote_replicas(lost)
        self._commit(r.RecoveryStarted(self._now, browser=b, strategy=strategy,
                                       action="promote" if promoted else "detect", target=promoted or None,
                                       shards=lost))
        ladder = LADDERS[self.s.strategy]
        if cause == "exited":
            ladder = tuple(a for a in ladder if a != "reconnect")
        self._ladders[b] = ladder
        if self._check_recoveries():
            self._dispatch_all()
            return
        self._escalate(b, cause, first=True)

    def _promote_replicas(self, lost: tuple[int, ...]) -> str:
        target = ""
        for s in lost:
            for x in sorted(self.st.shards[s].replicas):
                xs = self.st.browsers[x]
                if xs.status == READY and s in xs.loaded:
                    self._commit(r.ShardPlaced(self._now, shard=s, browser=x, role="primary"))
                    target = target or x
                    break
        return target

    def _escalate(self, b: str, reason: str, first: bool = False) -> None:
        rec = self.st.recoveries[b]
        ladder = self._ladders.get(b, ())
        if not first and rec.action == "restart" and rec.attempt + 1 < self.s.restart_attempts:
            if self._start_action(b, "restart", rec.attempt + 1):
                return
        start = 0 if first else (ladder.index(rec.action) + 1 if rec.action in ladder else len(ladder))
        for action in ladder[start:]:
            if self._start_action(b, action, 0):
                return
        self._cmd(c.CancelTimer(("reconnect", b)))
        self._commit(r.RecoveryFailed(self._now, browser=b, strategy=rec.strategy, reason=reason))
        self._fail_unavailable()

    def _start_action(self, b: str, action: str, attempt: int) -> bool:
        rec = self.st.recoveries[b]
        pending = tuple(s for s in rec.shards if self.st.shards[s].status != SERVING)
        started = r.RecoveryStarted(self._now, browser=b, strategy=rec.strategy, action=action, target=b,
                                    shards=rec.shards, attempt=attempt)
        if action == "reconnect":
            self._commit(started)
            self._cmd(c.ArmTimer(("reconnect", b), self._now + self.s.reconnect_timeout_ms))
            return True
        if action == "restart":
            if self.s.restart_attempts <= 0:
                return False
            self._fence(b)
            self._commit(started)
            self._launch(b)
            return True
        targets = self._failover_targets(b, pending)
        if action == "failover" and targets is None:
            return False
        self._fence(b)
        first = next(iter(targets.values())) if targets else None
        self._commit(r.RecoveryStarted(self._now, browser=b, strategy=rec.strategy, action=action, target=first,
                                       shards=rec.shards, attempt=attempt))
        for s, t in sorted((targets or {}).items()):
            self._commit(r.ShardPlaced(self._now, shard=s, browser=t, role="primary"))
            self._load(t, s)
        if action == "parallel" and self.s.restart_attempts > 0:
            self._launch(b)
        elif targets is None:
            return False
        self._check_recoveries()
        return True

    def _failover_targets(self, b: str, pending: tuple[int, ...]) -> dict[int, str] | None:
        st = self.st
        ready = [x for x, xs in st.browsers.items() if xs.status == READY and x != b]
        loads = {x: sum(1 for sh in st.shards.values() if sh.primary == x) for x in ready}
        mem = {x: sum(self.weight_mb[s] for s in st.browsers[x].loaded | st.browsers[x].loading) for x in ready}
        out: dict[int, str] = {}
        for s in pending:
            t = failover_target(self.cfg, ready, loads, {b}, mem, self.weight_mb[s])
            if t is None:
                return None
            out[s] = t
            loads[t] = loads.get(t, 0) + 1
            mem[t] = mem.get(t, 0.0) + self.weight_mb[s]
        return out

    def _fence(self, b: str) -> None:
        if b not in self._fenced and self.st.browsers[b].status in (READY, FAILED, DISCONNECTED, LAUNCHING):
            self._fenced.add(b)      # one kill per incarnation; _launch clears it
            self._cmd(c.KillBrowser(b, "fenced after failure"))

    def _take_back(self, b: str) -> None:
        """A browser we were waiting for (reconnect) is READY again: stop waiting, watch it, reclaim."""
        self._cmd(c.CancelTimer(("reconnect", b)))
        self._arm_heartbeat(b)
        self._reclaim(b)

    def _reclaim(self, b: str) -> None:
        """The failed browser is back: it serves its shards again (reloading what it lost)."""
        rec = self.st.recoveries[b]
        for s in rec.shards:
            if self.st.shards[s].status != SERVING:
                self._commit(r.ShardPlaced(self._now, shard=s, browser=b, role="primary"))
                self._load(b, s)
        self._check_recoveries()
        self._dispatch_all()

    def _check_recoveries(self) -> bool:
        """Complete every browser recovery whose shards all serve again. True if any completed."""
        done = False
        for key, rec in sorted(self.st.recoveries.items()):
            if rec.request_id is None and all(self.st.shards[s].status == SERVING for s in rec.shards):
                self._cmd(c.CancelTimer(("reconnect", key)))
                self._commit(r.RecoveryCompleted(self._now, browser=rec.browser, strategy=rec.strategy,
                                                 action=rec.action, target=rec.target,
                                                 recovery_ms=self._now - rec.detected))
                self._restore_capacity(rec.browser)
                done = True
        return done

    def _restore_capacity(self, b: str) -> None:
        """A failed browser whose shards now live elsewhere (or that held none: a standby) is
        relaunched as an empty spare, so the next failure still has a failover target. Bounded
        by the level's restart attempts per browser; strategies that never relaunch don't."""
        if self.s.strategy in (RS.NONE, RS.RETRY, RS.RECONNECT):
            return
        if self.st.browsers[b].status in (READY, LAUNCHING) or b in self.st.recoveries:
            return
        used = self._relaunches.get(b, 0)
        if used >= max(1, self.s.restart_attempts):
            return
        self._relaunches[b] = used + 1
        self._fence(b)
        self._launch(b)

    def _fail_unavailable(self) -> None:
        st = self.st
        for key, rec in sorted(st.recoveries.items()):
            if rec.request_id is None and any(st.shards[s].status == UNAVAILABLE for s in rec.shards):
                self._commit(r.RecoveryFailed(self._now, browser=rec.browser, strategy=rec.strategy,
                                              reason="a shard it waited for became unavailable"))
        for q in sorted(st.active):
            rq = st.requests[q]
            if any(st.shards[s].status == UNAVAILABLE for s in self.deps if s not in rq.done):
                self._fail_request(q, "shard_unavailable")

"""The real driver: the same coordinator, wall-clock time, real browsers doing real compute.

Rules:
- Thin: it turns coordinator commands into real IO (launch, SIGKILL, WebSocket loads and
  runs, timers on the asyncio loop) and real happenings into observations. It decides
  nothing; it reads coordinator state only to aim a fault at "the browser holding shard k".
- Time is injected: `now()` = ms since the run started on the monotonic clock.
- Observations about a browser come from the incarnation that is current: a socket or a
  process that belonged to an incarnation we killed on command is never reported.
- Shard runs are also logged as TRANSFER_COMPLETED records (coordinator clock), `in` once the
  run frame is sent and `out` once its result is back:
  `in` = tensor bytes sent, ms from the run's start here to the frame written to the socket (feeds
  gathered, encoded, sent); `out` = result bytes, ms = the rest of the round trip outside the
  page-measured compute (both network legs, the page's decode, queueing and encode, our decode).
  The page reports no timestamps of its own, so the network legs cannot be told apart.
- Every browser ends when the run ends (BrowserPool), also on error and Ctrl-C; the run's
  events so far are returned for the store either way (RealRun.log, RealRun.aborted).
  SIGINT/SIGTERM are the driver's alone (loop signal handlers around the whole pool block; the
  pool's own guard is off).
- Remote browsers (real/remote.py, RemoteOptions): a remote slot's LaunchBrowser announces a join
  URL instead of starting a process (RealDriver.joins); with a Playwright endpoint, local slots are
  launched through it. Neither has a pid: no ProcessObserved, no memory samples; their
  browser_crash is an in-page / connection fault; KillBrowser fences them (closed, ignored).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator import commands as c
from coordinator.core import Coordinator
from coordinator.placement import fault_target
from events import records as r
from events.schema import Event, EventKind
from real.browsers import BrowserHandle, BrowserPool
from real.protocol import FaultApplied, Heartbeat
from real.remote import ConnectedBrowser, JoinSlot, RemoteOptions, announce, connect_browser, crash, public_host
from real.server import (MessageReceived, WorkerConnected, WorkerGoneError, WorkerRejected,
                         WorkerReportedError, WorkerServer)
from real.shards import ShardSet
from shardtwin.errors import RealRunError

EXIT_GRACE_S = 0.25     # after a socket close, how long to look for the process exit
PRESSURE_MB = {"low": 256, "medium": 768, "high": 3072}


@dataclass
class _Browser:
    handle: BrowserHandle | None = None
    conn: Any = None
    launched_at: float = 0.0
    incarnation: int = 0
    killed: bool = False
    exit_reported: bool = False

    @property
    def live(self) -> bool:
        """Its process (or join slot) is up and was not ended on command."""
        return self.handle is not None and not self.killed and not self.handle.exited.is_set()


@dataclass
class RealDriver:
    coord: Coordinator
    shards: ShardSet
    inputs: list[Event]
    backend: str = "wasm"
    headed: bool = False
    launcher: str = "auto"
    run_timeout_s: float = 600.0
    # PSS sampling costs CPU beside the pages (the kernel walks each browser process's page tables
    # for smaps_rollup): measured, shard runs overlapping a sample took 1.4x on average. One sample
    # 1 s in (shards loaded in most runs), then every 5 s, keeps the footprint and its peak.
    first_sample_s: float = 1.0
    sample_every_s: float = 5.0
    browsers: dict[str, _Browser] = field(default_factory=dict)
    outputs: dict[tuple[int, int], dict[str, np.ndarray]] = field(default_factory=dict)
    timers: dict[Any, int] = field(default_factory=dict)
    aborted: str | None = None
    on_server: Any = None   # called with the WorkerServer once it listens (tests, observers)
    remote: RemoteOptions = field(default_factory=RemoteOptions)
    joins: list[dict] = field(default_factory=list)   # every join URL announced (remote slots)

    def now(self) -> float:
        return (time.monotonic() - self._t0) * 1000.0

    # --- main -----------------------------------------------------------------------

    async def run(self) -> None:
        self._t0 = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._inputs_scheduled = False
        secret = secrets.token_urlsafe(24)
        slots = [b.id for b in self.coord.cfg.browsers if b.role == "worker"]
        if any(not 0 <= i < len(slots) for i in self.remote.remote_slots):
            raise RealRunError(f"remote slots {list(self.remote.remote_slots)}: the run has {len(slots)} browser(s)")
        self._remote_ids = frozenset(slots[i] for i in self.remote.remote_slots)
        async with WorkerServer(self.shards.directory, secret,
                                heartbeat_interval_ms=self.coord.s.heartbeat_interval_ms,
                                on_event=self._server_event, host=self.remote.bind,
                                public_host=public_host(self.remote.bind, self.remote.public_host)) as self.server:
            if self.on_server is not None:
                self.on_server(self.server)
            # The driver alone owns SIGINT/SIGTERM, over the whole pool block (closing included);
            # the pool's own signal guard would be replaced by the loop's handlers anyway.
            self._trap_signals()
            try:
                async with BrowserPool(self.launcher, handle_signals=False) as self.pool:
                    try:
                        self.execute(self.coord.start(self.now()))
                        self._spawn(self._sample_memory())
                        await asyncio.wait_for(self._done.wait(), self.run_timeout_s)
                    except asyncio.TimeoutError:
                        self.aborted = "time_limit"
                        self.execute(self.coord.abort(self.now(), "time_limit"))
                    except asyncio.CancelledError:
                        self.aborted = "interrupted"
                        self.coord.abort(self.now(), "interrupted")
                        raise
                    finally:
                        for t in list(self._tasks):
                            t.cancel()
                        for b, st in sorted(self.browsers.items()):
                            if st.live:
                                self.coord.handle(r.BrowserClosed(self.now(), browser=b), self.now())
                            st.killed = True
            finally:
                self._untrap_signals()

    def _trap_signals(self) -> None:
        """Ctrl-C / SIGTERM: SIGKILL every browser at once, then end the run through the normal
        path (no exception inside the event loop), so the events so far are kept and stored.
        Armed around the whole BrowserPool block, so a signal while the pool closes still ends
        every browser first; _untrap_signals puts back the handlers found here."""
        import signal
        from real.browsers import kill_all_live
        self._trapped: dict[int, Any] = {}

        def stop(sig: int) -> None:
            kill_all_live()
            if self.aborted is None:
                self.aborted = "interrupted" if sig == signal.SIGINT else "terminated"
                self.coord.abort(self.now(), self.aborted)
            self._done.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            try:
                self._loop.add_signal_handler(sig, stop, sig)
                self._trapped[sig] = previous
            except (ValueError, RuntimeError, NotImplementedError):
                pass   # not the main thread: the caller's handlers apply

    def _untrap_signals(self) -> None:
        import signal
        for sig, previous in getattr(self, "_trapped", {}).items():
            self._loop.remove_signal_handler(sig)   # resets to the default handler...
            if previous is not None:
                signal.signal(sig, previous)        # ...so put back the one found before

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def observe(self, rec: r.Record) -> None:
        if self._done.is_set():
            self.coord.log.append(rec) if isinstance(rec, r.FaultInjected) else None
            return
        self.execute(self.coord.handle(rec, rec.t_ms))

    def execute(self, cmds: list[c.Command]) -> None:
        for cmd in cmds:
            match cmd:
                case c.LaunchBrowser():
                    self._spawn(self._launch(cmd))
                case c.KillBrowser(browser=b) | c.CloseBrowser(browser=b):
                    self._kill(b)
                case c.LoadShard():
                    self._spawn(self._load(cmd))
                case c.RunShard():
                    self._spawn(self._run_shard(cmd))
                case c.ArmTimer(key=k, at_ms=t):
                    self._arm(k, t)
                case c.CancelTimer(key=k):
                    self.timers[k] = self.timers.get(k, 0) + 1
                case c.FinishRun():
                    self._done.set()
        if not self._inputs_scheduled and self.coord.st.workload_started is not None:
            self._schedule_inputs()

    def _arm(self, key: Any, at_ms: float) -> None:
        gen = self.timers.get(key, 0) + 1
        self.timers[key] = gen

        def fire() -> None:
            if self.timers.get(key) == gen and not self._done.is_set():
                self.execute(self.coord.timer(key, self.now()))
        self._loop.call_later(max(0.0, (at_ms - self.now()) / 1000.0), fire)

    def _schedule_inputs(self) -> None:
        self._inputs_scheduled = True
        for ev in self.inputs:   # input times count from the workload's start, which is now
            delay = max(0.0, ev.t_ms / 1000.0)
            if ev.kind == EventKind.FAULT_SCHEDULED:
                self._loop.call_later(delay, lambda ev=ev: self._spawn(self._inject(ev)))
            elif ev.kind in r.REPLAYED_KINDS:
                rec = r.from_event(ev)
                self._loop.call_later(delay, lambda rec=rec: self.observe(r.retimed(rec, self.now())))

    # --- browsers ---------------------------------------------------------------------

    async def _launch(self, cmd: c.LaunchBrowser) -> None:
        st = self.browsers.setdefault(cmd.browser, _Browser())
        st.incarnation, st.killed, st.conn, st.launched_at = cmd.incarnation, False, None, self.now()
        st.exit_reported = False
        if cmd.browser in self._remote_ids:
            self._join(cmd, st)
            return
        try:
            if self.remote.playwright_endpoint:
                h = await connect_browser(await self.pool._playwright(), cmd.kind, self.remote.playwright_endpoint,
                                          self.server.issue_join(cmd.browser)[1], cmd.browser)
                self.pool.handles.append(h)   # closed with the pool
            else:
                h = await self.pool.launch(cmd.kind, self.server.worker_url(cmd.browser), browser_id=cmd.browser,
                                           headed=self.headed)
        except Exception as exc:  # a browser that would not start is an exited browser
            self.observe(r.BrowserExited(self.now(), browser=cmd.browser, reason=f"launch failed: {exc}"))
            return
        if st.incarnation != cmd.incarnation or st.killed:
            h.kill()
            return
        st.handle = h
        self._spawn(self._watch_process(cmd.browser, h))
        if not isinstance(h, ConnectedBrowser):   # no local process to observe
            rss = await asyncio.to_thread(h.rss_mb)   # a /proc scan: off the loop that serves the pages
            self.observe(r.ProcessObserved(self.now(), browser=cmd.browser, pid=int(h.pid or 0), rss_mb=rss))

    def _join(self, cmd: c.LaunchBrowser, st: _Browser) -> None:
        """A remote slot: announce a join URL for this incarnation and wait for a page to use it."""
        h = JoinSlot(cmd.kind, cmd.browser, self.server, self.remote.join_timeout_s, rejoin=cmd.incarnation > 1)
        st.handle = h
        self.pool.handles.append(h)
        entry = {"browser": cmd.browser, "incarnation": cmd.incarnation, "url": h.url, "t_ms": self.now()}
        self.joins.append(entry)
        announce(entry, self.remote)
        self._spawn(self._watch_process(cmd.browser, h))

    async def _watch_process(self, b: str, h: BrowserHandle) -> None:
        inc = self.browsers[b].incarnation
        while not await h.wait_exited(3600.0):
            pass
        st = self.browsers.get(b)
        if st is not None and st.handle is h and not st.killed:
            self._report_exit(b, st, h, inc)

    def _report_exit(self, b: str, st: _Browser, h: BrowserHandle, inc: int) -> None:
        """BrowserExited once per incarnation, whichever watcher (process or socket) sees it first."""
        if st.exit_reported:
            return
        st.exit_reported = True
        self.observe(r.BrowserExited(self.now(), browser=b, reason=getattr(h, "exit_reason", "process exited"),
                                     incarnation=inc))

    def _kill(self, b: str) -> None:
        st = self.browsers.get(b)
        if st is None:
            return
        st.killed = True
        if st.handle is not None:
            st.handle.kill()

    def _server_event(self, ev: Any) -> None:
        match ev:
            case WorkerConnected(browser_id=b, conn=conn, capabilities=caps, reconnect=again):
                st = self.browsers.get(b)
                if st is None:   # holds the secret but is no browser of this run: logged, never acted on
                    self.observe(r.MessageRejected(self.now(), browser=None,
                                                   reason=f"hello from unknown browser id {b!r}; ignored"))
                    return
                if st.killed:
                    return
                if isinstance(st.handle, JoinSlot):
                    st.handle.mark_joined(conn)
                st.conn = conn
                self._spawn(self._watch_socket(b, conn))
                if again and self.coord.st.browsers[b].status != "launching":
                    self.observe(r.ConnectionRestored(self.now(), browser=b, loaded=()))
                else:
                    self.observe(r.BrowserReady(self.now(), browser=b, launch_ms=self.now() - st.launched_at,
                                                capabilities=tuple(sorted((k, _flat(v)) for k, v in caps.items()))))
            case MessageReceived(browser_id=b, message=Heartbeat()):
                if self._current(b):
                    self.observe(r.HeartbeatReceived(self.now(), browser=b))
            case MessageReceived(browser_id=b, message=FaultApplied(fault=f, held_mb=mb)):
                if f == "memory_pressure" and self._current(b):
                    self.observe(r.MemorySampled(self.now(), browser=b, mb=float(mb)))
            case WorkerRejected(browser_id=b, reason=why):
                self.observe(r.MessageRejected(self.now(), browser=b, reason=why))
            case _:
                pass

    def _current(self, b: str) -> bool:
        st = self.browsers.get(b)
        return st is not None and not st.killed and st.conn is not None

    async def _watch_socket(self, b: str, conn: Any) -> None:
        inc = self.browsers[b].incarnation
        await conn.closed.wait()
        st = self.browsers.get(b)
        if st is None or st.conn is not conn or st.killed:
            return
        st.conn = None
        h = st.handle
        # A killed process closes its sockets before it can be reaped: give the exit a moment
        # (measured 25-150 ms here) so a crash is reported as an exit, not as a mere disconnect.
        # A join slot has no process: its closed socket is all we can see, at once.
        if h is not None and not isinstance(h, JoinSlot) and await h.wait_exited(EXIT_GRACE_S) \
                and st.handle is h and not st.killed:
            self._report_exit(b, st, h, inc)
        self.observe(r.ConnectionClosed(self.now(), browser=b, incarnation=inc))

    def _drop_finished_outputs(self) -> None:
        """Kept shard outputs of requests that ended (failed ones too) are released."""
        active = self.coord.st.active
        for key in [k for k in self.outputs if k[0] not in active]:
            del self.outputs[key]

    async def _sample_memory(self) -> None:
        """PSS of each live browser first_sample_s in, then every sample_every_s. The read (a /proc
        scan for the browser's processes, then smaps_rollup of each: the kernel walks their page
        tables) runs in a thread: on the event loop it stalled every message in flight by 40-90 ms
        once a second (measured: 3-5% of shard round trips, much of the real p95 tail)."""
        elapsed, next_sample = 0.0, self.first_sample_s
        while True:
            step = min(1.0, max(next_sample - elapsed, 0.0))
            await asyncio.sleep(step)
            elapsed += step
            self._drop_finished_outputs()       # kept outputs of ended requests: released every second
            if elapsed < next_sample:
                continue
            next_sample = elapsed + self.sample_every_s
            for b, st in sorted(self.browsers.items()):
                if st.live:
                    try:
                        mb = await asyncio.to_thread(st.handle.pss_mb)
                    except Exception:
                        continue
                    if st.live:
                        self.observe(r.MemorySampled(self.now(), browser=b, mb=mb))

    # --- shards -------------------------------------------------------------------------

    async def _load(self, cmd: c.LoadShard) -> None:
        st = self.browsers.get(cmd.browser)
        if st is None or st.conn is None:
            return
        conn = st.conn
        f = self.shards.file(cmd.shard)
        t = self.now()
        try:
            ok = await conn.load_shard(cmd.shard, self.server.shard_url(Path(f.path).name), self.backend, timeout=300.0,
                                       inputs=tuple(i.name for i in f.inputs),
                                       outputs=tuple(o.name for o in f.outputs))
        except WorkerGoneError:
            return
        except Exception as exc:   # the page's own report (WorkerReportedError) or anything else
            self.observe(r.ShardLoadFailed(self.now(), shard=cmd.shard, browser=cmd.browser, reason=str(exc)))
            return
        if ok.backend_used != ok.backend_requested:
            self.observe(r.BackendFallback(self.now(), browser=cmd.browser, wanted=ok.backend_requested,
                                           got=ok.backend_used, reason=ok.fallback_reason or ""))
        self.observe(r.ShardLoaded(self.now(), shard=cmd.shard, browser=cmd.browser, load_ms=self.now() - t,
                                   fetch_ms=ok.fetch_ms, create_ms=ok.create_ms))

    async def _run_shard(self, cmd: c.RunShard) -> None:
        st = self.browsers.get(cmd.browser)
        if st is None or st.conn is None:
            return
        conn = st.conn
        t_start = self.now()
        feeds = self.shards.feeds(cmd.shard, cmd.request_id, {d: self.outputs[(cmd.request_id, d)]
                                                              for d in cmd.inputs if (cmd.request_id, d) in self.outputs})
        try:   # conn.run(), split at the send so that the two legs can be timed
            fut = conn._expect(("run", cmd.request_id, cmd.shard, cmd.attempt))
            await conn.send_run(cmd.request_id, cmd.shard, cmd.attempt, feeds)
            t_sent = self.now()
            self.observe(r.TransferCompleted(t_sent, request_id=cmd.request_id, shard=cmd.shard, browser=cmd.browser,
                                             nbytes=float(_nbytes(feeds)), ms=t_sent - t_start, direction="in"))
            frame = await conn._await(fut, self.coord.s.request_timeout_ms / 1000.0,
                                      f"run req {cmd.request_id} shard {cmd.shard}")
        except WorkerReportedError as exc:
            self.observe(r.ShardFailed(self.now(), request_id=cmd.request_id, shard=cmd.shard, browser=cmd.browser,
                                       attempt=cmd.attempt, reason=exc.report.kind))
            return
        except Exception:   # worker gone, timed out (RealRunError), ...: the coordinator's timers decide
            return
        self.outputs[(cmd.request_id, cmd.shard)] = dict(frame.tensors)
        self.observe(r.TransferCompleted(self.now(), request_id=cmd.request_id, shard=cmd.shard, browser=cmd.browser,
                                         nbytes=float(_nbytes(frame.tensors)), direction="out",
                                         ms=max(0.0, self.now() - t_sent - float(frame.ms))))
        self.observe(r.ShardCompleted(self.now(), request_id=cmd.request_id, shard=cmd.shard, browser=cmd.browser,
                                      attempt=cmd.attempt, compute_ms=float(frame.ms)))
        if cmd.request_id not in self.coord.st.active:
            if self.coord.st.requests[cmd.request_id].outcome == "completed":   # not a late answer to a failed one
                self.shards.finished(cmd.request_id,
                                     {s: v for (q, s), v in self.outputs.items() if q == cmd.request_id})
            for key in [k for k in self.outputs if k[0] == cmd.request_id]:
                del self.outputs[key]

    # --- faults -------------------------------------------------------------------------

    async def _inject(self, ev: Event) -> None:
        d = ev.details()
        kind = str(d.get("type"))
        b = fault_target(self.coord.st, ev)
        st = self.browsers.get(b) if b else None
        live = st is not None and st.live
        params = r.fault_params(d)
        self.observe(r.FaultInjected(self.now(), fault=kind, browser=b if live else None, shard=ev.shard,
                                     params=params))
        if not live:
            return
        try:
            await self._apply_fault(kind, d, st, ev.shard)
        except WorkerGoneError:
            pass

    async def _apply_fault(self, kind: str, d: dict, st: _Browser, shard: int | None) -> None:
        conn = st.conn
        dur = d.get("duration_ms")
        if kind == "browser_crash":
            await crash(st.handle)  # real SIGKILL of the process group (remote: in-page); NOT marked as ours
        elif kind == "disconnect" and conn is not None:
            delay = d.get("reconnect_delay_ms")
            await conn.send_inject("disconnect", delay_ms=float(delay) if delay is not None else 10 ** 9)
        elif kind == "hang" and conn is not None:
            await conn.send_inject("hang", ms=float(dur) if dur is not None else 10 ** 9)
            self._clear_after(kind, st, dur, None)   # the page wakes by itself
        elif kind == "memory_pressure" and conn is not None:
            await conn.send_inject("memory_pressure", mb=PRESSURE_MB.get(str(d.get("level")), 768))
            self._clear_after(kind, st, dur, lambda: st.conn.send_inject("clear", what="memory_pressure"))
        elif kind == "shard_error" and conn is not None:
            await conn.send_inject("shard_error", shard=shard if shard is not None else 0, count=1)
        elif kind == "slow":
            factor = float(d.get("factor") or 4.0)
            try:
                await st.handle.set_cpu_throttle(factor)
                undo = lambda h=st.handle: h.set_cpu_throttle(1.0)  # noqa: E731
            except Exception:
                if conn is None:
                    return
                await conn.send_inject("slow", factor=factor)
                undo = lambda: st.conn.send_inject("clear", what="slow")  # noqa: E731
            self._clear_after(kind, st, dur, undo)

    def _clear_after(self, kind: str, st: _Browser, dur: Any, undo: Any) -> None:
        """A fault with a duration ends after it, in the same incarnation only (as in the sim):
        undo it (None: it ends by itself) and log FaultCleared."""
        if dur is None:
            return
        b = next(k for k, v in self.browsers.items() if v is st)
        inc = st.incarnation

        async def later() -> None:
            await asyncio.sleep(float(dur) / 1000.0)
            if st.incarnation != inc or not st.live:
                return
            if undo is not None:
                try:
                    await undo()
                except Exception:
                    return   # the browser went away meanwhile: nothing to clear
            self.observe(r.FaultCleared(self.now(), fault=kind, browser=b))
        self._spawn(later())


def _nbytes(tensors: Any) -> int:
    return sum(int(np.asarray(a).nbytes) for a in tensors.values())


def _flat(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    import json
    return json.dumps(v, sort_keys=True, default=str)

"""A fake driver for the coordinator: a tiny deterministic event loop, no SimPy.

It carries out the coordinator's commands with fixed delays (LaunchBrowser -> BrowserReady
after `launch_ms`, LoadShard -> ShardLoaded after `load_ms`, RunShard -> ShardCompleted
after `run_ms`, ArmTimer/CancelTimer as a heap with generations, KillBrowser kills the
page silently) and lets a test inject the observations a real driver would report:
process exits, closed/restored connections, hangs (heartbeats stop) and shard errors.
Ties in time are broken by insertion order, so every run is reproducible.

Fixtures hand out the harness class and helpers (pytest --import-mode=importlib cannot
import a sibling module), so tests use `fake`, `make_cfg` and `check_log`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import pytest

from coordinator import commands as c
from coordinator.config import BrowserSlot, CoordinatorConfig, ShardInfo
from coordinator.core import Coordinator
from coordinator.settings import Settings
from coordinator.state import LAUNCHING, READY, initial_state, fold, apply
from events import records as r
from shardtwin.vocab import Browser, PlacementPolicy


@dataclass
class Page:
    id: str
    incarnation: int
    alive: bool = False
    connected: bool = False
    hung: bool = False
    loaded: set[int] = field(default_factory=set)
    errors: list[int] = field(default_factory=list)   # shards whose next run throws
    epoch: int = 0                                     # link generation: a drop loses what is in flight
    held: list[Callable[[], None]] = field(default_factory=list)   # answers held while hung


class FakeDriver:
    def __init__(self, cfg: CoordinatorConfig, *, launch_ms: float | Callable[[str], float] = 100.0, load_ms: float = 50.0,
                 run_ms: float | Callable[[str, int], float] = 20.0, hb_ms: float | None = None,
                 hb_gap: Callable[[str, int], float] | None = None, exit_launching: bool = True) -> None:
        self.cfg = cfg
        self.coord = Coordinator(cfg)
        self.launch_ms, self.load_ms, self.run_ms = launch_ms, load_ms, run_ms
        self.hb_ms = cfg.settings.heartbeat_interval_ms if hb_ms is None else hb_ms
        self.hb_gap = hb_gap
        self.now = 0.0
        self.t0: float | None = None
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.timers: dict[Any, int] = {}
        self.pages: dict[str, Page] = {}
        self.commands: list[tuple[float, c.Command]] = []
        self.done = False
        self._on_start: list[Callable[[], None]] = []

    # --- loop ---------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, self._seq, fn))
        self._seq += 1

    def after(self, d: float, fn: Callable[[], None]) -> None:
        self.at(self.now + d, fn)

    def observe(self, rec: r.Record) -> None:
        if not self.done:
            self.execute(self.coord.handle(rec, self.now))

    def run(self, until: float = 600_000.0) -> "FakeDriver":
        self.execute(self.coord.start(self.now))
        while self._heap and not self.done:
            t, _, fn = heapq.heappop(self._heap)
            if t > until:
                break
            self.now = max(self.now, t)
            fn()
        return self

    def execute(self, cmds: list[c.Command]) -> None:
        for cmd in cmds:
            self.commands.append((self.now, cmd))
            match cmd:
                case c.LaunchBrowser():
                    self._launch(cmd)
                case c.KillBrowser(browser=b) | c.CloseBrowser(browser=b):
                    self._kill(b)
                case c.LoadShard():
                    self._load(cmd)
                case c.RunShard():
                    self._run(cmd)
                case c.ArmTimer(key=k, at_ms=t):
                    self._arm(k, t)
                case c.CancelTimer(key=k):
                    self.timers[k] = self.timers.get(k, 0) + 1
                case c.FinishRun():
                    self.done = True
        if self.t0 is None and self.coord.st.workload_started is not None:
            self.t0 = self.now
            for fn in self._on_start:
                fn()

    def _arm(self, key: Any, t: float) -> None:
        gen = self.timers.get(key, 0) + 1
        self.timers[key] = gen

        def fire() -> None:
            if self.timers.get(key) == gen and not self.done:
                self.execute(self.coord.timer(key, self.now))
        self.at(max(t, self.now), fire)

    # --- pages ----------------------------------------------------------------------

    def _launch(self, cmd: c.LaunchBrowser) -> None:
        page = Page(cmd.browser, cmd.incarnation)
        self.pages[cmd.browser] = page

        def ready() -> None:
            if self.pages.get(page.id) is not page or page.incarnation != cmd.incarnation:
                return
            page.alive = page.connected = True
            self.observe(r.BrowserReady(self.now, browser=page.id, launch_ms=ms))
            self._beat(page, 0)
        ms = self.launch_ms(cmd.browser) if callable(self.launch_ms) else self.launch_ms
        self.after(ms, ready)

    def _beat(self, page: Page, n: int) -> None:
        gap = self.hb_gap(page.id, n) if self.hb_gap else self.hb_ms

        def beat() -> None:
            if self.pages.get(page.id) is not page or not page.alive or self.done:
                return
            if page.connected and not page.hung:
                self.observe(r.HeartbeatReceived(self.now, browser=page.id))
            self._beat(page, n + 1)
        self.after(gap, beat)

    def _kill(self, b: str) -> None:
        page = self.pages.get(b)
        if page is not None:
            page.alive = page.connected = False
            page.loaded.clear()
            page.held.clear()

    def _deliver(self, page: Page, epoch: int, make: Callable[[], r.Record]) -> None:
        def go() -> None:
            if self.pages.get(page.id) is page and page.alive and page.connected and page.epoch == epoch:
                self.observe(make())
        if page.hung:
            page.held.append(go)
        else:
            go()

    def _load(self, cmd: c.LoadShard) -> None:
        page = self.pages.get(cmd.browser)
        if page is None or not page.alive or not page.connected:
            return
        epoch = page.epoch

        def loaded() -> None:
            if page.alive:
                page.loaded.add(cmd.shard)
                self._deliver(page, epoch, lambda: r.ShardLoaded(self.now, shard=cmd.shard, browser=page.id,
                                                                 load_ms=self.load_ms))
        self.after(self.load_ms, loaded)

    def _run(self, cmd: c.RunShard) -> None:
        page = self.pages.get(cmd.browser)
        if page is None or not page.alive or not page.connected:
            return
        epoch = page.epoch
        ms = self.run_ms(cmd.browser, cmd.shard) if callable(self.run_ms) else self.run_ms

        def finished() -> None:
            if not page.alive:
                return
            if cmd.shard in page.errors:
                page.errors.remove(cmd.shard)
                make = lambda: r.ShardFailed(self.now, request_id=cmd.request_id, shard=cmd.shard,  # noqa: E731
                                             browser=page.id, attempt=cmd.attempt, reason="shard_error")
            else:
                make = lambda: r.ShardCompleted(self.now, request_id=cmd.request_id, shard=cmd.shard,  # noqa: E731
                                                browser=page.id, attempt=cmd.attempt, compute_ms=ms)
            self._deliver(page, epoch, make)
        self.after(ms, finished)

    # --- workload and faults (times relative to the workload start) ---------------------

    def when_started(self, fn: Callable[[], None]) -> None:
        self._on_start.append(fn)

    def at_rel(self, t: float, fn: Callable[[], None]) -> None:
        self.when_started(lambda: self.at(self.t0 + t, fn))

    def clients(self, total: int | None = None, concurrency: int = 1, think_ms: float = 0.0,
                deadline_ms: float | None = None) -> "FakeDriver":
        self.at_rel(0.0, lambda: self.observe(r.ClientsScheduled(self.now, concurrency=concurrency, total=total,
                                                                 think_ms=think_ms)))
        if deadline_ms is not None:
            self.at_rel(deadline_ms, lambda: self.observe(r.WorkloadDeadline(self.now)))
        return self

    def crash(self, t: float, b: str, *, close_first: bool = False) -> "FakeDriver":
        """The process dies: BrowserExited (after a ConnectionClosed when close_first)."""
        def go() -> None:
            page = self.pages[b]
            if not page.alive:
                return
            self._kill(b)
            if close_first:
                self.observe(r.ConnectionClosed(self.now, browser=b, incarnation=page.incarnation))
            self.observe(r.BrowserExited(self.now, browser=b, reason="crash", incarnation=page.incarnation))
        self.at_rel(t, go)
        return self

    def disconnect(self, t: float, b: str, restore_after: float | None = None) -> "FakeDriver":
        def go() -> None:
            page = self.pages[b]
            if not page.alive:
                return
            page.connected = False
            page.epoch += 1
            self.observe(r.ConnectionClosed(self.now, browser=b))
            if restore_after is not None:
                def back() -> None:
                    if self.pages.get(b) is page and page.alive:
                        page.connected = True
                        page.epoch += 1
                        self.observe(r.ConnectionRestored(self.now, browser=b, loaded=tuple(sorted(page.loaded))))
                self.after(restore_after, back)
        self.at_rel(t, go)
        return self

    def hang(self, t: float, b: str, wake_after: float | None = None) -> "FakeDriver":
        def go() -> None:
            page = self.pages[b]
            page.hung = True
            if wake_after is not None:
                def wake() -> None:
                    if self.pages.get(b) is page and page.alive:
                        page.hung = False
                        held, page.held = page.held, []
                        for fn in held:
                            fn()
                self.after(wake_after, wake)
        self.at_rel(t, go)
        return self

    def shard_error(self, t: float, b: str, shard: int, times: int = 1) -> "FakeDriver":
        self.at_rel(t, lambda: self.pages[b].errors.extend([shard] * times))
        return self

    # --- reading the outcome ---------------------------------------------------------------

    def records(self, cls: type) -> list:
        return [x for x in self.coord.log if isinstance(x, cls)]

    def outcomes(self) -> dict[int, str | None]:
        return {q: rq.outcome for q, rq in self.coord.st.requests.items()}


def make_cfg(settings: Settings, *, shards: int = 2, workers: tuple[str, ...] = ("chromium", "firefox"),
             placement: PlacementPolicy = PlacementPolicy.ROUND_ROBIN, gflops: dict[str, float] | None = None,
             shard_gflops: tuple[float, ...] | None = None, weight_mb: float = 10.0, memory_mb: float = 4096.0,
             specializations: tuple[str, ...] | None = None, model_type: str = "text",
             history_speed: dict[str, float] | None = None, chain: bool = True) -> CoordinatorConfig:
    """A small config: shards in a chain (0 -> 1 -> ...), `workers` then the level's standbys."""
    kinds = list(workers)
    slots = [BrowserSlot(f"{k}-{i}", Browser(k), "worker", (gflops or {}).get(f"{k}-{i}", 1.0), memory_mb)
             for i, k in enumerate(kinds)]
    for j in range(settings.standby_browsers):
        k = kinds[j % len(kinds)]
        i = len(kinds) + j
        slots.append(BrowserSlot(f"{k}-{i}", Browser(k), "standby", (gflops or {}).get(f"{k}-{i}", 1.0), memory_mb))
    infos = tuple(ShardInfo(i, f"s{i}", (i - 1,) if chain and i > 0 else (), weight_mb,
                            shard_gflops[i] if shard_gflops else 1.0,
                            specializations[i] if specializations else "") for i in range(shards))
    return CoordinatorConfig(infos, tuple(slots), settings, placement, model_type, dict(history_speed or {}))


def check_log(cfg: CoordinatorConfig, log: list[r.Record]) -> None:
    """Invariants over a coordinator log, checked by folding it one record at a time."""
    st = initial_state(cfg)
    terminal: dict[int, int] = {}
    submitted: set[int] = set()
    for rec in log:
        if isinstance(rec, r.ShardPlaced) and rec.role == "primary":
            status = st.browsers[rec.browser].status
            # Initial placement happens before any launch ("idle"); later a primary only goes to a live page.
            assert status in (READY, LAUNCHING) or (status == "idle" and st.workload_started is None), \
                f"{rec} onto a browser that is {status}"
        if isinstance(rec, r.ShardStarted):
            sh = st.shards[rec.shard]
            assert sh.primary == rec.browser, f"{rec} but the primary is {sh.primary}"
            assert st.browsers[rec.browser].status == READY, f"{rec} to a {st.browsers[rec.browser].status} browser"
        if isinstance(rec, r.RequestSubmitted):
            assert rec.request_id not in submitted, f"request {rec.request_id} submitted twice"
            submitted.add(rec.request_id)
        if isinstance(rec, (r.RequestCompleted, r.RequestFailed)):
            terminal[rec.request_id] = terminal.get(rec.request_id, 0) + 1
        apply(st, rec)
    assert all(terminal.get(q) == 1 for q in submitted), \
        {q: terminal.get(q, 0) for q in submitted if terminal.get(q) != 1}
    assert set(terminal) <= submitted


@pytest.fixture(scope="session")
def fake():
    return FakeDriver


@pytest.fixture(scope="session")
def cfg_for():
    return make_cfg


@pytest.fixture(scope="session")
def invariants():
    return check_log


@pytest.fixture(scope="session")
def rebuilt():
    """fold(initial_state(cfg), log): the state event sourcing gives back."""
    return lambda cfg, log: fold(initial_state(cfg), log)


__all__ = ["FakeDriver", "make_cfg", "check_log", "replace"]

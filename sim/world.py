"""The simulated world: pages (browsers) on a shared host, links, heartbeats, faults.

Rules:
- A thin driver: it carries out the coordinator's commands as SimPy events and feeds
  back observations (events.records). It decides nothing; it may read coordinator state
  only to aim a fault at "the browser holding shard k", as the real driver does.
- Simulated time is in ms. Every stochastic source has its own seeded stream, spawned
  from the run's SeedSequence in a fixed order (see STREAMS), so a run is a pure function
  of (scenario, profile, seed).
- Consequences are real in the model: a crash loses loaded shards and in-flight work; a
  disconnect drops messages until reconnection; a hang stops heartbeats and progress;
  slow and memory pressure stretch compute; memory beyond the budget kills the page.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import simpy

from coordinator import commands as c
from coordinator.core import Coordinator
from coordinator.placement import fault_target
from events import records as r
from events.schema import Event, EventKind
from models.partition import ShardPlan
from sim.calls import Draws, call_later
from sim.host import Host
from sim.profile import (AGED_PAGE_MS, LATE_SESSION_RUNS, LAUNCH_NOISE_WINDOW_MS, SERVED_IDLE_MS,
                         STEADY_NOISE_RUNS, WARM_NOISE_WINDOW_MS, Profile, background_factor, heap_growth, warm_ms,
                         warm_time)

STREAMS = ("launch", "heartbeat", "compute", "mtbf", "hop")


@dataclass(slots=True)
class Page:
    id: str
    kind: str
    incarnation: int
    alive: bool = False
    connected: bool = False
    hung: bool = False
    slow: float = 1.0
    pressure: str | None = None
    loaded: set[int] = field(default_factory=set)
    queue: deque = field(default_factory=deque)
    job: int | None = None
    job_run: Any = None
    errors: list[int | None] = field(default_factory=list)   # shards whose next run throws (None: any)
    link_epoch: int = 0
    session_runs: dict[int, int] = field(default_factory=dict)   # shard -> runs of its session (absent: none yet)
    creating: int = 0                 # 1 while a shard load runs in the page's task chain
    hb_pending: bool = False          # a heartbeat fell due during a shard run
    spin: int | None = None           # host job of a hang's busy loop
    tail: int | None = None           # host job of the browser's work after its launch (launch_tail_ms)
    tail_held_at: float | None = None  # since when its page's own task holds it
    after_task: list = field(default_factory=list)   # actions waiting for the task in progress (a hang)
    runs: int = 0                     # shard runs started in this page
    sessions: int = 0                 # sessions created in this page
    ready_at: float = 0.0             # when the page said hello
    first_load_end: float | None = None   # when its first session create ended (settle_load_ms)
    post_load_until: float = -math.inf    # runs starting before this take post_load_factor longer
    first_run_end: float | None = None    # when its first shard run ended (warmup_ms)
    last_run_end: float | None = None     # ... its latest (served_load_ms)
    heap_mb: float = 0.0              # its heap's high-water, in shard MB (profile.heap_growth)


def _inverse_cdf(quantiles) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated quantiles at evenly spaced probabilities 0..1, ready for np.interp(u, *table)."""
    return np.linspace(0.0, 1.0, len(quantiles)), np.asarray(quantiles, dtype=float)


@dataclass(frozen=True, slots=True)
class _PendingLoad:
    cmd: c.LoadShard
    asked: float        # when the command reached the page
    epoch: int          # link epoch then (a reply after a reconnect is dropped)


class SimWorld:
    def __init__(self, coordinator: Coordinator, base_plan: ShardPlan, plans: Callable[[int, int], ShardPlan],
                 profile: Profile,
                 backend: str, seed: int, inputs: list[Event], mtbf_s: float | None = None,
                 time_limit_ms: float = 3_600_000.0) -> None:
        self.env = simpy.Environment()
        self.coord, self.plans, self.p, self.backend = coordinator, plans, profile, str(backend)
        self.base_plan = base_plan
        self.host = Host(self.env, profile.host_cores)
        seqs = np.random.SeedSequence(seed).spawn(len(STREAMS))
        self.rng = {name: np.random.default_rng(s) for name, s in zip(STREAMS, seqs)}
        # One stream per purpose, each used for one kind of variate, so block draws keep the sequence.
        self._hb_normal = Draws(self.rng["heartbeat"])
        self._hb_uniform = Draws(self.rng["heartbeat"], uniform=True)
        self._compute_normal = Draws(self.rng["compute"])
        self._compute_uniform = Draws(self.rng["compute"], uniform=True)
        # empirical compute noise and round-trip spread per browser kind: (probabilities, quantiles)
        # for an inverse CDF
        self._noise, self._launch_noise, self._early_noise, self._hop_extra = (
            {k: _inverse_cdf(getattr(b, f)) for k, b in profile.browsers.items() if getattr(b, f)}
            for f in ("compute_noise_quantiles", "launch_noise_quantiles", "early_noise_quantiles",
                      "hop_extra_quantiles"))
        self._hop_uniform = Draws(self.rng["hop"], uniform=True)
        self._launching: dict[str, float] = {}   # browser -> end of its launch/warm noise window (inf: launching)
        self.pages: dict[str, Page] = {}
        self.timers: dict[Any, int] = {}
        self.inputs, self.mtbf_s, self.time_limit_ms = inputs, mtbf_s, time_limit_ms
        self.done = self.env.event()
        self._inputs_scheduled = False
        self.sim_events = 0

    # --- plumbing ---------------------------------------------------------------

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        call_later(self.env, delay, fn)

    def observe(self, rec_factory: Callable[[float], r.Record]) -> None:
        if self.done.triggered:
            return
        self.sim_events += 1
        self.execute(self.coord.handle(rec_factory(self.env.now), self.env.now))

    def execute(self, cmds: list[c.Command]) -> None:
        run = self._COMMANDS
        for cmd in cmds:
            run[type(cmd)](self, cmd)
        if not self._inputs_scheduled and self.coord.st.workload_started is not None:
            self._schedule_inputs()

    def _finish(self, _cmd: c.FinishRun) -> None:
        if not self.done.triggered:
            self.done.succeed()

    def _cancel(self, cmd: c.CancelTimer) -> None:
        self.timers[cmd.key] = self.timers.get(cmd.key, 0) + 1

    def _arm(self, key: Any, t: float) -> None:
        gen = self.timers.get(key, 0) + 1
        self.timers[key] = gen

        def fire() -> None:
            if self.timers.get(key) == gen and not self.done.triggered:
                self.sim_events += 1
                self.execute(self.coord.timer(key, self.env.now))
        self.at(t - self.env.now, fire)

    def hop_ms(self, nbytes: float) -> float:
        return self.p.link_latency_ms + nbytes / (self.p.link_mb_per_s * 1e3)

    # --- run --------------------------------------------------------------------

    def run(self) -> None:
        self.execute(self.coord.start(self.env.now))
        limit = self.env.timeout(self.time_limit_ms)
        self.env.run(until=self.done | limit)
        if not self.done.triggered:
            self.coord.abort(self.env.now, "time_limit")
        for page in self.pages.values():
            if page.alive:
                page.alive = False
                self.coord.handle(r.BrowserClosed(self.env.now, browser=page.id), self.env.now)

    def _schedule_inputs(self) -> None:
        self._inputs_scheduled = True
        for ev in self.inputs:   # input times count from the workload's start, which is now
            if ev.kind == EventKind.FAULT_SCHEDULED:
                self.at(ev.t_ms, lambda ev=ev: self.inject(ev))
            elif ev.kind in r.REPLAYED_KINDS:
                rec = r.from_event(ev)
                self.at(ev.t_ms, lambda rec=rec: self.observe(lambda now, rec=rec: r.retimed(rec, now)))
        if self.mtbf_s:
            for page in sorted(self.pages.values(), key=lambda p: p.id):
                self._schedule_random_crash(page.id)

    # --- browsers -----------------------------------------------------------------

    def _launch(self, cmd: c.LaunchBrowser) -> None:
        bp = self.p.browsers[cmd.kind]
        page = Page(cmd.browser, cmd.kind, cmd.incarnation)
        self.pages[cmd.browser] = page
        ms = max(1.0, float(self.rng["launch"].normal(bp.launch_ms, bp.launch_sd_ms)))

        started = self.env.now
        self._launching[cmd.browser] = math.inf

        def ready() -> None:
            if self.pages.get(cmd.browser) is not page:
                return
            page.alive = page.connected = True
            page.ready_at = self.env.now
            self._launching[cmd.browser] = self.env.now + LAUNCH_NOISE_WINDOW_MS
            took = self.env.now - started if self.p.cpu_bound_startup else ms
            if self.p.cpu_bound_startup and bp.launch_tail_ms > 0:   # work after hello, beside the page
                page.tail = self.host.start(bp.launch_tail_ms, min(bp.launch_tail_threads, self.p.host_cores),
                                            lambda: setattr(page, "tail", None), 1.0)
            self.observe(lambda now: r.BrowserReady(now, browser=page.id, launch_ms=took))
            self._heartbeat_loop(page)
        if self.p.cpu_bound_startup and bp.launch_cpu_fraction < 1.0:   # a CPU burst, then waiting
            burst = ms * bp.launch_cpu_fraction
            self.host.start(burst, min(bp.launch_threads, self.p.host_cores),
                            lambda: self.at(ms - burst, ready), 1.0)
        else:
            self._busy(ms, ready, min(bp.launch_threads, self.p.host_cores), 1.0)   # nice 0 (weight 1)

    def _busy(self, ms: float, then: Callable[[], None], threads: float = 1.0, weight: float = 1.0) -> None:
        """Startup work (launch, load): host CPU when the profile says so, else a plain delay."""
        if self.p.cpu_bound_startup:
            self.host.start(ms, threads, then, weight)
        else:
            self.at(ms, then)

    def _kill(self, page: Page | None) -> None:
        if page is None or not page.alive:
            return
        page.alive = page.connected = False
        page.loaded.clear()
        page.session_runs.clear()
        page.hb_pending = False
        page.queue.clear()
        if page.job is not None:
            self.host.cancel(page.job)
            page.job = None
        if page.spin is not None:
            self.host.cancel(page.spin)
            page.spin = None
        if page.tail is not None:
            self.host.cancel(page.tail)
            page.tail = None

    def memory_mb(self, page: Page) -> float:
        bp = self.p.browsers[page.kind]
        used = bp.baseline_mb + sum(self.base_plan.shards[s].weight_mb for s in page.loaded)
        if page.pressure:
            used += self.p.pressure_fraction[page.pressure] * bp.memory_budget_mb
        return used

    def _crash(self, page: Page, reason: str) -> None:
        if not page.alive:
            return
        self._kill(page)
        bp = self.p.browsers[page.kind]
        b = page.id

        def notice(make: Callable[[float], r.Record]) -> None:
            # Only the incarnation that crashed is reported; a restart may have replaced it.
            if self.pages.get(b) is page:
                self.observe(make)
        # Like the real driver: the exit is reported first (it waits for the exit after a close).
        self.at(bp.exit_notice_ms, lambda: notice(lambda now: r.BrowserExited(now, browser=b, reason=reason,
                                                                       incarnation=page.incarnation)))
        self.at(bp.close_notice_ms, lambda: notice(lambda now: r.ConnectionClosed(now, browser=b,
                                                                           incarnation=page.incarnation)))

    def _heartbeat_loop(self, page: Page) -> None:
        interval = self.coord.s.heartbeat_interval_ms
        quantiles = self.p.heartbeat_extra_quantiles
        if quantiles:   # empirical gap distribution (calibrated): inverse CDF of a uniform draw
            probs, values = _inverse_cdf(quantiles)
            u = self._hb_uniform

            def extra() -> float:
                return float(np.interp(u(), probs, values))
        else:           # lognormal(mu, sigma) = exp(mu + sigma * z), as numpy computes it
            mu, sigma, z = math.log(self.p.heartbeat_extra_ms), self.p.heartbeat_sigma, self._hb_normal

            def extra() -> float:
                return math.exp(mu + sigma * z())
        bp = self.p.browsers[page.kind]
        by_load, by_compute = bp.heartbeat_blocked_by_load, bp.heartbeat_blocked_by_compute
        pages, done, coord, env, at = self.pages, self.done, self.coord, self.env, self.at
        rec = r.HeartbeatReceived

        def beat() -> None:
            # One SimPy event per heartbeat, at its arrival: it left the page `link_latency_ms`
            # earlier; a page hung or offline at that moment sent nothing (latency << interval).
            if not page.alive or pages.get(page.id) is not page or done.triggered:
                return
            gap = interval + extra()
            at(gap if gap > 1.0 else 1.0, beat)
            if page.hung or not page.connected:
                return
            if (by_load and page.creating > 0) or (by_compute and page.job is not None):
                page.hb_pending = True
                return
            self.sim_events += 1
            now = env.now
            cmds = coord.handle(rec(now, page.id), now)
            if cmds:
                self.execute(cmds)
        self.at(interval + self.p.link_latency_ms, beat)

    def _late_heartbeat(self, page: Page) -> None:
        """A heartbeat that fell due while the page's main thread was blocked leaves now."""
        if not page.hb_pending or page.job is not None or page.creating > 0:
            return
        page.hb_pending = False
        epoch = page.link_epoch
        self.at(self.p.link_latency_ms, lambda: not page.hung and self._deliver(
            page, epoch, lambda now: r.HeartbeatReceived(now, browser=page.id)))

    def _deliver(self, page: Page, epoch: int, make: Callable[[float], r.Record]) -> None:
        """A message from the page reaches the coordinator unless the link dropped meanwhile."""
        if page.connected and page.link_epoch == epoch and self.pages.get(page.id) is page:
            self.observe(make)

    # --- shards -------------------------------------------------------------------

    def _load(self, cmd: c.LoadShard) -> None:
        """A load joins the page's one task chain (the worker page runs loads and shard runs one
        after another, in arrival order)."""
        page = self.pages.get(cmd.browser)
        if page is None or not page.connected:
            return
        page.queue.append(_PendingLoad(cmd, self.env.now, page.link_epoch))
        self._next_job(page)

    def heap_growth(self, page: Page, shard: int) -> tuple[float, float]:
        """(MB the page's heap grows past its high-water creating this shard's session, the new one)."""
        held = sum(self.base_plan.shards[s].weight_mb for s in page.loaded)
        return heap_growth(held, self.base_plan.shards[shard].weight_mb, page.heap_mb)

    def load_ms(self, page: Page, shard: int) -> float:
        if shard in page.loaded:
            return 2 * self.p.link_latency_ms
        spec = self.base_plan.shards[shard]
        mb = spec.weight_mb
        bp = self.p.browsers[page.kind]
        if page.sessions > 0 and bp.later_load_ms is not None:     # a later session create
            grown, _ = self.heap_growth(page, shard)
            return (2 * self.p.link_latency_ms + bp.later_load_ms + mb * bp.later_load_ms_per_mb
                    + len(spec.units) * bp.later_load_ms_per_unit + grown * bp.later_load_ms_per_grown_mb)
        init = 0.0
        if page.sessions == 0:
            aged = bp.page_init_aged_ms is not None and self.env.now - page.ready_at >= AGED_PAGE_MS
            init = bp.page_init_aged_ms if aged else bp.page_init_ms
        elif bp.settle_load_ms > 0 and page.first_load_end is not None:
            init = bp.settle_load_ms * math.exp(-(self.env.now - page.first_load_end) / bp.settle_ms)
        if page.last_run_end is not None and self.env.now - page.last_run_end < SERVED_IDLE_MS:   # a serving page
            init += bp.served_load_ms
        if bp.load_ms is not None and bp.load_ms_per_mb is not None:
            return 2 * self.p.link_latency_ms + bp.load_ms + mb * bp.load_ms_per_mb + init
        return (2 * self.p.link_latency_ms + bp.load_scale
                * (mb * self.p.fetch_ms_per_mb + self.p.session_create_ms + mb * self.p.session_create_ms_per_mb + init))

    def _start_load(self, page: Page, item: "_PendingLoad") -> None:
        cmd = item.cmd
        ms = self.load_ms(page, cmd.shard)
        if cmd.shard not in page.loaded:
            page.sessions += 1
            _, page.heap_mb = self.heap_growth(page, cmd.shard)
        page.creating = 1
        self._hold_tail(page, True)
        started = self.env.now

        def loaded() -> None:
            page.creating = 0
            self._hold_tail(page, False)
            if not page.alive:
                return
            if page.first_load_end is None:
                page.first_load_end = self.env.now
                end = self.env.now + WARM_NOISE_WINDOW_MS      # its optimising compile beside other pages
                self._launching[page.id] = max(self._launching.get(page.id, 0.0), end)
            elif page.runs > 0:
                page.post_load_until = self.env.now + self.p.browsers[page.kind].post_load_ms
            page.loaded.add(cmd.shard)
            self._late_heartbeat(page)
            if self.memory_mb(page) > self.p.browsers[page.kind].memory_budget_mb:
                self._crash(page, "oom")
                return
            took = ms if (not self.p.cpu_bound_startup and started == item.asked) else self.env.now - item.asked
            self._deliver(page, item.epoch, lambda now: r.ShardLoaded(now, shard=cmd.shard, browser=page.id,
                                                                      load_ms=took))
            self._after_task(page)
            self._next_job(page)
        self._busy(ms, loaded, 1.0, self.p.browsers[page.kind].cpu_weight)

    def _send_run(self, cmd: c.RunShard) -> None:
        page = self.pages.get(cmd.browser)
        if page is None or not page.connected:
            return
        plan = self.plans(cmd.batch_size, cmd.seq_len)
        nbytes = plan.shards[cmd.shard].input_bytes
        epoch = page.link_epoch

        def arrive() -> None:
            if page.alive and page.connected and page.link_epoch == epoch:
                page.queue.append(cmd)
                self._next_job(page)
        extra = self._hop_extra.get(page.kind)     # the measured round trip's spread, on the way in
        spread = 0.0 if extra is None else float(np.interp(self._hop_uniform(), *extra))
        self.at(max(self.hop_ms(nbytes) + self._hop_overhead(page) + spread, 0.0), arrive)

    def compute_ms(self, page: Page, cmd: c.RunShard) -> float:
        rate = self.p.rate(page.kind, self.backend)
        spec = self.plans(cmd.batch_size, cmd.seq_len).shards[cmd.shard]
        f = spec.flops_by_class
        ms = (f.get("matmul", 0.0) / rate.matmul_gflops + f.get("attention", 0.0) / rate.attention_gflops
              + f.get("elementwise", 0.0) / rate.elementwise_gflops + f.get("conv", 0.0) / rate.conv_gflops) / 1e6
        ms = ms * page.slow + rate.run_overhead_ms + rate.readback_ms
        bp = self.p.browsers[page.kind]
        if bp.warmup_ms > 0:
            since = None if page.first_run_end is None else self.env.now - page.first_run_end
            ms = warm_time(ms, since, bp.warmup_factor, bp.warmup_extra_ms, bp.warmup_after_factor, bp.warmup_ms)
        elif bp.warmup_runs > 0:
            ms = warm_ms(ms, page.runs, bp.warmup_factor, bp.warmup_runs, bp.warmup_extra_ms)
        elif cmd.shard not in page.session_runs:
            ms = ms * bp.warmup_factor + bp.warmup_extra_ms
        if bp.session_first_run_ms and cmd.shard not in page.session_runs and page.runs >= LATE_SESSION_RUNS:
            ms += bp.session_first_run_ms
        if self.env.now < page.post_load_until:
            ms *= bp.post_load_factor
        ms *= self.background_factor(page.kind)
        if page.pressure:
            ms *= self.p.pressure_slowdown[page.pressure]
        noise = self._noise.get(page.kind)
        early = 0 < page.runs < STEADY_NOISE_RUNS or 0 < page.session_runs.get(cmd.shard, 0) < STEADY_NOISE_RUNS
        if early and page.kind in self._early_noise:
            noise = self._early_noise[page.kind]
        # a session's first run beside a launch takes no launch noise: its warm-up factor was fitted on
        # first runs that were mostly beside one (the launch noise on the session's later runs)
        if (self._launch_noise and page.kind in self._launch_noise and self._beside_launch(page.id)
                and cmd.shard in page.session_runs):
            noise = self._launch_noise[page.kind]
        if noise is not None:   # empirical noise (calibrated): inverse CDF of a uniform draw
            return ms * float(np.interp(self._compute_uniform(), noise[0], noise[1]))
        own = bp.compute_cv
        cv = self.p.compute_cv if own is None else own
        if cv > 0:
            ms *= math.exp(0.0 + cv * self._compute_normal())     # = rng.lognormal(0.0, cv)
        return ms

    def _beside_launch(self, browser: str) -> bool:
        now = self.env.now
        return any(b != browser and now <= end for b, end in self._launching.items())

    def _hop_overhead(self, page: Page) -> float:
        """Half the calibrated per-run round-trip overhead (feed build, encode, decode), slowed like a
        nice-0 process (the coordinator) by the background load."""
        over = self.p.browsers[page.kind].hop_overhead_ms
        return 0.0 if over == 0 else over / 2 * background_factor(self.p.host_cores, 1.0, self.p.background_cores)

    def background_factor(self, kind: str) -> float:
        return background_factor(self.p.host_cores, self.p.browsers[kind].cpu_weight, self.p.background_cores)

    def _next_job(self, page: Page) -> None:
        if page.job is not None or page.creating or not page.queue or not page.alive:
            return
        cmd = page.queue.popleft()
        if type(cmd) is _PendingLoad:
            self._start_load(page, cmd)
            return
        work = self.compute_ms(page, cmd)
        page.session_runs[cmd.shard] = page.session_runs.get(cmd.shard, 0) + 1
        page.runs += 1
        threads = self.p.rate(page.kind, self.backend).threads
        started = self.env.now
        page.job_run = cmd
        page.job = self.host.start(work, threads, lambda: self._job_done(page, cmd, started),
                                   self.p.browsers[page.kind].cpu_weight)
        self._hold_tail(page, True)
        if page.hung:
            self.host.pause(page.job, True)

    def _hold_tail(self, page: Page, held: bool) -> None:
        """A browser's own post-launch work goes on while its page loads or runs a shard, but off the
        host's books: the load and compute fits already hold whatever it costs them. It is paused
        there and, once the page's task ends, that task's duration comes off it (it ran meanwhile).
        Deferring it instead put a Firefox's whole 750 ms tail after its first load, onto the
        workload's first runs (a Chromium first run 300 ms simulated against 79 real)."""
        if page.tail is None:
            return
        if held:
            page.tail_held_at = self.env.now
            self.host.pause(page.tail, True)
        else:
            self.host.pause(page.tail, False)
            if page.tail_held_at is not None:
                self.host.consume(page.tail, self.env.now - page.tail_held_at)
                page.tail_held_at = None

    def _job_done(self, page: Page, cmd: c.RunShard, started: float) -> None:
        page.job = page.job_run = None
        if page.first_run_end is None:
            page.first_run_end = self.env.now
        page.last_run_end = self.env.now
        self._hold_tail(page, False)
        self._late_heartbeat(page)
        compute = self.env.now - started
        epoch = page.link_epoch
        if cmd.shard in page.errors or None in page.errors:
            page.errors.remove(cmd.shard if cmd.shard in page.errors else None)
            self.at(self.p.link_latency_ms, lambda: self._deliver(page, epoch, lambda now: r.ShardFailed(
                now, request_id=cmd.request_id, shard=cmd.shard, browser=page.id, attempt=cmd.attempt,
                reason="shard_error")))
        else:
            out = self.plans(cmd.batch_size, cmd.seq_len).shards[cmd.shard].output_bytes
            self.at(self.hop_ms(out) + self._hop_overhead(page), lambda: self._deliver(page, epoch, lambda now: r.ShardCompleted(
                now, request_id=cmd.request_id, shard=cmd.shard, browser=page.id, attempt=cmd.attempt,
                compute_ms=compute)))
        self._after_task(page)
        self._next_job(page)

    def _after_task(self, page: Page) -> None:
        """Messages the page's main thread received during the task it just finished (its answer
        went out first), e.g. a hang: measured, a real page finishes the run it is in, answers,
        and only then spins."""
        while page.after_task:
            page.after_task.pop(0)()

    # --- faults -------------------------------------------------------------------

    def target(self, ev: Event) -> Page | None:
        b = fault_target(self.coord.st, ev)
        return self.pages.get(b) if b else None

    def inject(self, ev: Event) -> None:
        from sim.faults import inject
        if not self.done.triggered:
            inject(self, ev)

    def _schedule_random_crash(self, b: str) -> None:
        delay = float(self.rng["mtbf"].exponential(self.mtbf_s * 1000.0))

        def crash() -> None:
            page = self.pages.get(b)
            if page is not None and page.alive and not self.done.triggered:
                self.observe(lambda now: r.FaultInjected(now, fault="browser_crash", browser=b,
                                                         params=(("origin", "mtbf"),)))
                self._crash(page, "crash")
            if not self.done.triggered:
                self._schedule_random_crash(b)
        self.at(delay, crash)


SimWorld._COMMANDS = {
    c.LaunchBrowser: SimWorld._launch,
    c.KillBrowser: lambda w, cmd: w._kill(w.pages.get(cmd.browser)),
    c.CloseBrowser: lambda w, cmd: w._kill(w.pages.get(cmd.browser)),
    c.LoadShard: SimWorld._load,
    c.RunShard: SimWorld._send_run,
    c.ArmTimer: lambda w, cmd: w._arm(cmd.key, cmd.at_ms),
    c.CancelTimer: SimWorld._cancel,
    c.FinishRun: SimWorld._finish,
}

"""A host's CPU cores shared by the browsers computing on it (weighted processor sharing).

Rules: a job needs `work_ms` of compute at full speed on `threads` cores. While the jobs on
the host together demand no more cores than it has, each runs at full speed. Otherwise the
cores are shared like Linux CFS shares them: in proportion to weight x threads (a renderer at
nice 5 has a smaller weight than a browser process starting at nice 0), no job getting more
than its own threads (water-filling). With equal weights: three equal one-thread jobs on a
2-core host each run at 2/3 speed, so they finish in 1.5x the time of one, not in the same time.
One scheduled callback is pending at a time (the next completion); a stale one is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import simpy

from sim.calls import call_later


@dataclass(slots=True)
class Job:
    remaining_ms: float
    threads: float
    on_done: Callable[[], None]
    paused: bool = False
    weight: float = 1.0
    rate: float = 1.0        # share of its full speed now (set by Host._rates)


class Host:
    def __init__(self, env: simpy.Environment, cores: float) -> None:
        self.env, self.cores = env, cores
        self.jobs: dict[int, Job] = {}
        self._next_id = 0
        self._last = 0.0
        self._gen = 0

    def _rates(self) -> None:
        live = [j for j in self.jobs.values() if not j.paused]
        if sum(j.threads for j in live) <= self.cores:
            for j in live:
                j.rate = 1.0
            return
        left, todo = self.cores, live
        while todo:
            lam = left / sum(j.weight * j.threads for j in todo)
            full = [j for j in todo if lam * j.weight >= 1.0]
            if not full:
                for j in todo:
                    j.rate = lam * j.weight
                return
            for j in full:
                j.rate = 1.0
                left -= j.threads
            todo = [j for j in todo if lam * j.weight < 1.0]

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0:
            for j in self.jobs.values():
                if not j.paused:
                    j.remaining_ms -= dt * j.rate
        self._last = now

    def _reschedule(self) -> None:
        self._gen += 1
        running = [j for j in self.jobs.values() if not j.paused]
        if not running:
            return
        delay = max(0.0, min(max(j.remaining_ms, 0.0) / j.rate for j in running))
        if delay == float("inf"):        # only open-ended jobs (a hang's busy loop): nothing to finish
            return
        gen = self._gen
        call_later(self.env, delay, lambda: self._fire(gen))

    def _changed(self) -> None:
        self._rates()
        self._reschedule()

    def _fire(self, gen: int) -> None:
        if gen != self._gen:
            return
        self._advance()
        done = sorted(k for k, j in self.jobs.items() if not j.paused and j.remaining_ms <= 1e-9)
        callbacks = [self.jobs.pop(k).on_done for k in done]
        self._changed()
        for cb in callbacks:
            cb()

    def start(self, work_ms: float, threads: float, on_done: Callable[[], None], weight: float = 1.0) -> int:
        self._advance()
        jid = self._next_id
        self._next_id += 1
        self.jobs[jid] = Job(max(work_ms, 0.0), threads, on_done, weight=weight)
        self._changed()
        return jid

    def cancel(self, jid: int) -> None:
        if jid in self.jobs:
            self._advance()
            del self.jobs[jid]
            self._changed()

    def pause(self, jid: int, paused: bool) -> None:
        if jid in self.jobs and self.jobs[jid].paused != paused:
            self._advance()
            self.jobs[jid].paused = paused
            self._changed()

    def consume(self, jid: int, ms: float) -> None:
        """Take `ms` of full-speed work off a job without it having held the CPU (work that another
        job's fitted time already holds); a job left with none ends now."""
        if jid in self.jobs:
            self._advance()
            self.jobs[jid].remaining_ms = max(self.jobs[jid].remaining_ms - ms, 0.0)
            self._changed()

    def scale(self, jid: int, factor: float) -> None:
        """Stretch what is left of a job (a slowdown that starts mid-run)."""
        if jid in self.jobs:
            self._advance()
            self.jobs[jid].remaining_ms *= factor
            self._changed()

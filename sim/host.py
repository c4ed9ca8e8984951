"""A host's CPU cores shared by the browsers computing on it (egalitarian processor sharing).

Rules: a job needs `work_ms` of compute at full speed on `threads` cores. While the jobs
on the host together demand more cores than it has, each progresses at
cores / total_demand of its full speed; otherwise at full speed. So three browsers on a
2-core host finish three equal jobs in 1.5x the time of one, not in the same time.
One SimPy timeout is pending at a time (the next completion); a stale one is ignored.
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


class Host:
    def __init__(self, env: simpy.Environment, cores: float) -> None:
        self.env, self.cores = env, cores
        self.jobs: dict[int, Job] = {}
        self._next_id = 0
        self._last = 0.0
        self._gen = 0

    def _factor(self) -> float:
        demand = sum(j.threads for j in self.jobs.values() if not j.paused)
        return 1.0 if demand <= self.cores else self.cores / demand

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0:
            f = self._factor()
            for j in self.jobs.values():
                if not j.paused:
                    j.remaining_ms -= dt * f
        self._last = now

    def _reschedule(self) -> None:
        self._gen += 1
        running = [j.remaining_ms for j in self.jobs.values() if not j.paused]
        if not running:
            return
        delay = max(0.0, min(running)) / self._factor()
        gen = self._gen
        call_later(self.env, delay, lambda: self._fire(gen))

    def _fire(self, gen: int) -> None:
        if gen != self._gen:
            return
        self._advance()
        done = sorted(k for k, j in self.jobs.items() if not j.paused and j.remaining_ms <= 1e-9)
        callbacks = [self.jobs.pop(k).on_done for k in done]
        self._reschedule()
        for cb in callbacks:
            cb()

    def start(self, work_ms: float, threads: float, on_done: Callable[[], None]) -> int:
        self._advance()
        jid = self._next_id
        self._next_id += 1
        self.jobs[jid] = Job(max(work_ms, 0.0), threads, on_done)
        self._reschedule()
        return jid

    def cancel(self, jid: int) -> None:
        if jid in self.jobs:
            self._advance()
            del self.jobs[jid]
            self._reschedule()

    def pause(self, jid: int, paused: bool) -> None:
        if jid in self.jobs and self.jobs[jid].paused != paused:
            self._advance()
            self.jobs[jid].paused = paused
            self._reschedule()

    def scale(self, jid: int, factor: float) -> None:
        """Stretch what is left of a job (a slowdown that starts mid-run)."""
        if jid in self.jobs:
            self._advance()
            self.jobs[jid].remaining_ms *= factor
            self._reschedule()

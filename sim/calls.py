"""Scheduled callbacks on a SimPy environment, without a Timeout object per call.

`env.timeout(d).callbacks.append(lambda _e: fn())` builds a Timeout (an Event with a
value, a delay and a bound environment) and a closure for every delay; the simulator
schedules millions. `call_later` schedules a bare event through the public
`Environment.schedule` with the same priority as a Timeout, so the order of events
(and every log) is unchanged, at a fraction of the cost.

Also: `Draws`, a seeded stream's variates taken in blocks (the same sequence, in the
same order, as one call per variate).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import simpy
from simpy.core import NORMAL


class _Call:
    __slots__ = ("callbacks", "fn", "_ok", "_value")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.callbacks = _RUN
        self.fn = fn
        self._ok = True
        self._value = None


def _run(ev: _Call) -> None:
    ev.fn()


_RUN = (_run,)      # SimPy replaces event.callbacks with None once it ran; a shared tuple is never mutated


def call_later(env: simpy.Environment, delay: float, fn: Callable[[], None]) -> None:
    env.schedule(_Call(fn), NORMAL, delay if delay > 0.0 else 0.0)   # type: ignore[arg-type]


class Draws:
    """Standard normals or uniforms from one generator, `block` at a time.

    numpy's Generator fills an array with the same variates, in the same order, as that
    many scalar calls, so a run draws exactly what it drew one by one."""

    __slots__ = ("_gen", "_uniform", "_buf", "_block")

    def __init__(self, gen: np.random.Generator, uniform: bool = False, block: int = 256) -> None:
        self._gen, self._uniform, self._block = gen, uniform, block
        self._buf: list[float] = []

    def __call__(self) -> float:
        if not self._buf:
            a = self._gen.random(self._block) if self._uniform else self._gen.standard_normal(self._block)
            self._buf = a[::-1].tolist()
        return self._buf.pop()

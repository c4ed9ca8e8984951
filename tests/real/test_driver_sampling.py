"""The real driver's memory sampler must not stall the event loop that serves the pages: a PSS read
(a /proc scan, then smaps_rollup per process) took 40-90 ms, and on the loop it delayed every
shard round trip in flight once a second."""

from __future__ import annotations

import asyncio
import threading
import types

from real.driver import RealDriver


class _SlowHandle:
    """A browser handle whose PSS read only finishes once the event loop has run meanwhile."""

    def __init__(self) -> None:
        self.loop_ran = threading.Event()
        self.exited = asyncio.Event()

    def pss_mb(self) -> float:
        return 123.0 if self.loop_ran.wait(timeout=2.0) else -1.0   # -1: the loop was blocked meanwhile


def test_memory_sampling_leaves_the_event_loop_free():
    async def scenario() -> list:
        handle = _SlowHandle()
        seen: list = []
        browser = types.SimpleNamespace(live=True, handle=handle)
        fake = types.SimpleNamespace(first_sample_s=0.0, sample_every_s=0.0, browsers={"chromium-0": browser},
                                     _drop_finished_outputs=lambda: None, now=lambda: 0.0, observe=seen.append)
        sampler = asyncio.create_task(RealDriver._sample_memory(fake))
        await asyncio.sleep(0.05)          # the sampler is inside pss_mb now; this coroutine still runs
        handle.loop_ran.set()
        while not seen:
            await asyncio.sleep(0.01)
        sampler.cancel()
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert seen[0].mb == 123.0 and seen[0].browser == "chromium-0"

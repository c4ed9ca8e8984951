"""The real driver's SIGINT/SIGTERM trap: armed on the loop, and the handlers found before are put back."""

from __future__ import annotations

import asyncio
import signal

from real.driver import RealDriver


def test_trap_then_untrap_restores_the_handlers_found_before():
    def mine(sig, frame):   # a caller's own handler, e.g. asyncio.run's SIGINT handler
        pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def main() -> dict:
        d = RealDriver(coord=None, shards=None, inputs=[])   # type: ignore[arg-type]
        d._loop, d._done = asyncio.get_running_loop(), asyncio.Event()
        d._trap_signals()
        trapped = {sig: signal.getsignal(sig) for sig in before}
        d._untrap_signals()
        return trapped

    try:
        for sig in before:
            signal.signal(sig, mine)
        trapped = asyncio.run(main())
        assert all(h is not mine for h in trapped.values())           # the loop's trap was armed
        assert signal.getsignal(signal.SIGTERM) is mine                # and the caller's handler is back
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)

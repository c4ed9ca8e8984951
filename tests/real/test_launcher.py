"""Browser launcher pieces that need no browser: executables, signal guard, leftover scan."""

from __future__ import annotations

import os
import signal

import pytest

import real.browsers as browsers
from shardtwin.errors import BrowserUnavailableError, RealRunError


def test_unknown_browser_lists_the_known_ones():
    with pytest.raises(BrowserUnavailableError, match="known: chromium, firefox"):
        browsers.find_executable("safari")


def test_unknown_launcher_is_refused():
    import asyncio
    with pytest.raises(RealRunError, match="known: auto, playwright, process"):
        asyncio.run(browsers.launch_browser("chromium", "http://127.0.0.1:1/", launcher="magic"))


class FakeHandle:
    def __init__(self) -> None:
        self.killed = 0
        self.profile_dir = "/nonexistent-shardtwin-test"

    def kill(self) -> None:
        self.killed += 1


def test_signal_guard_kills_live_browsers_then_chains_and_restores():
    seen: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda sig, frame: seen.append(sig))
    fake = FakeHandle()
    try:
        with browsers.kill_browsers_on_signals():
            browsers._LIVE.add(fake)  # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGTERM)
        assert fake.killed == 1 and seen == [signal.SIGTERM]
        restored = signal.getsignal(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert fake.killed == 1 and seen == [signal.SIGTERM] * 2 and restored is not None
    finally:
        browsers._LIVE.discard(fake)  # type: ignore[arg-type]
        signal.signal(signal.SIGTERM, original)


def test_leftover_scan_matches_only_the_marker():
    assert browsers.leftover_browser_pids("/definitely/not/a/shardtwin/profile-") == []

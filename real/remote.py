"""Browsers on other machines: join slots (any browser opens a URL) and Playwright connect endpoints.

Rules:
- A *join slot* launches nothing. Each LaunchBrowser for it issues a fresh join secret for that
  browser id only (WorkerServer.issue_join: the previous one is revoked, the run secret never
  leaves this machine) and announces the join URL (stderr + RealDriver.joins + on_join). The
  slot is READY when a page connects with that secret (the usual WorkerConnected → BrowserReady;
  launch_ms = the wait). No join within `join_timeout_s` → the handle ends with
  "remote did not join/rejoin within N s" (BrowserExited), so a restart is bounded.
- We own no process of a join slot: no pid, no memory samples, no SIGKILL. `crash()` (the
  `browser_crash` fault) is delivered in-page: the server closes the page's socket with 4002 and
  the page, whose protocol never reconnects after a close it did not ask for, stops and calls
  window.close(); we observe only the closed socket, as we would a remote machine dying.
  `kill()` (KillBrowser, fencing) revokes the join secret and closes the socket with 4003; the
  driver ignores the slot's old incarnation afterwards (a stale page is refused at its hello).
- A *connected* browser (--playwright-endpoint) is launched through
  `playwright.<kind>.connect(endpoint)` (a `launchServer` / `playwright launch-server` /
  `run-server` elsewhere): it has no local pid either; kill() and crash() close our connection
  to it abruptly (Playwright then closes our contexts: the page and its socket go), and the
  `disconnected` event is its exit.
- Both handles speak the part of BrowserHandle the driver uses (kill, exited, wait_exited,
  close, pss_mb/rss_mb, set_cpu_throttle) plus `crash()` and `exit_reason`.
- Playwright/OS errors are translated into BrowserUnavailableError / RealRunError here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from real.browsers import set_cpu_throttle, wait_set
from shardtwin.errors import BrowserUnavailableError, InputError, RealRunError

CRASH_CODE = 4002    # close code of an in-page browser_crash on a join slot
FENCE_CODE = 4003    # close code of a fenced (KillBrowser) join slot
DEFAULT_JOIN_TIMEOUT_S = 300.0
WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class RemoteOptions:
    """How a real run reaches browsers elsewhere (all off by default: everything local)."""
    bind: str = "127.0.0.1"
    public_host: str | None = None          # host written into join URLs (default: from bind)
    remote_slots: tuple[int, ...] = ()      # indices into the scenario's browser list
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S
    playwright_endpoint: str | None = None
    on_join: Callable[[dict], None] | None = field(default=None, compare=False)
    announce: bool = True                   # print join URLs on stderr


def split_browser_spec(items: list[str]) -> tuple[list[str], tuple[int, ...]]:
    """`chromium,remote,remote:firefox` -> kinds [chromium, chromium, firefox], remote slots (1, 2).
    A remote slot's kind is what the coordinator plans with (placement, sim); default chromium."""
    kinds, remote = [], []
    for i, item in enumerate(items):
        head, _, kind = item.partition(":")
        if head == "remote":
            kinds.append(kind or "chromium")
            remote.append(i)
        elif kind:
            raise InputError(f"bad browser {item!r}; use a kind (chromium, firefox, ...) or remote[:KIND]")
        else:
            kinds.append(item)
    return kinds, tuple(remote)


def last_slots(n_browsers: int, n_remote: int) -> tuple[int, ...]:
    """--remote-browsers N: the last N entries of the scenario's browser list."""
    if n_remote < 0 or n_remote > n_browsers:
        raise InputError(f"--remote-browsers {n_remote}: the scenario has {n_browsers} browser(s)")
    return tuple(range(n_browsers - n_remote, n_browsers))


def bind_warning(bind: str) -> str | None:
    """One line when the worker channel is reachable beyond this machine (None for loopback)."""
    try:
        if bind in ("localhost",) or ipaddress.ip_address(bind).is_loopback:
            return None
    except ValueError:
        pass
    return (f"shardtwin: warning: --bind {bind}: the worker channel (pages, shards, WebSocket) is reachable "
            f"from that network; the run secret or a join secret is still required to take part")


def public_host(bind: str, explicit: str | None = None) -> str:
    """The host join URLs name: explicit, else the bind address, else (wildcard) this host's address."""
    if explicit:
        return explicit
    if bind not in WILDCARDS:
        return bind
    import psutil
    for _name, addrs in sorted(psutil.net_if_addrs().items()):   # first global IPv4 of an interface
        for a in addrs:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(a.address)
                if a.family == socket.AF_INET and not (ip.is_loopback or ip.is_link_local):
                    return a.address
    return socket.getfqdn() or "127.0.0.1"


class _RemoteBase:
    """What both remote handles share: no local process, an exit event, a reason for the exit."""

    launcher = "remote"
    pid = 0

    def __init__(self, kind: str, browser_id: str) -> None:
        self.kind, self.id = kind, browser_id
        self.launched_at = time.monotonic()
        self.exited = asyncio.Event()
        self.exit_reason = "remote browser gone"

    def _end(self, reason: str) -> None:
        if not self.exited.is_set():
            self.exit_reason = reason
            self.exited.set()

    async def wait_exited(self, timeout: float) -> bool:
        return await wait_set(self.exited, timeout)

    def pss_mb(self) -> float:
        raise RealRunError(f"{self.id}: a remote browser's memory cannot be sampled from here")

    def rss_mb(self) -> float:
        return 0.0

    async def set_cpu_throttle(self, rate: float) -> None:
        raise RealRunError(f"{self.id}: no CDP session to a remote browser")


class JoinSlot(_RemoteBase):
    """One incarnation of a remote slot: a join URL, then whatever page joins with its secret."""

    launcher = "join"

    def __init__(self, kind: str, browser_id: str, server: Any, timeout_s: float, rejoin: bool) -> None:
        super().__init__(kind, browser_id)
        self.server = server
        self._secret, self.url = server.issue_join(browser_id)
        self.conn: Any = None
        self.closed_with: int | None = None
        verb = "rejoin" if rejoin else "join"
        self._timer = asyncio.get_running_loop().call_later(
            timeout_s, self._give_up, f"remote did not {verb} within {timeout_s:g} s")

    def mark_joined(self, conn: Any) -> None:
        """A page joined with this incarnation's secret (a reconnect after `disconnect` too)."""
        self.conn = conn
        self._timer.cancel()

    def _give_up(self, reason: str) -> None:
        if self.conn is None:
            self.server.revoke_join(self.id, self._secret)   # a page that comes later is refused
            self._end(reason)

    def _close(self, code: int, reason: str) -> None:
        conn = self.conn
        self.closed_with = code   # what we sent (aiohttp's close_code is the peer's echo)
        if conn is not None and not conn.closed.is_set():
            task = asyncio.get_running_loop().create_task(conn.close(code, reason))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def crash(self) -> None:
        """browser_crash, in-page: close its socket; the page stops itself (window.close())."""
        self._close(CRASH_CODE, "injected browser_crash")

    def kill(self) -> None:
        """Fence: revoke this incarnation's join secret and close its socket with a policy code."""
        self._timer.cancel()
        self.server.revoke_join(self.id, self._secret)
        self._close(FENCE_CODE, "fenced by the coordinator")
        self._end("fenced")

    async def close(self, timeout: float = 5.0) -> None:
        self.kill()


class ConnectedBrowser(_RemoteBase):
    """A browser reached through a Playwright connect endpoint (no local pid)."""

    launcher = "playwright-connect"

    def __init__(self, kind: str, browser_id: str, browser: Any) -> None:
        super().__init__(kind, browser_id)
        self._browser, self._context, self._cdp = browser, None, None
        self._closing: asyncio.Task | None = None
        browser.on("disconnected", lambda *_: self._end("remote browser disconnected"))

    def kill(self) -> None:
        """Close our connection to the remote browser (not awaited: callable from anywhere)."""
        if self._closing is None and not self.exited.is_set():
            self._closing = asyncio.get_running_loop().create_task(self._close_quietly())

    async def crash(self) -> None:
        self.kill()

    async def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self._browser.close()
        self._end("remote browser closed")

    async def close(self, timeout: float = 5.0) -> None:
        self.kill()
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._closing), timeout)

    async def set_cpu_throttle(self, rate: float) -> None:
        await set_cpu_throttle(self._cdp, self.id, self.kind, rate)


async def connect_browser(pw: Any, kind: str, endpoint: str, url: str, browser_id: str,
                          timeout_s: float = 30.0) -> ConnectedBrowser:
    """Open `url` in a new context of a browser reached through a Playwright endpoint."""
    if kind not in ("chromium", "firefox"):
        raise BrowserUnavailableError(f"{kind} cannot be reached through a Playwright endpoint here")
    browser = None
    try:
        browser = await getattr(pw, kind).connect(endpoint, timeout=timeout_s * 1000)
        h = ConnectedBrowser(kind, browser_id, browser)
        h._context = await browser.new_context()
        page = await h._context.new_page()
        if kind == "chromium":
            with contextlib.suppress(Exception):   # CDP over connect is best effort (slow fault falls back)
                h._cdp = await h._context.new_cdp_session(page)
        await page.goto(url, wait_until="commit", timeout=timeout_s * 1000)
        return h
    except Exception as exc:   # Playwright's errors are not one hierarchy
        if browser is not None:
            with contextlib.suppress(Exception):
                await browser.close()
        raise BrowserUnavailableError(
            f"{kind} via Playwright endpoint {endpoint} failed: {' '.join(str(exc).split())[:300]}") from exc


async def crash(handle: Any) -> None:
    """The browser_crash fault: an in-page / connection fault for remote handles, SIGKILL locally."""
    if isinstance(handle, _RemoteBase):
        await handle.crash()
    else:
        handle.kill()


def announce(entry: dict, opts: RemoteOptions) -> None:
    if opts.announce:
        verb = "rejoin" if entry["incarnation"] > 1 else "join"
        sys.stderr.write(f"shardtwin: remote slot {entry['browser']} ({verb}): open {entry['url']}\n")
        sys.stderr.flush()
    if opts.on_join is not None:
        opts.on_join(dict(entry))

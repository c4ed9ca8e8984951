"""Real browser processes: launch, observe, kill, and never leave one behind.

Rules:
- Only Debian executables (/usr/bin/chromium, firefox-esr); Playwright never downloads.
- Every browser gets a fresh profile dir named MARKER_PREFIX* (leftover detection keys on it)
  and its own process group/session; kill() is SIGKILL of that whole group (browser_crash).
  Ending a handle removes its profile and Chromium's /tmp socket dir (_remove_profile).
- launcher 'process' (= 'auto', measured faster here) starts the executable itself with
  PR_SET_PDEATHSIG=SIGKILL, so it dies if shardtwin is kill -9'd; Chromium gets CDP over
  --remote-debugging-pipe (no port). 'playwright' is there for page-level tooling; its driver
  kills its browsers when its pipe to us closes.
- Every handle is registered until it has exited: BrowserPool ends them all on normal exit,
  on exceptions, on SIGINT/SIGTERM (handlers installed only inside the pool, restored after)
  and at interpreter exit (atexit).
- Playwright/OS errors are translated into BrowserUnavailableError / RealRunError here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import psutil

from real.procs import CdpPipe, child_setup
from shardtwin.errors import BrowserUnavailableError, RealRunError

MARKER_PREFIX = os.path.join(tempfile.gettempdir(), "shardtwin-browser-")
EXECUTABLES = {"chromium": ("chromium", "chromium-browser"), "firefox": ("firefox-esr", "firefox")}
CHROMIUM_ARGS = [
    "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--no-default-browser-check", "--disable-breakpad", "--password-store=basic",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows", "--disable-features=Translate,MediaRouter",
]
FIREFOX_PREFS: dict[str, Any] = {
    "dom.webgpu.enabled": True, "gfx.webgpu.ignore-blocklist": True,
    "dom.max_script_run_time": 0, "dom.max_chrome_script_run_time": 0,  # a hang stays a hang
    "browser.shell.checkDefaultBrowser": False, "browser.aboutwelcome.enabled": False,
    "browser.startup.homepage_override.mstone": "ignore", "startup.homepage_welcome_url": "",
    "datareporting.policy.dataSubmissionEnabled": False, "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False, "toolkit.telemetry.unified": False,
    "app.update.enabled": False, "app.update.auto": False, "app.normandy.enabled": False,
    "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False,
    "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False, "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False, "browser.region.update.enabled": False,
    "browser.newtabpage.enabled": False, "browser.discovery.enabled": False,
    "network.dns.disablePrefetch": True, "network.prefetch-next": False,
    "browser.sessionstore.resume_from_crash": False, "toolkit.startup.max_resumed_crashes": -1,
    "media.gmp-manager.updateEnabled": False, "browser.tabs.warnOnClose": False,
}

_LIVE: set["BrowserHandle"] = set()
_LIVE_LOCK = threading.Lock()


def find_executable(kind: str) -> str:
    if kind not in EXECUTABLES:
        raise BrowserUnavailableError(f"unknown real browser {kind!r}; known: {', '.join(EXECUTABLES)}")
    for name in EXECUTABLES[kind]:
        if path := shutil.which(name):
            return path
    raise BrowserUnavailableError(f"{kind} executable not found ({' or '.join(EXECUTABLES[kind])}); "
                                  "run scripts/setup.sh (apt) to install it")


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """True once `event` is set, False if `timeout` seconds pass first."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


@dataclass(eq=False)
class BrowserHandle:
    """One launched browser. pid is the browser's main process (its process group leader)."""

    kind: str
    id: str
    pid: int
    launcher: str  # playwright | process
    profile_dir: Path
    launched_at: float  # time.monotonic() when launch began
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    _proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _context: Any = field(default=None, repr=False)
    _cdp: Any = field(default=None, repr=False)
    _watch: asyncio.Task | None = field(default=None, repr=False)
    _pgid: int | None = field(default=None, repr=False)
    _swept: bool = field(default=False, repr=False)

    @property
    def pgid(self) -> int | None:
        """The browser's process group, remembered at launch (it outlives the main process)."""
        if self._pgid is None:
            with contextlib.suppress(ProcessLookupError):
                self._pgid = os.getpgid(self.pid)
        return None if self._pgid in (None, os.getpgrp()) else self._pgid  # never our own group

    def pids(self) -> list[int]:
        """Every live process of this browser: its process group plus all descendants."""
        found: set[int] = set()
        try:
            main = psutil.Process(self.pid)
            found.add(self.pid)
            found.update(c.pid for c in main.children(recursive=True))
        except psutil.Error:
            pass
        if (pgid := self.pgid) is not None:
            for p in psutil.process_iter():
                with contextlib.suppress(ProcessLookupError, psutil.Error):
                    if os.getpgid(p.pid) == pgid:
                        found.add(p.pid)
        return sorted(pid for pid in found if _alive(pid))

    def rss_mb(self) -> float:
        return sum(_mem(pid, "rss") for pid in self.pids()) / 2**20

    def pss_mb(self) -> float:
        """Proportional set size (shared pages split fairly); slower than rss_mb."""
        return sum(_mem(pid, "pss") for pid in self.pids()) / 2**20

    def kill(self) -> None:
        """SIGKILL the browser's whole process group and any straggler (synchronous, signal-safe).
        A no-op once the exit was observed and swept (its pgid may since belong to others)."""
        if self._swept:
            return
        pids = self.pids()
        if (pgid := self.pgid) is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def set_cpu_throttle(self, rate: float) -> None:
        """Chromium only (CDP Emulation.setCPUThrottlingRate; 1 = off), either launcher."""
        await set_cpu_throttle(self._cdp, self.id, self.kind, rate)

    async def wait_exited(self, timeout: float) -> bool:
        return await wait_set(self.exited, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Graceful close (Playwright close / SIGTERM), then SIGKILL of the group; removes the profile."""
        if not self.exited.is_set():
            with contextlib.suppress(Exception):
                if self._context is not None:
                    await asyncio.wait_for(self._context.close(), timeout)
                else:
                    os.kill(self.pid, signal.SIGTERM)
            if not await self.wait_exited(timeout):
                self.kill()
                await self.wait_exited(timeout)
        self.kill()  # stragglers (children that outlived the main process)
        if self._watch is not None:
            self._watch.cancel()
        if isinstance(self._cdp, CdpPipe):
            self._cdp.close()
        _forget(self)
        _remove_profile(self.profile_dir)

    async def _watch_exit(self) -> None:
        if self._proc is not None:
            await self._proc.wait()
        else:
            while _alive(self.pid):
                await asyncio.sleep(0.02)
        self.exited.set()
        await asyncio.sleep(0)  # waiters observe the exit first; the sweep below takes a scan
        self.kill()  # children never outlive the main process
        self._swept = True
        _forget(self)


async def set_cpu_throttle(cdp: Any, browser_id: str, kind: str, rate: float) -> None:
    """CDP Emulation.setCPUThrottlingRate (1 = off) on a browser's CDP session (None: not chromium);
    every failure is a RealRunError. Local handles and Playwright-connected ones share it."""
    if cdp is None:
        raise RealRunError(f"{browser_id}: CPU throttling needs chromium (CDP); {kind} has none")
    try:
        await cdp.send("Emulation.setCPUThrottlingRate", {"rate": float(rate)})
    except Exception as exc:  # Playwright raises its own Error types
        raise RealRunError(f"{browser_id}: CPU throttling failed: {exc}") from exc


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _mem(pid: int, attr: str) -> int:
    try:
        p = psutil.Process(pid)
        return getattr(p.memory_full_info() if attr == "pss" else p.memory_info(), attr)
    except psutil.Error:
        return 0


def _remove_profile(profile: Path | str) -> None:
    """Remove a profile dir and the /tmp/org.chromium.Chromium.* dir its SingletonSocket symlink
    points to (Chromium's ProcessSingleton socket dir, which it removes itself only on a clean exit)."""
    with contextlib.suppress(OSError):
        socket_dir = os.path.dirname(os.readlink(os.path.join(profile, "SingletonSocket")))
        if os.path.basename(socket_dir).startswith("org.chromium.Chromium."):
            shutil.rmtree(socket_dir, ignore_errors=True)
    shutil.rmtree(profile, ignore_errors=True)


def _forget(handle: BrowserHandle) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(handle)


def kill_all_live() -> None:
    """SIGKILL every registered browser (signal handlers, atexit, emergencies)."""
    with _LIVE_LOCK:
        handles = list(_LIVE)
    for h in handles:
        h.kill()
        _remove_profile(h.profile_dir)


atexit.register(kill_all_live)


def leftover_browser_pids(prefix: str | None = None) -> list[int]:
    """Processes whose command line mentions a shardtwin profile dir (should be none at rest).
    prefix defaults to the current MARKER_PREFIX (tests narrow it to their own session)."""
    prefix = prefix or MARKER_PREFIX
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE and any(prefix in a for a in p.info["cmdline"] or ()):
                found.append(p.pid)
    return sorted(found)


def _main_pid(profile_dir: Path) -> int:
    """The browser process that owns this profile: the one whose parent does not mention it."""
    marker = str(profile_dir)
    owners = {p.pid: p for p in psutil.process_iter(["pid", "cmdline"])
              if any(marker in a for a in (p.info["cmdline"] or ()))}
    for pid, p in owners.items():
        with contextlib.suppress(psutil.Error):
            if p.ppid() not in owners:
                return pid
    raise RealRunError(f"launched browser not found (profile {profile_dir})")


def _process_argv(kind: str, exe: str, profile: Path, url: str, headed: bool) -> list[str]:
    if kind == "chromium":
        head = [] if headed else ["--headless=new"]
        return [exe, *head, *CHROMIUM_ARGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", url]
    prefs = "".join(f"user_pref({k!r}, {_js(v)});\n".replace("'", '"') for k, v in FIREFOX_PREFS.items())
    (profile / "user.js").write_text(prefs)
    return [exe, *([] if headed else ["--headless"]), "--no-remote", "--profile", str(profile), url]


def _js(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v)


async def _launch_process(h: BrowserHandle, exe: str, url: str, headed: bool) -> None:
    env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"}
    cdp = CdpPipe() if h.kind == "chromium" else None
    try:
        # close_fds=False so the CDP pipe survives on fds 3/4; every other fd Python opens is
        # non-inheritable (PEP 446), so nothing else leaks into the browser.
        h._proc = await asyncio.create_subprocess_exec(
            *_process_argv(h.kind, exe, h.profile_dir, url, headed), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True, close_fds=cdp is None,
            preexec_fn=functools.partial(child_setup, cdp, os.getpid()))
    except OSError as exc:
        if cdp is not None:
            cdp.close()
        raise BrowserUnavailableError(f"{h.kind} would not start ({exe}): {exc}") from exc
    h.pid, h.launcher = h._proc.pid, "process"
    if cdp is not None:
        await cdp.started()
        h._cdp = cdp


async def _launch_playwright(h: BrowserHandle, pw: Any, exe: str, url: str, headed: bool) -> None:
    if h.kind == "chromium":
        ctx = await pw.chromium.launch_persistent_context(
            str(h.profile_dir), executable_path=exe, headless=not headed, args=CHROMIUM_ARGS, timeout=30_000)
    else:
        ctx = await pw.firefox.launch_persistent_context(
            str(h.profile_dir), channel="moz-firefox", executable_path=exe, headless=not headed,
            firefox_user_prefs=FIREFOX_PREFS, timeout=30_000)
    h._context, h.launcher = ctx, "playwright"
    h.pid = _main_pid(h.profile_dir)
    page = ctx.pages[0] if ctx.pages else await ctx.new_page()
    if h.kind == "chromium":
        h._cdp = await ctx.new_cdp_session(page)
    await page.goto(url, wait_until="commit")


async def launch_browser(kind: str, url: str, headed: bool = False, *, browser_id: str | None = None,
                         launcher: str = "auto", playwright: Any = None) -> BrowserHandle:
    """Start `kind` at `url`. launcher: process | playwright (needs `playwright`) | auto.

    auto = process: measured here it starts Firefox 2-3x sooner and, for Chromium, avoids the
    5-10x WebSocket cost Playwright adds to every frame (its CDP session sees every frame)."""
    if launcher not in ("auto", "playwright", "process"):
        raise RealRunError(f"unknown launcher {launcher!r}; known: auto, playwright, process")
    exe = find_executable(kind)
    profile = Path(tempfile.mkdtemp(prefix=os.path.basename(MARKER_PREFIX), dir=os.path.dirname(MARKER_PREFIX)))
    h = BrowserHandle(kind, browser_id or profile.name, 0, launcher, profile, time.monotonic())
    with _LIVE_LOCK:
        _LIVE.add(h)
    try:
        if launcher == "playwright":
            if playwright is None:
                raise BrowserUnavailableError("launcher 'playwright' needs a started Playwright instance")
            try:
                await _launch_playwright(h, playwright, exe, url, headed)
            except Exception as exc:  # Playwright's errors are not one hierarchy
                raise BrowserUnavailableError(f"{kind} via Playwright failed: {' '.join(str(exc).split())[:300]}") from exc
        else:
            await _launch_process(h, exe, url, headed)
    except BaseException:
        h.kill()
        _forget(h)
        _remove_profile(profile)
        raise
    _ = h.pgid  # remember the group while the leader is surely alive
    h._watch = asyncio.create_task(h._watch_exit())
    return h


@contextlib.contextmanager
def kill_browsers_on_signals() -> Iterator[None]:
    """While active, SIGINT/SIGTERM first SIGKILL every live browser, then do what they did before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(sig: int, frame: Any) -> None:
        kill_all_live()
        prev = previous[sig]
        if callable(prev):
            prev(sig, frame)
        elif prev != signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


class BrowserPool:
    """async with BrowserPool() as pool: h = await pool.launch('chromium', url, browser_id='c0').

    Owns one Playwright instance (started only for launcher='playwright') and every handle
    it launched; all of them end when the block ends, however it ends.
    """

    def __init__(self, launcher: str = "auto", handle_signals: bool = True) -> None:
        self.launcher = launcher
        self.handles: list[BrowserHandle] = []
        self._signals = kill_browsers_on_signals() if handle_signals else contextlib.nullcontext()
        self._pw_manager: Any = None
        self._pw: Any = None

    async def __aenter__(self) -> "BrowserPool":
        self._signals.__enter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.close_all()
            if self._pw_manager is not None:
                with contextlib.suppress(Exception):
                    await self._pw_manager.__aexit__(None, None, None)
        finally:
            self._signals.__exit__(None, None, None)

    async def _playwright(self) -> Any:
        if self._pw is None:
            try:
                from playwright.async_api import async_playwright
                self._pw_manager = async_playwright()
                self._pw = await self._pw_manager.__aenter__()
            except Exception as exc:
                raise BrowserUnavailableError(f"Playwright would not start: {exc}") from exc
        return self._pw

    async def launch(self, kind: str, url: str, browser_id: str | None = None,
                     headed: bool = False, launcher: str | None = None) -> BrowserHandle:
        chosen = launcher or self.launcher
        pw = await self._playwright() if chosen == "playwright" else None
        h = await launch_browser(kind, url, headed, browser_id=browser_id, launcher=chosen, playwright=pw)
        self.handles.append(h)
        return h

    async def close_all(self, timeout: float = 5.0) -> None:
        handles, self.handles = self.handles, []
        results = await asyncio.gather(*(h.close(timeout) for h in handles), return_exceptions=True)
        for h, r in zip(handles, results):
            if isinstance(r, BaseException):
                h.kill()

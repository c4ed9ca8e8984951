"""Child-process plumbing for process-launched browsers: parent-death signal and a CDP pipe.

Rules:
- `child_setup` runs between fork and exec: it may only make syscalls (no locks, no imports).
- CdpPipe speaks the Chrome DevTools Protocol over --remote-debugging-pipe (fd 3: commands
  to the browser, fd 4: replies; NUL-terminated JSON). No TCP port is opened. It is used for
  Emulation only (the `slow` fault); it never evaluates anything in the page.
- Errors are translated into RealRunError at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import itertools
import json
import os
import signal
from typing import Any

from shardtwin.errors import RealRunError

PR_SET_PDEATHSIG = 1


def child_setup(cdp: "CdpPipe | None", parent: int | None = None) -> None:
    """In the child: die with the parent (SIGKILL), and put the CDP pipe ends on fds 3 and 4.
    If the parent already died between fork and prctl, the death signal will never come: exit."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    if cdp is not None:
        a = fcntl.fcntl(cdp.child_read, fcntl.F_DUPFD, 10)   # out of the way of 3 and 4 first
        b = fcntl.fcntl(cdp.child_write, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)


class CdpPipe:
    """CDP over the browser's debugging pipe. Create before spawn, `started()` after."""

    def __init__(self) -> None:
        self.child_read, self._write = os.pipe()    # we write commands, the browser reads fd 3
        self._read, self.child_write = os.pipe()    # the browser writes replies to fd 4
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader_task: asyncio.Task | None = None
        self._page_session: str | None = None

    async def started(self) -> None:
        """Call once the browser runs: closes the child's ends here and starts reading replies."""
        os.close(self.child_read)
        os.close(self.child_write)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._read, "rb", 0))
        self._reader_task = asyncio.create_task(self._read_loop(reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = json.loads((await reader.readuntil(b"\0"))[:-1])
                fut = self._pending.pop(msg.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(RealRunError("CDP pipe closed (browser gone)"))
            self._pending.clear()

    async def send(self, method: str, params: dict | None = None, session: str | None = None,
                   timeout: float = 10.0) -> dict:
        """One CDP command; with session=None on the page (attached on first use)."""
        if session is None and not method.startswith(("Target.", "Browser.")):
            session = await self._page()
        cid = next(self._ids)
        msg: dict[str, Any] = {"id": cid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            os.write(self._write, json.dumps(msg).encode() + b"\0")
            reply = await asyncio.wait_for(fut, timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise RealRunError(f"CDP {method} failed: {exc or 'timed out'}") from exc
        finally:
            self._pending.pop(cid, None)
        if "error" in reply:
            raise RealRunError(f"CDP {method} failed: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def _page(self) -> str:
        if self._page_session is None:
            infos = (await self.send("Target.getTargets")).get("targetInfos", [])
            pages = [t for t in infos if t.get("type") == "page"]
            if not pages:
                raise RealRunError("CDP: the browser has no page to attach to")
            res = await self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})
            self._page_session = res["sessionId"]
        return self._page_session

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        with contextlib.suppress(OSError):
            os.close(self._write)

"""The worker server: static worker page + ONNX shards over HTTP, the data plane over WebSocket.

Rules:
- Binds 127.0.0.1, port 0 (WebGPU needs a secure context; nothing else should reach it). With
  `host` set to another address (remote browsers, real/remote.py) it also listens there, on a
  second port: local browsers keep using loopback; the secret is still required on both.
- Every response carries COOP/COEP/CORP (cross-origin isolation: WASM threads need it).
- Static names are validated against a strict pattern and served only from their directory.
- A worker is accepted only after a hello carrying the per-run secret, or the join secret issued
  for exactly that browser id (remote slots: `join_url`; a new join revokes the old one;
  constant-time compare); anything else is closed with 1008 (policy) and reported as a WorkerRejected event.
- After the hello, every frame that breaks the protocol (malformed, oversized, unknown type) and
  every result frame no run awaits (duplicate, replayed, late, never asked) is dropped and
  reported as WorkerRejected; only awaited results reach a run.
- This layer is transport only: it reports what happened (ServerEvent) with a time from the
  injected clock and never decides anything. The driver owns policy.
- Library errors are translated here into shardtwin.errors classes (`raise ... from exc`).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from real.protocol import (FAULTS, FROM_WORKER, Control, ErrorReport, FrameKind, Hello, Inject,
                           LoadShard, Ping, Pong, ProtocolError, ShardLoaded, TensorFrame,
                           UnloadShard, Welcome, decode_control, decode_tensors,
                           encode_control, encode_tensors)
from shardtwin.errors import RealRunError

WEB_DIR = Path(__file__).parent / "web"
ORT_DIST = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PAGE_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
            "connect-src 'self' ws://127.0.0.1:*; object-src 'none'; base-uri 'none'")
HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MIME = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm",
        ".onnx": "application/octet-stream", ".map": "application/json"}
STATIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,122}\.onnx$")
BROWSER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class WorkerGoneError(RealRunError):
    """The worker's connection closed while something was sent to it or awaited from it."""


class WorkerReportedError(RealRunError):
    """The worker page reported an error for a load or a run (`report` holds the details)."""

    def __init__(self, report: ErrorReport) -> None:
        super().__init__(f"worker {report.kind}: {report.message}")
        self.report = report


# --- what the server reports (past tense; t = clock() seconds at receipt) -----------

@dataclass(frozen=True, slots=True)
class WorkerConnected:
    t: float
    browser_id: str
    conn: "WorkerConnection"
    capabilities: dict
    reconnect: bool  # this id had connected before in this server's life


@dataclass(frozen=True, slots=True)
class MessageReceived:
    t: float
    browser_id: str
    message: Control | TensorFrame


@dataclass(frozen=True, slots=True)
class WorkerDisconnected:
    t: float
    browser_id: str
    code: int | None  # 1006: the socket just died (crash, kill); 4001: injected disconnect
    reason: str
    conn: "WorkerConnection"  # which connection (a reconnect may already have replaced it)


@dataclass(frozen=True, slots=True)
class WorkerRejected:
    t: float
    browser_id: str | None  # the id it claimed, if any
    reason: str
    peer: str | None


ServerEvent = WorkerConnected | MessageReceived | WorkerDisconnected | WorkerRejected


@dataclass(eq=False)
class WorkerConnection:
    """One accepted worker socket. send_* fire and forget; load_shard/run/ping await replies."""

    browser_id: str
    capabilities: dict
    connected_at: float
    _ws: web.WebSocketResponse = field(repr=False)
    _pending: dict[tuple, asyncio.Future] = field(default_factory=dict, repr=False)
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    close_code: int | None = None
    _nonce: Any = field(default_factory=lambda: itertools.count(1), repr=False)

    async def _send(self, data: str | bytes) -> None:
        if self.closed.is_set() or self._ws.closed:
            raise WorkerGoneError(f"worker {self.browser_id} is disconnected")
        try:
            if isinstance(data, str):
                await self._ws.send_str(data)
            else:
                await self._ws.send_bytes(data)
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerGoneError(f"worker {self.browser_id}: send failed: {exc}") from exc

    async def send_load_shard(self, shard: int, url: str, backend: str,
                              inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ()) -> None:
        await self._send(encode_control(LoadShard(shard, url, backend, list(inputs), list(outputs))))

    async def send_unload_shard(self, shard: int) -> None:
        await self._send(encode_control(UnloadShard(shard)))

    async def send_run(self, req: int, shard: int, attempt: int, tensors: Mapping[str, np.ndarray]) -> None:
        await self._send(encode_tensors(TensorFrame(FrameKind.RUN, req, shard, attempt, tensors)))

    async def send_inject(self, fault: str, **params: Any) -> None:
        if fault not in FAULTS:
            raise ProtocolError(f"unknown fault {fault!r}; accepted: {', '.join(FAULTS)}")
        await self._send(encode_control(Inject(fault, params)))

    async def send_ping(self, nonce: int) -> None:
        await self._send(encode_control(Ping(nonce)))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code=code, message=reason.encode()[:120])

    # request/response helpers (the replies are still reported as MessageReceived events)
    async def load_shard(self, shard: int, url: str, backend: str, timeout: float = 60.0,
                         inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ()) -> ShardLoaded:
        fut = self._expect(("load", shard))
        await self.send_load_shard(shard, url, backend, inputs, outputs)
        return await self._await(fut, timeout, f"load of shard {shard}")

    async def run(self, req: int, shard: int, attempt: int, tensors: Mapping[str, np.ndarray],
                  timeout: float = 60.0) -> TensorFrame:
        fut = self._expect(("run", req, shard, attempt))
        await self.send_run(req, shard, attempt, tensors)
        return await self._await(fut, timeout, f"run req {req} shard {shard}")

    async def ping(self, timeout: float = 5.0) -> float:
        """Round trip of a ping in ms (monotonic clock of this process)."""
        nonce = next(self._nonce)
        fut = self._expect(("pong", nonce))
        t0 = time.perf_counter()
        await self.send_ping(nonce)
        await self._await(fut, timeout, "ping")
        return (time.perf_counter() - t0) * 1000

    def _expect(self, key: tuple) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        return fut

    async def _await(self, fut: asyncio.Future, timeout: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as exc:
            raise RealRunError(f"worker {self.browser_id}: {what} timed out after {timeout} s") from exc
        finally:
            for key, f in list(self._pending.items()):
                if f is fut:
                    del self._pending[key]

    def _dispatch(self, msg: Control | TensorFrame) -> None:
        match msg:
            case TensorFrame(req=req, shard=shard, attempt=attempt):
                self._resolve(("run", req, shard, attempt), msg)
            case ShardLoaded(shard=shard):
                self._resolve(("load", shard), msg)
            case Pong(nonce=nonce):
                self._resolve(("pong", nonce), msg)
            case ErrorReport(kind="load_failed", shard=shard):
                self._resolve(("load", shard), WorkerReportedError(msg))
            case ErrorReport(req=req, shard=shard, attempt=attempt) if req is not None:
                self._resolve(("run", req, shard, attempt), WorkerReportedError(msg))
            case _:
                pass

    def _awaits(self, frame: TensorFrame) -> bool:
        """True if a run with this frame's (req, shard, attempt) is awaiting its result."""
        fut = self._pending.get(("run", frame.req, frame.shard, frame.attempt))
        return fut is not None and not fut.done()

    def _resolve(self, key: tuple, value: Any) -> None:
        fut = self._pending.pop(key, None)
        if fut is None or fut.done():
            return
        if isinstance(value, Exception):
            fut.set_exception(value)
        else:
            fut.set_result(value)

    def _mark_closed(self, code: int | None) -> None:
        self.close_code = code
        self.closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerGoneError(f"worker {self.browser_id} disconnected (code {code})"))
        self._pending.clear()


class WorkerServer:
    """async with WorkerServer(shard_dir, secret, on_event=f) as srv: srv.worker_url(id) -> page URL.

    Events go to `on_event(event)`.
    `connections` maps browser id -> the live WorkerConnection.
    """

    def __init__(self, shard_dir: str | Path, secret: str, *, on_event: Callable[[ServerEvent], None],
                 heartbeat_interval_ms: float = 250.0,
                 max_msg_bytes: int = 64 << 20, hello_timeout_s: float = 15.0, close_timeout_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, host: str = "127.0.0.1",
                 public_host: str | None = None) -> None:
        if not secret:
            raise RealRunError("the worker server needs a non-empty run secret")
        self.shard_dir = Path(shard_dir)
        self.secret = secret
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_msg_bytes = max_msg_bytes
        self.hello_timeout_s = hello_timeout_s
        self.close_timeout_s = close_timeout_s  # a hung page never answers a close frame
        self._closers: set[asyncio.Task] = set()
        self.clock = clock
        self._on_event = on_event
        self.connections: dict[str, WorkerConnection] = {}
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = host                  # the extra address remote browsers reach (127.0.0.1: none)
        self.public_host = public_host or host
        self.public_port = 0              # its port (== port when host is loopback)
        self._join_secrets: dict[str, str] = {}   # browser id -> its current join secret

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_url(self, browser_id: str, threads: int = 0) -> str:
        if not BROWSER_ID.match(browser_id):
            raise RealRunError(f"bad browser id {browser_id!r}; use letters, digits, . _ : -")
        return (f"{self.base_url}/worker.html?id={quote(browser_id)}&threads={int(threads)}"
                f"#secret={quote(self.secret)}")

    @property
    def public_base_url(self) -> str:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"http://{host}:{self.public_port or self.port}"

    def join_url(self, browser_id: str, secret: str, threads: int = 0) -> str:
        """The URL a browser on another machine opens to become `browser_id`; it carries `secret`
        (a join secret issued for this id only, see issue_join), never the run secret."""
        return self.worker_url(browser_id, threads).replace(self.base_url, self.public_base_url, 1) \
            .split("#", 1)[0] + f"#secret={quote(secret)}"

    def issue_join(self, browser_id: str) -> tuple[str, str]:
        """A fresh join secret for this browser id (revokes its previous one): (secret, join URL)."""
        import secrets as _secrets
        if not BROWSER_ID.match(browser_id):
            raise RealRunError(f"bad browser id {browser_id!r}; use letters, digits, . _ : -")
        token = _secrets.token_urlsafe(24)
        self._join_secrets[browser_id] = token
        return token, self.join_url(browser_id, token)

    def revoke_join(self, browser_id: str, secret: str | None = None) -> None:
        """Revoke this id's join secret (only if it is still `secret`, when given)."""
        if secret is None or self._join_secrets.get(browser_id) == secret:
            self._join_secrets.pop(browser_id, None)

    def _secret_ok(self, browser_id: str, given: str) -> bool:
        ok = hmac.compare_digest(given.encode(), self.secret.encode())
        join = self._join_secrets.get(browser_id)
        return ok | (join is not None and hmac.compare_digest(given.encode(), join.encode()))

    def shard_url(self, name: str) -> str:
        """The page-relative URL of a shard file in shard_dir (validated name)."""
        if not SHARD_NAME.match(name):
            raise RealRunError(f"bad shard file name {name!r}; expected <letters/digits/._->.onnx")
        return f"/shards/{name}"

    async def __aenter__(self) -> "WorkerServer":
        if not (ORT_DIST / "ort.webgpu.min.mjs").is_file():
            raise RealRunError(f"onnxruntime-web is not installed in {ORT_DIST.parent.parent}; "
                               "run scripts/setup.sh (npm ci in real/web)")
        app = web.Application()
        app.on_response_prepare.append(self._add_headers)
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_get("/worker.html", self._page)
        app.router.add_get("/worker.js", self._page)
        app.router.add_get("/ort/{name}", self._ort)
        app.router.add_get("/shards/{name}", self._shard)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        bound = "127.0.0.1"
        try:
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            if self.host not in LOOPBACK:
                bound = self.host
                extra = web.TCPSite(self._runner, self.host, 0)
                await extra.start()
                self.public_port = extra._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise RealRunError(f"worker server could not bind {bound}: {exc}") from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(c.close(WSCloseCode.GOING_AWAY, "server stopping")
                               for c in list(self.connections.values())), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_connected(self, browser_id: str, timeout: float = 30.0) -> WorkerConnection:
        """Poll until a worker with this id is connected (does not consume events)."""
        deadline = time.monotonic() + timeout
        while (conn := self.connections.get(browser_id)) is None or conn.closed.is_set():
            if time.monotonic() > deadline:
                raise RealRunError(f"worker {browser_id} did not connect within {timeout} s")
            await asyncio.sleep(0.01)
        return conn

    # --- HTTP -------------------------------------------------------------------------
    @staticmethod
    async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(ISOLATION_HEADERS)
        if request.path == "/worker.html":
            csp = PAGE_CSP
            host = request.headers.get("Host", "")
            if HOST_HEADER.match(host) and not host.startswith("127.0.0.1:"):   # a page loaded from a remote
                csp = csp.replace("ws://127.0.0.1:*", f"ws://127.0.0.1:* ws://{host}")  # address: its own socket
            response.headers["Content-Security-Policy"] = csp

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._file(WEB_DIR / request.path.lstrip("/"))

    async def _ort(self, request: web.Request) -> web.StreamResponse:
        return self._named(ORT_DIST, request.match_info["name"], STATIC_NAME)

    async def _shard(self, request: web.Request) -> web.StreamResponse:
        return self._named(self.shard_dir, request.match_info["name"], SHARD_NAME)

    @staticmethod
    def _file(path: Path) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": MIME.get(path.suffix, "application/octet-stream")})

    def _named(self, root: Path, name: str, pattern: re.Pattern) -> web.StreamResponse:
        if not pattern.match(name) or ".." in name:
            raise web.HTTPNotFound()
        path = (root / name).resolve()
        if path.parent != root.resolve():
            raise web.HTTPNotFound()
        return self._file(path)

    # --- WebSocket --------------------------------------------------------------------
    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=self.max_msg_bytes, timeout=self.close_timeout_s)
        await ws.prepare(request)
        hello = await self._read_hello(ws, request.remote)
        if hello is None:
            return ws
        if (old := self.connections.get(hello.id)) is not None:  # close it without waiting on it
            task = asyncio.create_task(old.close(4000, "superseded by a new connection"))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
        conn = WorkerConnection(hello.id, hello.capabilities, self.clock(), ws)
        self.connections[hello.id] = conn
        reconnect = hello.id in self._seen
        self._seen.add(hello.id)
        try:
            await ws.send_str(encode_control(Welcome(self.heartbeat_interval_ms, self.clock() * 1000)))
            self._on_event(WorkerConnected(self.clock(), hello.id, conn, hello.capabilities, reconnect))
            await self._read_loop(ws, conn, request.remote)
        except (ConnectionError, RuntimeError):
            pass  # the socket died mid-send; reported as a disconnect below
        finally:
            conn._mark_closed(ws.close_code)
            if self.connections.get(hello.id) is conn:
                del self.connections[hello.id]
            reason = "" if ws.exception() is None else str(ws.exception())
            self._on_event(WorkerDisconnected(self.clock(), hello.id, ws.close_code, reason, conn))
        return ws

    async def _read_hello(self, ws: web.WebSocketResponse, peer: str | None) -> Hello | None:
        claimed = None
        try:
            msg = await asyncio.wait_for(ws.receive(), self.hello_timeout_s)
            if msg.type != WSMsgType.TEXT:
                raise ProtocolError(f"first frame must be a text hello, got {msg.type.name}")
            hello = decode_control(msg.data, (Hello,))
            claimed = hello.id
            if not self._secret_ok(hello.id, hello.secret):
                raise ProtocolError("wrong or missing run secret")
            if not BROWSER_ID.match(hello.id):
                raise ProtocolError(f"bad browser id {hello.id!r}")
            return hello
        except (ProtocolError, asyncio.TimeoutError) as exc:
            reason = str(exc) or f"no hello within {self.hello_timeout_s} s"
        self._on_event(WorkerRejected(self.clock(), claimed, reason, peer))
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode()[:120])
        return None

    async def _read_loop(self, ws: web.WebSocketResponse, conn: WorkerConnection, peer: str | None) -> None:
        accepted = tuple(c for c in FROM_WORKER if c is not Hello)
        async for msg in ws:
            try:
                if msg.type == WSMsgType.TEXT:
                    decoded: Control | TensorFrame = decode_control(msg.data, accepted)
                elif msg.type == WSMsgType.BINARY:
                    decoded = decode_tensors(msg.data, self.max_msg_bytes)
                    if decoded.kind != FrameKind.RESULT:
                        raise ProtocolError("a worker may only send result frames")
                else:
                    if msg.type == WSMsgType.ERROR:  # e.g. a frame over max_msg_bytes
                        self._on_event(WorkerRejected(self.clock(), conn.browser_id, str(ws.exception()), peer))
                    break
            except ProtocolError as exc:
                self._on_event(WorkerRejected(self.clock(), conn.browser_id, str(exc), peer))
                continue
            if isinstance(decoded, TensorFrame) and not conn._awaits(decoded):
                # a duplicate, replayed, late or never-asked result: never delivered, reported
                self._on_event(WorkerRejected(
                    self.clock(), conn.browser_id, f"unexpected result for req {decoded.req} shard "
                    f"{decoded.shard} attempt {decoded.attempt} (duplicate, replayed, late or never asked)", peer))
                continue
            self._on_event(MessageReceived(self.clock(), conn.browser_id, decoded))
            conn._dispatch(decoded)

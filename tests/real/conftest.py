"""Fixtures for the real-browser transport tests.

Browsers launched here get a profile prefix unique to this pytest process, so the
session-end leftover check (and its cleanup) never touches another session's browsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np
import pytest

import real.browsers as browsers
from real.server import WorkerServer

SECRET = "test-secret-0123456789"


@pytest.fixture(scope="session", autouse=True)
def no_leftover_browsers():
    """Narrow the browser marker to this session; at the end no browser of ours may remain."""
    original = browsers.MARKER_PREFIX
    browsers.MARKER_PREFIX = f"{original}t{os.getpid()}-"
    yield
    leftovers = browsers.leftover_browser_pids()
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for d in glob.glob(browsers.MARKER_PREFIX + "*"):  # profiles of browsers whose parent was kill -9'd
        browsers._remove_profile(d)                    # (and Chromium's /tmp socket dir they link to)
    browsers.MARKER_PREFIX = original
    assert not leftovers, f"browser processes left behind: {leftovers}"


def _need(kind: str) -> None:
    if not any(shutil.which(n) for n in browsers.EXECUTABLES[kind]):
        pytest.skip(f"{kind} executable not installed ({' / '.join(browsers.EXECUTABLES[kind])})")


@pytest.fixture
def need() -> Callable[[str], None]:
    """need('firefox') skips the test (with the reason) when that executable is missing."""
    return _need


def build_tiny(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """x[1,16,32] -> MatMul(32x32) -> Add -> x*sigmoid(1.702x) (a Gelu approximation)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 32)) * 0.2).astype("f4"), "W"),
             numpy_helper.from_array(rng.standard_normal(32).astype("f4"), "B"),
             numpy_helper.from_array(np.array(1.702, "f4"), "k")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["a"]),
             helper.make_node("Mul", ["a", "k"], ["ak"]), helper.make_node("Sigmoid", ["ak"], ["s"]),
             helper.make_node("Mul", ["a", "s"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


@pytest.fixture
def tiny_model(tmp_path: Path) -> tuple[Path, str, Callable[[np.ndarray], np.ndarray]]:
    return tmp_path, "tiny.onnx", build_tiny(tmp_path / "tiny.onnx")


class Recorder:
    """Collects server events; `wait(pred)` polls until one matches."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def of(self, cls: type, browser_id: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls) and (browser_id is None or e.browser_id == browser_id)]

    async def wait(self, pred: Callable[[Any], bool], timeout: float) -> Any:
        deadline, seen = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            for e in self.events[seen:]:
                if pred(e):
                    return e
            seen = len(self.events)
            await asyncio.sleep(0.002)
        raise AssertionError(f"no matching event within {timeout} s")


@contextlib.asynccontextmanager
async def worker_session(kind: str, shard_dir: Path, *, launcher: str = "process", heartbeat_ms: float = 250,
                         secret: str = SECRET, url_secret: str | None = None,
                         browser_id: str = "w0", connect: bool = True) -> AsyncIterator[tuple]:
    """Server + one browser (+ its connection unless connect=False): (srv, handle, conn, recorder)."""
    rec = Recorder()
    async with WorkerServer(shard_dir, secret, heartbeat_interval_ms=heartbeat_ms, on_event=rec) as srv, \
            browsers.BrowserPool(launcher=launcher) as pool:
        url = srv.worker_url(browser_id)
        if url_secret is not None:
            url = url.split("#", 1)[0] + f"#secret={url_secret}"
        handle = await pool.launch(kind, url, browser_id=browser_id)
        conn = await srv.wait_connected(browser_id, 30) if connect else None
        yield srv, handle, conn, rec


@pytest.fixture
def session_factory():
    return worker_session

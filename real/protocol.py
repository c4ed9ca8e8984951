"""The worker protocol: the fixed, versioned message set between shardtwin and a worker page.

Rules:
- Control messages are JSON text frames `{"v": 1, "type": <name>, ...fields}`; each type is
  a frozen dataclass below, decoded with every field checked (type, presence, no extras).
- Tensors travel only in binary frames (never JSON, never page.evaluate): a 32-byte header,
  one descriptor per tensor, then each tensor's raw little-endian bytes, 8-byte aligned.
- Decoding validates everything (magic, version, kind, counts, dtypes, shapes, sizes,
  exact total length) and raises ProtocolError; nothing from the wire is ever executed.
- real/web/worker.js implements the same format; change both together and bump VERSION.

Binary frame layout (little-endian):
  header  (32 bytes): magic b"STW1" | u8 version | u8 kind (1 run, 2 result) | u16 count
                      | i64 req | i32 shard | i32 attempt | f64 ms (compute ms; 0 in run)
  count x descriptor: u16 name_len | u8 dtype (1 float32, 2 int64, 3 int32) | u8 ndim
                      | name (utf-8) | ndim x i64 dims
  zero padding to a multiple of 8, then per tensor: data (prod(dims) * itemsize bytes)
                      followed by zero padding to a multiple of 8.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import IntEnum
from typing import ClassVar, Mapping

import numpy as np

from shardtwin.errors import RealRunError

VERSION = 1
MAGIC = b"STW1"
HEADER = struct.Struct("<4sBBHqiid")
DESCRIPTOR = struct.Struct("<HBB")
MAX_TENSORS = 64
MAX_NDIM = 8
MAX_NAME_BYTES = 256
MAX_REQ = 2**53 - 1  # request ids must survive a JavaScript Number


class ProtocolError(RealRunError):
    """A frame that breaks the worker protocol (malformed, oversized, unknown type)."""


class FrameKind(IntEnum):
    RUN = 1
    RESULT = 2


DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<i8"), 3: np.dtype("<i4")}
DTYPE_CODES = {"float32": 1, "int64": 2, "int32": 3}


@dataclass(frozen=True, slots=True)
class TensorFrame:
    """A binary frame: inputs of a run (kind RUN) or outputs of a run (kind RESULT)."""

    kind: FrameKind
    req: int
    shard: int
    attempt: int
    tensors: Mapping[str, np.ndarray]
    ms: float = 0.0  # compute ms measured in the page (RESULT only)


def _pad8(n: int) -> int:
    return (-n) % 8


def encode_tensors(frame: TensorFrame) -> bytes:
    """Encode a TensorFrame to bytes; arrays are converted to little-endian, C order."""
    _check_ids(frame.req, frame.shard, frame.attempt)
    if len(frame.tensors) > MAX_TENSORS:
        raise ProtocolError(f"too many tensors: {len(frame.tensors)} > {MAX_TENSORS}")
    head = [HEADER.pack(MAGIC, VERSION, int(frame.kind), len(frame.tensors), frame.req,
                        frame.shard, frame.attempt, float(frame.ms))]
    datas = []
    for name, arr in frame.tensors.items():
        arr = np.asarray(arr)
        code = DTYPE_CODES.get(arr.dtype.name)
        if code is None:
            raise ProtocolError(f"tensor {name!r}: dtype {arr.dtype} not sendable; "
                                f"accepted: {', '.join(DTYPE_CODES)}")
        raw_name = name.encode()
        if not 0 < len(raw_name) <= MAX_NAME_BYTES or arr.ndim > MAX_NDIM:
            raise ProtocolError(f"tensor {name!r}: name or rank out of bounds")
        head.append(DESCRIPTOR.pack(len(raw_name), code, arr.ndim) + raw_name
                    + struct.pack(f"<{arr.ndim}q", *arr.shape))
        datas.append(np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes())
    out = bytearray(b"".join(head))
    out += bytes(_pad8(len(out)))
    for d in datas:
        out += d
        out += bytes(_pad8(len(d)))
    return bytes(out)


def decode_tensors(buf: bytes | bytearray | memoryview, max_bytes: int = 64 << 20) -> TensorFrame:
    """Decode and validate a binary frame. Arrays are read-only views into `buf`."""
    mv = memoryview(buf).cast("B")
    if len(mv) > max_bytes:
        raise ProtocolError(f"binary frame of {len(mv)} bytes exceeds limit {max_bytes}")
    if len(mv) < HEADER.size:
        raise ProtocolError(f"binary frame too short: {len(mv)} bytes < header {HEADER.size}")
    magic, version, kind, count, req, shard, attempt, ms = HEADER.unpack_from(mv, 0)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError(f"bad magic/version {bytes(magic)!r}/{version}; expected {MAGIC!r}/{VERSION}")
    if kind not in (FrameKind.RUN, FrameKind.RESULT):
        raise ProtocolError(f"unknown binary frame kind {kind}")
    if count > MAX_TENSORS or not math.isfinite(ms) or ms < 0:
        raise ProtocolError(f"bad header: count {count}, ms {ms}")
    _check_ids(req, shard, attempt)
    pos, descs = HEADER.size, []
    for _ in range(count):
        name, code, shape, pos = _read_descriptor(mv, pos)
        descs.append((name, DTYPES[code], shape))
    pos += _pad8(pos)
    tensors: dict[str, np.ndarray] = {}
    for name, dtype, shape in descs:
        if name in tensors:
            raise ProtocolError(f"duplicate tensor name {name!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        if pos + nbytes > len(mv):
            raise ProtocolError(f"tensor {name!r}: {nbytes} data bytes run past the frame end")
        tensors[name] = np.frombuffer(mv, dtype=dtype, count=math.prod(shape), offset=pos).reshape(shape)
        pos += nbytes + _pad8(nbytes)
    if pos != len(mv):
        raise ProtocolError(f"binary frame length {len(mv)} != declared content {pos}")
    return TensorFrame(FrameKind(kind), req, shard, attempt, tensors, ms)


def _read_descriptor(mv: memoryview, pos: int) -> tuple[str, int, tuple[int, ...], int]:
    if pos + DESCRIPTOR.size > len(mv):
        raise ProtocolError("tensor descriptor runs past the frame end")
    name_len, code, ndim = DESCRIPTOR.unpack_from(mv, pos)
    pos += DESCRIPTOR.size
    if code not in DTYPES:
        raise ProtocolError(f"unknown dtype code {code}; accepted: 1 float32, 2 int64, 3 int32")
    if not 0 < name_len <= MAX_NAME_BYTES or ndim > MAX_NDIM:
        raise ProtocolError(f"descriptor out of bounds: name_len {name_len}, ndim {ndim}")
    if pos + name_len + 8 * ndim > len(mv):
        raise ProtocolError("tensor descriptor runs past the frame end")
    try:
        name = bytes(mv[pos:pos + name_len]).decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("tensor name is not utf-8") from exc
    pos += name_len
    shape = struct.unpack_from(f"<{ndim}q", mv, pos)
    pos += 8 * ndim
    if any(d < 0 or d > 2**31 for d in shape):
        raise ProtocolError(f"tensor {name!r}: bad shape {shape}")
    return name, code, tuple(shape), pos


def _check_ids(req: int, shard: int, attempt: int) -> None:
    if not (0 <= req <= MAX_REQ and 0 <= shard < 2**31 and 0 <= attempt < 2**31):
        raise ProtocolError(f"ids out of range: req {req}, shard {shard}, attempt {attempt}")


# --- control messages (JSON text frames) -------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    """worker -> server, first frame: who it is, the run secret, what it can do."""
    TYPE: ClassVar[str] = "hello"
    id: str
    secret: str
    capabilities: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Welcome:
    """server -> worker, reply to an accepted hello."""
    TYPE: ClassVar[str] = "welcome"
    heartbeat_interval_ms: float
    server_t: float = 0.0


@dataclass(frozen=True, slots=True)
class LoadShard:
    """server -> worker: fetch `url` (an /shards/ path) and create a session on `backend`."""
    TYPE: ClassVar[str] = "load_shard"
    shard: int
    url: str
    backend: str  # webgpu | wasm | webnn
    inputs: list = field(default_factory=list)   # expected input names (checked if given)
    outputs: list = field(default_factory=list)  # output names to return ([] = all)


@dataclass(frozen=True, slots=True)
class UnloadShard:
    TYPE: ClassVar[str] = "unload_shard"
    shard: int


@dataclass(frozen=True, slots=True)
class ShardLoaded:
    """worker -> server: the session exists; ms = fetch_ms + create_ms (page clock)."""
    TYPE: ClassVar[str] = "shard_loaded"
    shard: int
    ms: float
    fetch_ms: float
    create_ms: float
    bytes: int
    backend_requested: str
    backend_used: str
    fallback_reason: str | None
    inputs: list
    outputs: list
    wasm_threads: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """worker -> server: something failed in the page. kind: load_failed | shard_error
    | unknown_shard | bad_frame | bad_message | oom | page_error. injected: caused by Inject."""
    TYPE: ClassVar[str] = "error"
    kind: str
    message: str
    shard: int | None = None
    req: int | None = None
    attempt: int | None = None
    injected: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """worker -> server, every heartbeat_interval_ms from a main-thread timer."""
    TYPE: ClassVar[str] = "heartbeat"
    seq: int
    t: float  # page performance.now()


@dataclass(frozen=True, slots=True)
class Inject:
    """server -> worker: apply a fault in the page. fault: hang {ms} | memory_pressure {mb}
    | shard_error {shard, count} | disconnect {delay_ms} | slow {factor} | clear {what?: memory_pressure | slow; none = all}."""
    TYPE: ClassVar[str] = "inject"
    fault: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FaultApplied:
    """worker -> server: the fault is in effect (sent just before a hang / disconnect starts)."""
    TYPE: ClassVar[str] = "fault_applied"
    fault: str
    params: dict
    held_mb: float = 0.0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[str] = "pong"
    nonce: int
    t: float


TO_WORKER = (Welcome, LoadShard, UnloadShard, Inject, Ping)
FROM_WORKER = (Hello, ShardLoaded, ErrorReport, Heartbeat, FaultApplied, Pong)
FAULTS = ("hang", "memory_pressure", "shard_error", "disconnect", "slow", "clear")
Control = Hello | Welcome | LoadShard | UnloadShard | ShardLoaded | ErrorReport | Heartbeat \
    | Inject | FaultApplied | Ping | Pong
_BY_TYPE = {cls.TYPE: cls for cls in TO_WORKER + FROM_WORKER}
_CHECKS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
    "list": (list,), "str | None": (str, type(None)), "int | None": (int, type(None)),
}


def encode_control(msg: Control) -> str:
    return json.dumps({"v": VERSION, "type": msg.TYPE, **asdict(msg)}, separators=(",", ":"))


def decode_control(text: str, allowed: tuple[type, ...] = FROM_WORKER) -> Control:
    """Decode one JSON text frame into its dataclass, checking every field."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control frame is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise ProtocolError(f"control frame needs an object with v={VERSION}")
    cls = _BY_TYPE.get(obj.get("type"))
    if cls is None or cls not in allowed:
        raise ProtocolError(f"unexpected control type {obj.get('type')!r}; accepted: "
                            f"{', '.join(c.TYPE for c in allowed)}")
    body = {k: v for k, v in obj.items() if k not in ("v", "type")}
    known = {f.name: f for f in fields(cls)}
    if extra := set(body) - set(known):
        raise ProtocolError(f"{cls.TYPE}: unknown fields {sorted(extra)}")
    for name, f in known.items():
        if name not in body:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError(f"{cls.TYPE}: missing field {name!r}")
            continue
        ok = _CHECKS[str(f.type)]
        value = body[name]
        if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
            raise ProtocolError(f"{cls.TYPE}.{name}: got {type(value).__name__}, expected {f.type}")
    return cls(**body)

"""Minimal numpy reader/writer for the safetensors format.

Format: 8-byte little-endian u64 header length N, then N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?: {...}},
then the raw little-endian tensor bytes; offsets are relative to the end of the header.

Rules: only F32, F16, I64 (and I32, F64, BF16 for reading) are understood; any
inconsistency (short file, bad JSON, offsets out of range or overlapping the wrong
size, unknown dtype) raises ModelAssetError with one line naming the file and the
problem. Arrays returned are read-only views of one mmap/bytes buffer unless copied.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from shardtwin.errors import ModelAssetError

DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def _bf16_to_f32(raw: bytes, shape: list[int]) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return u16.view(np.float32).reshape(shape)


def _parse_header(data: bytes | memoryview, where: str) -> tuple[dict, int]:
    if len(data) < 8:
        raise ModelAssetError(f"{where}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > _MAX_HEADER or 8 + n > len(data):
        raise ModelAssetError(f"{where}: corrupt safetensors header length {n} (file has {len(data)} bytes)")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelAssetError(f"{where}: corrupt safetensors header JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelAssetError(f"{where}: safetensors header is not a JSON object")
    return header, 8 + n


def _tensor(name: str, info: object, body: memoryview, where: str) -> np.ndarray:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise ModelAssetError(f"{where}: tensor {name!r} lacks dtype/shape/data_offsets")
    dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
    if dtype not in DTYPES and dtype != "BF16":
        raise ModelAssetError(f"{where}: tensor {name!r} has unsupported dtype {dtype!r}; known: BF16, {', '.join(DTYPES)}")
    itemsize = 2 if dtype == "BF16" else DTYPES[dtype].itemsize
    need = int(np.prod(shape, dtype=np.int64)) * itemsize
    if not (0 <= begin <= end <= len(body)) or end - begin != need:
        raise ModelAssetError(
            f"{where}: tensor {name!r} offsets [{begin}, {end}] do not fit shape {shape} {dtype} "
            f"in a {len(body)}-byte body (truncated or corrupt file)")
    raw = body[begin:end]
    if dtype == "BF16":
        return _bf16_to_f32(bytes(raw), shape)
    return np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)


def loads(data: bytes, where: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict]:
    """Parse safetensors bytes -> ({name: array}, metadata)."""
    header, start = _parse_header(data, where)
    body = memoryview(data)[start:]
    meta = header.pop("__metadata__", {}) or {}
    return {k: _tensor(k, v, body, where) for k, v in header.items()}, meta


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read every tensor of a .safetensors file into numpy arrays (read-only views)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelAssetError(f"cannot read safetensors file {p}: {exc.strerror or exc}") from exc
    return loads(data, str(p))[0]


def dumps(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise arrays (F32/F16/F64/I64/I32) to safetensors bytes, tensors in name order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if np.dtype(dt).str not in {d.str for d in DTYPES.values()}:
            raise ModelAssetError(f"cannot write tensor {name!r} of dtype {arr.dtype}; known: {', '.join(DTYPES)}")
        raw = arr.astype(np.dtype(dt).newbyteorder("<"), copy=False).tobytes()
        kind = _NAMES[np.dtype(np.dtype(dt).str)]
        header[name] = {"dtype": kind, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the body to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    Path(path).write_bytes(dumps(tensors, metadata))

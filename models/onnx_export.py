"""Write a plan's shards as ONNX files (weights embedded) plus a manifest, with a cache.

Rules:
- One file per shard: <out_dir>/<model>.shard<index>.<key12>.onnx, where key is the sha256
  of (builder version, model, units, batch, seq, opset, weights source). Same key -> same
  bytes, so an existing file whose size matches its sidecar <file>.json is reused as is,
  whatever plan wrote it, and weights are not even loaded when every shard is cached.
- Files are written to a temporary name and renamed (a reader never sees half a file).
- <out_dir>/manifest.json lists every shard: index, path, inputs, outputs, bytes, sha256,
  units, weights source, batch, seq; it is rewritten after every export.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx

from models.catalogue import get_model
from models.onnx_builder import build_shard_model
from models.weights import load_weights, weights_source
from shardtwin.errors import ModelAssetError

BUILDER_VERSION = 1
MANIFEST = "manifest.json"
_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str            # 'float32' | 'int64'
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ShardFile:
    index: int
    path: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    bytes: int
    sha256: str
    units: tuple[str, ...] = ()
    weights_source: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ShardFile":
        io = lambda xs: tuple(TensorInfo(x["name"], x["dtype"], tuple(x["shape"])) for x in xs)
        return cls(d["index"], d["path"], io(d["inputs"]), io(d["outputs"]), d["bytes"], d["sha256"],
                   tuple(d.get("units", ())), d.get("weights_source", ""))


def _infos(values: Sequence[onnx.ValueInfoProto]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(v.name, _DTYPES[v.type.tensor_type.elem_type],
                            tuple(d.dim_value for d in v.type.tensor_type.shape.dim)) for v in values)


def shard_key(model: str, units: Sequence[str], batch: int, seq: int, opset: int, source: str) -> str:
    blob = json.dumps([BUILDER_VERSION, model, list(units), batch, seq, opset, source])
    return hashlib.sha256(blob.encode()).hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _cached(path: Path) -> ShardFile | None:
    """The ShardFile recorded next to an existing shard file, if the file still has its size."""
    try:
        entry = json.loads(_sidecar(path).read_text())
        hit = ShardFile.from_json({**entry, "path": str(path)})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return hit if path.is_file() and path.stat().st_size == hit.bytes else None


def _write(path: Path, model: onnx.ModelProto, index: int, units: Sequence[str], source: str) -> ShardFile:
    data = model.SerializeToString()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise ModelAssetError(f"cannot write shard file {path}: {exc.strerror or exc}") from exc
    shard = ShardFile(index, str(path), _infos(model.graph.input), _infos(model.graph.output), len(data),
                      hashlib.sha256(data).hexdigest(), tuple(units), source)
    _sidecar(path).write_text(json.dumps(shard.to_json()))  # written last: marks the file complete
    return shard


def export_plan_shards(model_name: Any, shard_units: list[list[str]], out_dir: str | Path,
                       batch_size: int = 1, seq_len: int = 128, seed: int = 0, opset: int = 17) -> list[ShardFile]:
    """Write (or reuse) one .onnx per shard and the manifest; return the shard files in order."""
    arch = get_model(model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = weights_source(arch, seed)
    weights, files = None, []
    for index, units in enumerate(shard_units):
        key = shard_key(arch.name, units, batch_size, seq_len, opset, source)
        path = out / f"{arch.name}.shard{index}.{key[:12]}.onnx"
        hit = _cached(path)
        if hit is None:
            weights = weights or load_weights(arch, seed)
            model = build_shard_model(arch, units, weights, batch_size, seq_len, opset)
            hit = _write(path, model, index, units, weights.source)
        files.append(hit)
    manifest = {"model": arch.name, "batch_size": batch_size, "seq_len": seq_len, "opset": opset,
                "weights_source": source, "shards": [f.to_json() for f in files]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return files

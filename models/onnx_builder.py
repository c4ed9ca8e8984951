"""ONNX graphs of model shards: the units of a shard, in order, as one standard-op graph.

Boundary contract (fixed names; `ShardIO` lists them per shard):
- Request inputs keep their names and are fed to every shard that needs them:
  BERT family: input_ids, token_type_ids, attention_mask (int64 [B,S]); the first shard
  (the one with `embeddings`) always declares all three, later shards declare
  attention_mask when they hold an attention unit. ViT/DeiT: pixel_values float32 [B,C,H,W].
- Carried tensors go from one shard to the next. A shard outputs them under their plain
  name (`hidden`, `pooled`, `logits`, ...) and the next shard takes them as `<name>_in`
  (ONNX forbids one name being both a graph input and output). `chain_feeds` does this.
- A shard outputs every carried tensor a later unit reads; the last shard outputs the
  model's final outputs (BERT: hidden [+ pooled]; ViT: hidden [+ logits]).
- Shapes are static: batch and sequence length are baked in (vision ignores seq_len).
Rules: units must be a contiguous run of the model's unit order (`model_units`);
a unit a family does not know raises PlanError listing the known units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from models.catalogue import get_model
from models.graph import build_graph, execution_order, vit_tokens
from models.onnx_ops import GraphBuilder
from models.weights import BERT_FAMILIES, VIT_FAMILIES, num_labels
from shardtwin.errors import ModelAssetError, PlanError

CARRIED_SUFFIX = "_in"


@dataclass
class ShardState:
    """What unit emitters share while one shard's graph is built."""

    g: GraphBuilder
    arch: Any
    batch: int
    seq: int
    family: "Family"
    env: dict[str, str] = field(default_factory=dict)   # logical tensor -> graph value
    cache: dict[str, str] = field(default_factory=dict)  # per-shard derived values (mask bias)

    def get(self, name: str) -> str:
        """The graph value of a logical tensor; declares a graph input on first use."""
        if name not in self.env:
            dtype, shape = self.family.tensor_type(self, name)
            graph_name = name if name in self.family.request_inputs else name + CARRIED_SUFFIX
            self.env[name] = self.g.add_input(graph_name, dtype, shape)
        return self.env[name]

    def set(self, name: str, value: str) -> None:
        self.env[name] = value

    def mask_bias(self) -> str:
        if "mask_bias" not in self.cache:
            self.cache["mask_bias"] = self.g.mask_bias(self.get("attention_mask"))
        return self.cache["mask_bias"]


@dataclass(frozen=True)
class Family:
    """How one family of architectures turns its units (named by models/graph.py) into
    tensors and graph pieces."""

    emit: Callable[[ShardState, str], None]
    tensor_type: Callable[[ShardState, str], tuple[type, list[int]]]
    reads: Callable[[str], set[str]]          # logical tensors a unit reads
    request_inputs: frozenset[str]
    final_outputs: tuple[str, ...]
    first_unit_inputs: tuple[str, ...] = ()   # declared by the shard holding the first unit
    seq_len: Callable[[Any, int], int] = lambda arch, s: s


# -- BERT family -------------------------------------------------------------------
def _bert_embeddings(st: ShardState) -> None:
    g, a = st.g, st.arch
    ids = st.get("input_ids")
    types = st.get("token_type_ids")
    st.get("attention_mask")  # declared so the first shard's inputs are always the same three
    x = g.op("Gather", [g.weight("embeddings.word"), ids], "embeddings.word")
    offset = 2 if a.family == "roberta" else 0  # RoBERTa positions start after padding_idx=1
    pos = g.op("Gather", [g.weight("embeddings.position"), g.const(np.arange(st.seq) + offset, np.int64)])
    x = g.op("Add", [x, pos], "embeddings.sum")
    if g.has("embeddings.token_type"):
        x = g.op("Add", [x, g.op("Gather", [g.weight("embeddings.token_type"), types])])
    st.set("hidden", g.layer_norm(x, "embeddings.norm", st.arch.layer_norm_eps))


def _dims(st: ShardState, seq: int | None = None) -> tuple[int, int, int, int]:
    return st.batch, seq or st.seq, st.arch.hidden_size, st.arch.num_heads


def emit_attention(st: ShardState, unit: str, bias: str | None, tensor: str = "hidden",
                   seq: int | None = None, kv: str | None = None, kv_seq: int | None = None) -> None:
    """(Self- or cross-)attention + residual on logical tensor `tensor`; post-LN (BERT) or
    pre-LN (ViT, Whisper, CLIP). kv: logical tensor holding keys/values (cross-attention)."""
    g, x, eps = st.g, st.get(tensor), st.arch.layer_norm_eps
    src = st.get(kv) if kv else None
    if st.arch.norm_style == "pre":
        a = g.attention(g.layer_norm(x, f"{unit}.norm", eps), unit, _dims(st, seq), bias, src, kv_seq)
        st.set(tensor, g.op("Add", [x, a], f"{unit}.residual"))
    else:
        a = g.attention(x, unit, _dims(st, seq), bias, src, kv_seq)
        st.set(tensor, g.layer_norm(g.op("Add", [x, a], f"{unit}.residual"), f"{unit}.norm", eps))


def emit_feedforward(st: ShardState, unit: str, tensor: str = "hidden") -> None:
    g, x, eps, act = st.g, st.get(tensor), st.arch.layer_norm_eps, st.arch.activation
    pre = st.arch.norm_style == "pre"
    h = g.layer_norm(x, f"{unit}.norm", eps) if pre else x
    h = g.linear(g.activation(g.linear(h, f"{unit}.intermediate"), act), f"{unit}.output")
    y = g.op("Add", [x, h], f"{unit}.residual")
    st.set(tensor, y if pre else g.layer_norm(y, f"{unit}.norm", eps))


def _bert_emit(st: ShardState, unit: str) -> None:
    match unit.split("."):
        case ["embeddings"]:
            _bert_embeddings(st)
        case ["encoder", _, "attention"]:
            emit_attention(st, unit, st.mask_bias())
        case ["encoder", _, "feedforward"]:
            emit_feedforward(st, unit)
        case ["pooler"]:
            g = st.g
            first = g.op("Gather", [st.get("hidden"), g.const(0, np.int64)], "pooler.first", axis=1)
            st.set("pooled", g.op("Tanh", [g.linear(first, "pooler.dense")], "pooler"))
        case _:
            raise PlanError(f"unit {unit!r} is not a unit of {st.arch.name}")


def _bert_type(st: ShardState, name: str) -> tuple[type, list[int]]:
    b, s, h = st.batch, st.seq, st.arch.hidden_size
    return {"input_ids": (np.int64, [b, s]), "token_type_ids": (np.int64, [b, s]),
            "attention_mask": (np.int64, [b, s]), "hidden": (np.float32, [b, s, h]),
            "pooled": (np.float32, [b, h])}[name]


def _bert_reads(unit: str) -> set[str]:
    if unit == "embeddings":
        return {"input_ids", "token_type_ids", "attention_mask"}
    return {"hidden", "attention_mask"} if unit.endswith("attention") else {"hidden"}


BERT = Family(_bert_emit, _bert_type, _bert_reads,
              frozenset({"input_ids", "token_type_ids", "attention_mask"}), ("hidden", "pooled"))


# -- ViT / DeiT --------------------------------------------------------------------
def _vit_embeddings(st: ShardState) -> None:
    g, a, b = st.g, st.arch, st.batch
    p, h, grid = a.patch_size, a.hidden_size, a.image_size // a.patch_size
    x = g.op("Conv", [st.get("pixel_values"), g.weight("embeddings.patch.weight"), g.weight("embeddings.patch.bias")],
             "embeddings.patch", kernel_shape=[p, p], strides=[p, p])
    x = g.op("Reshape", [x, g.const([b, h, grid * grid], np.int64)])
    x = g.op("Transpose", [x], "embeddings.patches", perm=[0, 2, 1])
    tokens = ["embeddings.cls"] + (["embeddings.distillation"] if a.family == "deit" else [])
    parts = [g.op("Expand", [g.weight(t), g.const([b, 1, h], np.int64)]) for t in tokens]
    x = g.op("Concat", [*parts, x], "embeddings.tokens", axis=1)
    st.set("hidden", g.op("Add", [x, g.weight("embeddings.position")], "embeddings"))


def _vit_head(st: ShardState) -> None:
    g, x = st.g, st.get("hidden")
    cls = g.op("Gather", [x, g.const(0, np.int64)], "head.cls", axis=1)
    logits = g.linear(cls, "head")
    if st.arch.family == "deit":  # distilled DeiT at inference: mean of both heads
        dist = g.linear(g.op("Gather", [x, g.const(1, np.int64)], axis=1), "head.distillation")
        logits = g.op("Mul", [g.op("Add", [logits, dist]), g.const(0.5)])
    st.set("logits", logits)


def _vit_emit(st: ShardState, unit: str) -> None:
    match unit.split("."):
        case ["embeddings"]:
            _vit_embeddings(st)
        case ["encoder", _, "attention"]:
            emit_attention(st, unit, None)
        case ["encoder", _, "feedforward"]:
            emit_feedforward(st, unit)
        case ["final_norm"]:
            st.set("hidden", st.g.layer_norm(st.get("hidden"), "final_norm", st.arch.layer_norm_eps))
        case ["head"]:
            _vit_head(st)
        case _:
            raise PlanError(f"unit {unit!r} is not a unit of {st.arch.name}")


def _vit_type(st: ShardState, name: str) -> tuple[type, list[int]]:
    a, b = st.arch, st.batch
    return {"pixel_values": (np.float32, [b, a.num_channels or 3, a.image_size, a.image_size]),
            "hidden": (np.float32, [b, st.seq, a.hidden_size]), "logits": (np.float32, [b, num_labels(a)])}[name]


VIT = Family(_vit_emit, _vit_type,
             lambda u: {"pixel_values"} if u == "embeddings" else {"hidden"},
             frozenset({"pixel_values"}), ("hidden", "logits"), seq_len=lambda a, s: vit_tokens(a))

FAMILIES: dict[str, Family] = {**{f: BERT for f in BERT_FAMILIES}, **{f: VIT for f in VIT_FAMILIES}}


def family_of(arch: Any) -> Family:
    from models import onnx_families  # whisper / clip register there

    fam = FAMILIES.get(arch.family) or onnx_families.FAMILIES.get(arch.family)
    if fam is None:
        known = sorted(set(FAMILIES) | set(onnx_families.FAMILIES))
        raise PlanError(f"no ONNX graph for family {arch.family!r} ({arch.name}); known: {', '.join(known)}")
    return fam


def model_units(model: Any) -> list[str]:
    """The model's units in execution order: the unit graph's order (models/graph.py), the
    naming shared with the partitioner. PlanError for a family with no ONNX graph."""
    arch = get_model(model)
    family_of(arch)
    return list(execution_order(build_graph(arch)))


def _check_units(arch: Any, order: list[str], units: Sequence[str]) -> int:
    """Index of the first unit in `order` (the model's units); raises PlanError unless contiguous."""
    unknown = [u for u in units if u not in order]
    if not units or unknown:
        raise PlanError(f"units {unknown or '[]'} not in {arch.name}; known: {', '.join(order)}")
    start = order.index(units[0])
    if list(units) != order[start:start + len(units)]:
        raise PlanError(f"units of a shard must be contiguous in model order; got {list(units)}")
    return start


def shard_outputs(fam: Family, order: list[str], end: int, env: Mapping[str, str]) -> list[str]:
    """Carried tensors a later unit reads; the model's final outputs after the last unit."""
    later = order[end:]
    if not later:
        return [t for t in fam.final_outputs if t in env]
    needed = set().union(*(fam.reads(u) for u in later)) - fam.request_inputs
    return [t for t in env if t in needed and t not in fam.request_inputs]


def build_shard_model(model_name: Any, units: Sequence[str], weights: Mapping[str, np.ndarray],
                      batch_size: int = 1, seq_len: int = 128, opset: int = 17) -> onnx.ModelProto:
    """The ONNX graph of `units` (contiguous, in model order) with their weights embedded."""
    arch = get_model(model_name)
    fam = family_of(arch)
    order = model_units(arch)
    start = _check_units(arch, order, units)
    st = ShardState(GraphBuilder(weights, opset), arch, batch_size, fam.seq_len(arch, seq_len), fam)
    if start == 0:
        for name in fam.first_unit_inputs:
            st.get(name)
    try:
        for unit in units:
            fam.emit(st, unit)
    except KeyError as exc:
        raise ModelAssetError(f"weights for {arch.name} lack {exc}") from None
    # inputs in a stable order: carried tensors first, then request inputs as first declared
    st.g.inputs.sort(key=lambda v: not v.name.endswith(CARRIED_SUFFIX))
    for name in shard_outputs(fam, order, start + len(units), st.env):
        dtype, shape = fam.tensor_type(st, name)
        st.g.add_output(st.env[name], name, dtype, shape)
    source = getattr(weights, "source", "unknown")
    doc = f"shardtwin {arch.name} units {units[0]}..{units[-1]} weights {source}"
    return st.g.model(f"{arch.name}:{units[0]}..{units[-1]}", doc)


def build_full_model(model_name: Any, weights: Mapping[str, np.ndarray], batch_size: int = 1,
                     seq_len: int = 128, opset: int = 17) -> onnx.ModelProto:
    """All units in one graph: the unsharded reference."""
    return build_shard_model(model_name, model_units(model_name), weights, batch_size, seq_len, opset)


def chain_feeds(outputs: Mapping[str, np.ndarray], request: Mapping[str, np.ndarray],
                input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Feeds for the next shard: request inputs by name, carried `<t>_in` from output `<t>`."""
    feeds = {}
    for name in input_names:
        if name in request:
            feeds[name] = request[name]
        elif name.endswith(CARRIED_SUFFIX) and name[: -len(CARRIED_SUFFIX)] in outputs:
            feeds[name] = outputs[name[: -len(CARRIED_SUFFIX)]]
        else:
            raise PlanError(f"no value for shard input {name!r} (have {sorted({*outputs, *request})})")
    return feeds

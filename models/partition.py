"""Partitioners: cut a unit graph into N shards (layer | attention_feedforward | component).

Rules:
- Every plan is a cut of the execution order into N non-empty contiguous runs, so every
  unit is in exactly one shard and shard dependencies (derived from the unit data-flow
  edges, never assumed) form a DAG whose topological order is the shard index order.
  Pure stacks give a chain; an encoder-decoder's decoder shards also depend on the shard
  holding the encoder output; CLIP's towers are parallel sources feeding the fusion shard.
- Cuts fall between blocks. `layer` blocks are whole layers (attention [+ cross-attention]
  + feed-forward) and the standalone units (embeddings, norms, heads); `attention_feedforward`
  blocks are sub-blocks (self+cross attention | feed-forward), transformer models only.
- layer / attention_feedforward: the cut minimises the largest shard's GFLOPs (optimal
  contiguous partition by DP), ties broken by the smallest sum of squared shard GFLOPs.
- component: one shard per run of units of one component (embeddings, encoder, decoder,
  vision_tower, text_tower, fusion, head). Fewer shards than components: repeatedly merge
  the two neighbours (in execution order) with the smallest combined GFLOPs. More shards:
  repeatedly give one more piece to the component with the most GFLOPs per piece, and cut
  each component into its pieces by layer blocks as above.
- Totals are preserved: shard params sum to the model's, shard FLOPs to the model's.
- Sizes: weight_bytes are fp32 bytes of the weights a shard owns (a tied weight is owned
  once; `tied_weight_bytes` is what a shard must load in addition because it uses a weight
  owned by another shard); MB = 10^6 bytes. Activation bytes are fp32.
- An impossible request raises PlanError: one line saying why and what would work.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

import networkx as nx
import numpy as np

from models.catalogue import ArchConfig, get_model
from models.cost import F32, OP_CLASSES
from models.graph import Unit, build_graph, effective_seq_len, units as graph_units
from shardtwin.errors import PlanError
from shardtwin.vocab import ModelType, ShardType, parse


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """One shard of a plan, costed at the plan's batch size and sequence length.
    (flops_by_class is a dict, so specs and plans compare by value but are not hashable.)"""

    index: int
    name: str                         # readable: 'embedding', 'layers_0_5', 'vision_tower', ...
    units: tuple[str, ...]            # in execution order
    params: int
    weight_bytes: int                 # fp32, owned weights
    weight_mb: float
    gflops: float                     # per request (batch) at the plan's shape
    flops_by_class: dict[str, float]
    input_bytes: int                  # boundary tensors in (incl. the model input for entry shards)
    output_bytes: int                 # boundary tensors out (incl. the model output for sinks)
    deps: tuple[int, ...]             # shards whose outputs this one reads
    specialization: str               # placement hint: embedding|middle_layers|output_layers|vision|audio|text|full
    role: str = "middle_layers"       # embedding|middle_layers|output_layers|full
    modality: str = "text"            # text|vision|audio|multimodal
    components: tuple[str, ...] = ()
    tied_weight_bytes: int = 0
    peak_activation_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ShardPlan:
    model: str
    model_type: ModelType
    shard_type: ShardType
    batch_size: int
    seq_len: int                      # effective (text positions capped at the model maximum)
    shards: tuple[ShardSpec, ...]
    total_params: int
    total_gflops: float

    def dependency_graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(s.index for s in self.shards)
        g.add_edges_from((d, s.index) for s in self.shards for d in s.deps)
        return g

    def topo_order(self) -> tuple[int, ...]:
        return tuple(nx.lexicographical_topological_sort(self.dependency_graph()))

    def sources(self) -> tuple[int, ...]:
        return tuple(s.index for s in self.shards if not s.deps)

    def sinks(self) -> tuple[int, ...]:
        needed = {d for s in self.shards for d in s.deps}
        return tuple(s.index for s in self.shards if s.index not in needed)

    def shard_of(self, unit: str) -> int:
        for s in self.shards:
            if unit in s.units:
                return s.index
        raise PlanError(f"unit {unit!r} is not in the {self.model} plan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_type"], d["shard_type"] = str(self.model_type), str(self.shard_type)
        for s in d["shards"]:
            for key in ("units", "deps", "components"):
                s[key] = list(s[key])
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ShardPlan":
        names = {f.name for f in fields(ShardSpec)}
        shards = tuple(ShardSpec(**{**{k: v for k, v in s.items() if k in names},
                                    "units": tuple(s["units"]), "deps": tuple(s["deps"]),
                                    "components": tuple(s.get("components", ())),
                                    "flops_by_class": dict(s["flops_by_class"])})
                       for s in d["shards"])
        return ShardPlan(d["model"], ModelType(d["model_type"]), ShardType(d["shard_type"]),
                         int(d["batch_size"]), int(d["seq_len"]), shards, int(d["total_params"]),
                         float(d["total_gflops"]))


# --- blocks and balanced cuts -------------------------------------------------------------

def _blocks(us: list[Unit], shard_type: ShardType) -> list[list[Unit]]:
    """Group units into the indivisible blocks of a shard type, in execution order."""
    out: list[list[Unit]] = []
    for u in us:
        prev = out[-1][-1] if out else None
        same_layer = prev is not None and u.layer is not None and (prev.stack, prev.layer) == (u.stack, u.layer)
        if shard_type is ShardType.ATTENTION_FEEDFORWARD:
            same_layer = same_layer and u.kind == "cross_attention"
        if same_layer:
            out[-1].append(u)
        else:
            out.append([u])
    return out


def balanced_cuts(costs: list[float], n: int) -> list[int]:
    """Boundaries b_0=0 < ... < b_n=len(costs) minimising the max segment sum, then the
    sum of squared segment sums (vectorised DP over all (start, end) pairs)."""
    k = len(costs)
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(costs, dtype=float))])
    seg = prefix[None, :] - prefix[:, None]                 # seg[i, j] = sum of blocks i..j-1
    seg = np.where(np.tril(np.ones((k + 1, k + 1), dtype=bool)), np.inf, seg)
    best = seg[0].copy()
    for _ in range(n - 1):
        best = np.min(np.maximum(best[:, None], seg), axis=0)
    limit = best[k] * (1 + 1e-12) + 1e-12
    sq = np.where(seg <= limit, seg ** 2, np.inf)
    dp, choices = sq[0].copy(), []
    for _ in range(n - 1):
        total = dp[:, None] + sq
        arg = np.argmin(total, axis=0)
        choices.append(arg)
        dp = total[arg, np.arange(k + 1)]
    cuts, j = [k], k
    for arg in reversed(choices):
        j = int(arg[j])
        cuts.append(j)
    return [0] + cuts[::-1] if cuts[-1] != 0 else cuts[::-1]


def _cut(blocks: list[list[Unit]], n: int, cost: dict[str, float]) -> list[list[Unit]]:
    bounds = balanced_cuts([sum(cost[u.name] for u in b) for b in blocks], n)
    return [[u for b in blocks[lo:hi] for u in b] for lo, hi in zip(bounds, bounds[1:])]


def _too_many(a: ArchConfig, n: int, st: ShardType, limits: dict[ShardType, int]) -> PlanError:
    k = limits[st]
    alt = "; ".join(f"{t} allows up to {m}" for t, m in limits.items() if t is not st)
    word = "sub-blocks" if st is ShardType.ATTENTION_FEEDFORWARD else "blocks"
    return PlanError(f"{a.name} has {k} {word} in execution order; --shards {n} needs at most {k} "
                     f"({st}); use --shards <= {k}" + (f" ({alt})" if alt else ""))


# --- component grouping -------------------------------------------------------------------

def _component_groups(us: list[Unit]) -> list[list[Unit]]:
    groups: list[list[Unit]] = []
    for u in us:
        if groups and groups[-1][-1].component == u.component:
            groups[-1].append(u)
        else:
            groups.append([u])
    return groups


def _component_cut(us: list[Unit], n: int, cost: dict[str, float]) -> list[list[Unit]]:
    groups = _component_groups(us)
    weight = lambda g: sum(cost[u.name] for u in g)  # noqa: E731
    while len(groups) > n:          # merge the cheapest adjacent pair
        i = min(range(len(groups) - 1), key=lambda j: (weight(groups[j]) + weight(groups[j + 1]), j))
        groups[i:i + 2] = [groups[i] + groups[i + 1]]
    layer_blocks = [_blocks(g, ShardType.LAYER) for g in groups]
    pieces = [1] * len(groups)
    while sum(pieces) < n:          # split the component with the most GFLOPs per piece
        i = max((j for j in range(len(groups)) if pieces[j] < len(layer_blocks[j])),
                key=lambda j: (weight(groups[j]) / pieces[j], -j))
        pieces[i] += 1
    return [s for blocks, p in zip(layer_blocks, pieces) for s in _cut(blocks, p, cost)]


# --- naming and hints ---------------------------------------------------------------------

def _label(shard: list[Unit], layer_sizes: dict[tuple[str, int | None], int], multi_stack: bool,
           strip: frozenset[str] = frozenset()) -> str:
    """'embedding+layers_0_3+attention_4': whole layers as ranges, partial layers by sub-block.
    `strip`: stack names dropped from labels (a component split already names its stack)."""
    counts = Counter((u.stack, u.layer) for u in shard if u.layer is not None)
    tokens: list[tuple[str, int | None, int | None]] = []     # (word, first, last layer)
    for u in shard:
        if u.layer is None:
            head, _, rest = u.name.partition(".")
            name = rest if rest and head in strip else u.name
            tokens.append((name.replace(".", "_").replace("embeddings", "embedding"), None, None))
            continue
        prefix = f"{u.stack}_" if multi_stack and u.stack not in strip else ""
        if counts[(u.stack, u.layer)] < layer_sizes[(u.stack, u.layer)]:
            tokens.append((f"{prefix}{u.kind}_{u.layer}", None, None))
            continue
        word = prefix + ("blocks" if u.stack == "stages" else "layers")
        last = tokens[-1] if tokens else None
        if last and last[0] == word and last[2] is not None and last[2] in (u.layer, u.layer - 1):
            tokens[-1] = (word, last[1], u.layer)
        else:
            tokens.append((word, u.layer, u.layer))
    return "+".join(w if lo is None or hi is None else (f"{w}_{lo}_{hi}" if hi > lo else f"{w[:-1]}_{lo}")
                    for w, lo, hi in tokens)


def _name(shard: list[Unit], st: ShardType, whole: dict[str, int], sizes: dict, multi: bool) -> str:
    comps = list(dict.fromkeys(u.component for u in shard))
    if st is ShardType.COMPONENT:
        if all(sum(1 for u in shard if u.component == c) == whole[c] for c in comps):
            return "+".join("embedding" if c == "embeddings" else c for c in comps)
        if len(comps) == 1:
            stacks = frozenset(k for k, _ in sizes) | {"vision", "text", "encoder", "decoder"}
            return f"{comps[0]}_{_label(shard, sizes, multi, strip=stacks)}"
    return _label(shard, sizes, multi)


def _hints(a: ArchConfig, shard: list[Unit], n: int, is_sink: bool) -> tuple[str, str, str]:
    mods = {u.modality for u in shard}
    modality = mods.pop() if len(mods) == 1 else str(a.model_type)
    if n == 1:
        role = "full"
    elif is_sink or any(u.kind in ("head", "fusion") for u in shard):
        role = "output_layers"
    elif shard[0].model_input:
        role = "embedding"
    else:
        role = "middle_layers"
    spec = modality if (a.model_type is not ModelType.TEXT and modality != "multimodal" and n > 1) else role
    return spec, role, modality


# --- shard specs --------------------------------------------------------------------------

def _spec(index: int, shard: list[Unit], ctx: dict[str, Any]) -> ShardSpec:
    g, owner, batch, seq = ctx["graph"], ctx["owner"], ctx["batch"], ctx["seq"]
    names = {u.name for u in shard}
    flops = {c: 0.0 for c in OP_CLASSES}
    for u in shard:
        for c, v in u.flops(batch, seq).items():
            flops[c] += v
    producers = sorted({p for u in shard for p in g.predecessors(u.name) if p not in names},
                       key=ctx["position"].get)
    unit = lambda n: g.nodes[n]["unit"]  # noqa: E731
    in_bytes = sum(unit(p).output_bytes(batch, seq) for p in producers)
    in_bytes += sum(u.input_bytes(batch, seq) for u in shard)
    exits = [u for u in shard if not set(g.successors(u.name)) <= names or g.out_degree(u.name) == 0]
    tied = {u.tied_to: u.tied_params for u in shard if u.tied_to and u.tied_to not in names}
    params = sum(u.params for u in shard)
    is_sink = all(g.out_degree(u.name) == 0 or set(g.successors(u.name)) <= names for u in shard)
    spec, role, modality = _hints(ctx["arch"], shard, ctx["n"], is_sink)
    return ShardSpec(
        index=index, name=ctx["names"][index], units=tuple(u.name for u in shard), params=params,
        weight_bytes=params * F32, weight_mb=params * F32 / 1e6, gflops=sum(flops.values()) / 1e9,
        flops_by_class=flops, input_bytes=in_bytes, output_bytes=sum(u.output_bytes(batch, seq) for u in exits),
        deps=tuple(sorted({owner[p] for p in producers})), specialization=spec, role=role,
        modality=modality, components=tuple(dict.fromkeys(u.component for u in shard)),
        tied_weight_bytes=sum(tied.values()) * F32,
        peak_activation_bytes=max(u.peak_activation_bytes(batch, seq) for u in shard))


def _check(a: ArchConfig, n: int, st: ShardType, batch: int, seq: int) -> None:
    if n < 1:
        raise PlanError(f"--shards must be at least 1 (got {n})")
    if batch < 1 or seq < 1:
        raise PlanError(f"batch size and sequence length must be at least 1 (got {batch}, {seq})")
    if st is ShardType.ATTENTION_FEEDFORWARD and not a.is_transformer:
        raise PlanError(f"{a.name} is not a transformer: attention_feedforward needs attention and "
                        f"feed-forward sub-blocks; use layer or component")


def _limits(a: ArchConfig, us: list[Unit]) -> dict[ShardType, int]:
    """The largest shard count per applicable shard type (component cuts go down to layers)."""
    layer = len(_blocks(us, ShardType.LAYER))
    out = {ShardType.LAYER: layer, ShardType.ATTENTION_FEEDFORWARD: len(_blocks(us, ShardType.ATTENTION_FEEDFORWARD)),
           ShardType.COMPONENT: layer}
    if not a.is_transformer:
        del out[ShardType.ATTENTION_FEEDFORWARD]
    return out


def max_shards(model: str | ArchConfig, shard_type: ShardType | str) -> int:
    """The largest shard count a model accepts for a shard type (0: type not applicable)."""
    a, st = get_model(model), parse(ShardType, shard_type, "shard type")
    return _limits(a, graph_units(build_graph(a))).get(st, 0)


def make_plan(model: str | ArchConfig, shards: int, shard_type: ShardType | str,
              batch_size: int = 1, seq_len: int = 128) -> ShardPlan:
    """Cut `model` into `shards` shards of `shard_type`, costed at (batch_size, seq_len)."""
    a, st = get_model(model), parse(ShardType, shard_type, "shard type")
    n, batch = int(shards), int(batch_size)
    _check(a, n, st, batch, int(seq_len))
    seq = effective_seq_len(a, int(seq_len))
    g = build_graph(a)
    us = graph_units(g)
    limits = _limits(a, us)
    if n > limits[st]:
        raise _too_many(a, n, st, limits)
    cost = {u.name: u.total_flops(batch, seq) for u in us}
    if st is ShardType.COMPONENT:
        parts = _component_cut(us, n, cost)
    else:
        parts = _cut(_blocks(us, st), n, cost)
    return _assemble(a, st, g, us, parts, batch, seq)


def _assemble(a: ArchConfig, st: ShardType, g: nx.DiGraph, us: list[Unit], parts: list[list[Unit]],
              batch: int, seq: int) -> ShardPlan:
    sizes = Counter((u.stack, u.layer) for u in us if u.layer is not None)
    whole = Counter(u.component for u in us)
    multi = len({u.stack for u in us if u.stack}) > 1
    names: list[str] = []
    for part in parts:
        name = _name(part, st, whole, sizes, multi)
        names.append(name if name not in names else f"{name}#{len(names)}")
    owner = {u.name: i for i, part in enumerate(parts) for u in part}
    ctx = dict(graph=g, owner=owner, batch=batch, seq=seq, arch=a, n=len(parts), names=names,
               position={n: i for i, n in enumerate(g.graph["order"])})
    specs = tuple(_spec(i, part, ctx) for i, part in enumerate(parts))
    return ShardPlan(a.name, a.model_type, st, batch, seq, specs, sum(s.params for s in specs),
                     sum(s.gflops for s in specs))

"""Unit graphs: each architecture as a networkx DiGraph of named units (the smallest
pieces a partitioner may place on a browser).

Rules:
- Unit names are a contract shared with the ONNX builder (one subgraph per unit name):
  BERT family `embeddings, encoder.{i}.attention, encoder.{i}.feedforward, pooler`;
  ViT/DeiT `embeddings, encoder.{i}.*, final_norm, head`; GPT-2/LLaMA `embeddings,
  decoder.{i}.*, final_norm, head`; Whisper/T5 `encoder.embeddings, encoder.{i}.*,
  encoder.final_norm, decoder.embeddings, decoder.{i}.attention|cross_attention|feedforward,
  decoder.final_norm, head`; wav2vec2 `feature_extractor, feature_projection,
  encoder.pos_conv, encoder.{i}.*, final_norm`; CLIP `vision.embeddings, vision.{i}.*,
  vision.post_norm, vision.projection, text.embeddings, text.{i}.*, text.final_norm,
  text.projection, fusion`; ResNet-50 `stem, stages.{s}.{b}, head`.
- `params` counts the weights a unit owns; a tied weight (GPT-2/T5/Whisper LM head,
  T5 decoder embeddings) is owned once, and the user records it in `tied_params`/`tied_to`.
  The sum of `params` over a graph is the model's parameter count.
- Edges are data flow; `graph.graph["order"]` is the execution order (a topological order).
- What seq_len means: text = tokens (clamped to max positions by effective_seq_len);
  vision = fixed by image/patch (ViT 197, DeiT 198, CLIP 50), seq_len ignored; whisper =
  3000 mel frames -> 1500 encoder positions (fixed), decoder tokens = seq_len (<= 448);
  wav2vec2 = encoder frames (20 ms each; raw samples = 320*seq_len + 80); CLIP text <= 77.
- The two wav2vec2-base LayerNorm placements: base normalises after pos_conv, before the
  (post-LN) layers; it is modelled as `final_norm` after the layers (same params and FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx

from models.catalogue import ArchConfig, get_model
from models.cost import Cost, Formula, dtype_bytes, evaluate, model_input_bytes

KINDS = ("embeddings", "attention", "cross_attention", "feedforward", "norm", "head",
         "projection", "fusion", "conv")
COMPONENTS = ("embeddings", "encoder", "decoder", "vision_tower", "text_tower", "fusion", "head")


@dataclass(frozen=True, slots=True)
class Unit:
    """One placeable piece of a model. Cost methods take the request shape (batch, seq_len)."""

    name: str
    kind: str
    component: str
    layer: int | None
    params: int
    formula: Formula
    dims: tuple[tuple[str, Any], ...]
    modality: str = "text"
    positions: int = 0          # fixed positions (vision patches, whisper encoder); 0 -> seq_len
    stack: str = ""             # 'encoder'|'decoder'|'vision'|'text'|'stages' for layer units
    tied_params: int = 0        # weights used here but owned by `tied_to`
    tied_to: str = ""
    model_input: str = ""       # 'tokens'|'image'|'mel'|'waveform' when it reads the model input

    def tokens(self, seq: int) -> int:
        return self.positions or seq

    def cost(self, batch: int, seq: int) -> Cost:
        return evaluate(self.formula, dict(self.dims), batch, self.tokens(seq))

    def flops(self, batch: int, seq: int) -> dict[str, float]:
        return self.cost(batch, seq).flops

    def total_flops(self, batch: int, seq: int) -> float:
        return sum(self.flops(batch, seq).values())

    def weight_bytes(self, dtype: str = "fp32") -> int:
        return self.params * dtype_bytes(dtype)

    def output_bytes(self, batch: int, seq: int) -> int:
        return self.cost(batch, seq).output_bytes

    def peak_activation_bytes(self, batch: int, seq: int) -> int:
        return self.cost(batch, seq).peak_activation_bytes

    def input_bytes(self, batch: int, seq: int) -> int:
        """Bytes of the model's own input this unit reads (0 unless it is an entry unit)."""
        return model_input_bytes(self.model_input, dict(self.dims), batch, self.tokens(seq))


class _Builder:
    """Appends units in execution order and wires data-flow edges."""

    def __init__(self, arch: ArchConfig) -> None:
        self.g = nx.DiGraph(model=arch.name)
        self.order: list[str] = []

    def add(self, name: str, kind: str, component: str, params: int, formula: Formula,
            after: tuple[str, ...] | str | None = "prev", layer: int | None = None, **kw: Any) -> str:
        opts = {k: kw.pop(k) for k in ("modality", "positions", "stack", "tied_params", "tied_to",
                                       "model_input") if k in kw}
        unit = Unit(name, kind, component, layer, int(params), formula, tuple(sorted(kw.items())), **opts)
        preds = (self.order[-1],) if after == "prev" and self.order else (
            () if after in (None, "prev") else ((after,) if isinstance(after, str) else after))
        self.g.add_node(name, unit=unit)
        for p in preds:
            self.g.add_edge(p, name)
        self.order.append(name)
        return name

    def done(self) -> nx.DiGraph:
        self.g.graph["order"] = tuple(self.order)
        return self.g


def _attn_params(d: int, dq: int, dkv: int, bias: bool, norm: int) -> int:
    return d * dq + 2 * d * dkv + dq * d + (dq + 2 * dkv + d if bias else 0) + norm


def _ffn_params(d: int, f: int, bias: bool, gated: bool, norm: int) -> int:
    return d * f * (3 if gated else 2) + (f + d if bias else 0) + norm


def _layers(b: _Builder, a: ArchConfig, stack: str, component: str, n: int, *, cross: bool = False,
            positions: int = 0, kv_positions: int = 0, modality: str = "text",
            cross_from: str = "") -> None:
    """n transformer blocks named `{stack}.{i}.attention|cross_attention|feedforward`."""
    d, f, hd = a.hidden_size, a.intermediate_size, a.head_dim
    dq, dkv = a.num_heads * hd, a.num_kv_heads * hd
    rms = a.norm_style == "rms"
    bias, gated, norm_p = not rms, a.family == "llama", (d if rms else 2 * d)
    common = dict(d=d, heads=a.num_heads, kv_heads=a.num_kv_heads, head_dim=hd, norm=a.norm_style,
                  bias=int(bias), rope=int(a.family == "llama"), rel_bias=int(a.family == "t5"))
    attn_p = _attn_params(d, dq, dkv, bias, norm_p) - (d if a.family == "whisper" else 0)  # no k bias
    for i in range(n):
        rel = a.relative_attention_buckets * a.num_heads if i == 0 else 0
        at = dict(layer=i, modality=modality, positions=positions, stack=stack)
        b.add(f"{stack}.{i}.attention", "attention", component, attn_p + rel, Formula.ATTENTION,
              **at, **common)
        if cross:
            b.add(f"{stack}.{i}.cross_attention", "cross_attention", component, attn_p, Formula.ATTENTION,
                  after=(b.order[-1], cross_from), kv_positions=kv_positions,
                  **at, **{**common, "rel_bias": 0})
        b.add(f"{stack}.{i}.feedforward", "feedforward", component, _ffn_params(d, f, bias, gated, norm_p),
              Formula.FEEDFORWARD, d=d, ffn=f, act=a.activation, gated=int(gated), bias=int(bias),
              norm=a.norm_style, **at)


def _bert(a: ArchConfig) -> nx.DiGraph:
    b, d, V, P = _Builder(a), a.hidden_size, a.vocab_size, a.max_positions
    adds = 1 + (1 if a.type_vocab_size else 0)
    b.add("embeddings", "embeddings", "embeddings", (V + P + a.type_vocab_size) * d + 2 * d,
          Formula.TOKEN_EMBED, d=d, adds=adds, norm="ln", model_input="tokens")
    _layers(b, a, "encoder", "encoder", a.num_layers)
    b.add("pooler", "head", "head", d * d + d, Formula.POOLER, d=d,
          act="relu" if a.family == "distilbert" else "tanh")
    return b.done()


def vit_tokens(a: ArchConfig) -> int:
    """Positions of a ViT/DeiT (or CLIP vision tower): patches + [CLS] (+ DeiT's distillation token)."""
    return (a.image_size // a.patch_size) ** 2 + (2 if a.family == "deit" else 1)


def _vit(a: ArchConfig) -> nx.DiGraph:
    b, d = _Builder(a), a.hidden_size
    extra = 2 if a.family == "deit" else 1
    S = vit_tokens(a)
    emb = a.num_channels * a.patch_size ** 2 * d + d + extra * d + S * d
    b.add("embeddings", "embeddings", "embeddings", emb, Formula.PATCH_EMBED, d=d, channels=a.num_channels,
          patch=a.patch_size, image=a.image_size, bias=1, norm="none", positions=S, modality="vision",
          model_input="image")
    _layers(b, a, "encoder", "encoder", a.num_layers, positions=S, modality="vision")
    b.add("final_norm", "norm", "head", 2 * d, Formula.NORM, d=d, norm="ln", positions=S, modality="vision")
    b.add("head", "head", "head", (d * a.num_labels + a.num_labels) * extra, Formula.CLASSIFIER, d=d,
          labels=a.num_labels, heads=extra, modality="vision")
    return b.done()


def _decoder_only(a: ArchConfig) -> nx.DiGraph:
    b, d, V = _Builder(a), a.hidden_size, a.vocab_size
    rms = a.norm_style == "rms"
    pos = 0 if rms else a.max_positions          # LLaMA: rotary, no position table
    b.add("embeddings", "embeddings", "embeddings", (V + pos) * d, Formula.TOKEN_EMBED, d=d,
          adds=0 if rms else 1, norm="none", model_input="tokens")
    _layers(b, a, "decoder", "decoder", a.num_layers)
    b.add("final_norm", "norm", "head", d if rms else 2 * d, Formula.NORM, d=d, norm=a.norm_style)
    tied = a.tie_word_embeddings
    b.add("head", "head", "head", 0 if tied else V * d, Formula.LM_HEAD, d=d, vocab=V,
          tied_params=V * d if tied else 0, tied_to="embeddings" if tied else "")
    return b.done()


def _encoder_decoder(a: ArchConfig) -> nx.DiGraph:
    """Whisper (conv front-end, learned positions) and T5 (shared vocab, relative bias)."""
    b, d, V = _Builder(a), a.hidden_size, a.vocab_size
    whisper = a.family == "whisper"
    enc_pos = a.max_source_positions if whisper else 0
    norm_p = 2 * d if whisper else d
    if whisper:
        emb = a.num_mel_bins * d * 3 + d + d * d * 3 + d + enc_pos * d
        b.add("encoder.embeddings", "embeddings", "encoder", emb, Formula.AUDIO_CONV_EMBED, d=d,
              mel=a.num_mel_bins, act=a.activation, positions=enc_pos, modality="audio", model_input="mel")
    else:
        b.add("encoder.embeddings", "embeddings", "encoder", V * d, Formula.TOKEN_EMBED, d=d, adds=0,
              norm="none", model_input="tokens")
    mod = "audio" if whisper else "text"
    _layers(b, a, "encoder", "encoder", a.encoder_layers, positions=enc_pos, modality=mod)
    enc_out = b.add("encoder.final_norm", "norm", "encoder", norm_p, Formula.NORM, d=d,
                    norm=a.norm_style, positions=enc_pos, modality=mod)
    dec_emb = dict(params=(V + a.max_positions) * d, adds=1) if whisper else dict(
        params=0, adds=0, tied_params=V * d, tied_to="encoder.embeddings")
    b.add("decoder.embeddings", "embeddings", "decoder", dec_emb.pop("params"), Formula.TOKEN_EMBED,
          after=None, d=d, norm="none", model_input="tokens", **dec_emb)
    _layers(b, a, "decoder", "decoder", a.decoder_layers, cross=True, kv_positions=enc_pos,
            cross_from=enc_out)
    b.add("decoder.final_norm", "norm", "decoder", norm_p, Formula.NORM, d=d, norm=a.norm_style)
    b.add("head", "head", "head", 0, Formula.LM_HEAD, d=d, vocab=V, tied_params=V * d,
          tied_to="decoder.embeddings" if whisper else "encoder.embeddings")
    return b.done()


def _wav2vec2(a: ArchConfig) -> nx.DiGraph:
    b, d, c = _Builder(a), a.hidden_size, a.conv_dim
    chans = (1,) + (c,) * (len(a.conv_kernels) - 1)
    conv = sum(cin * k * c for cin, k in zip(chans, a.conv_kernels)) + 2 * c   # no bias; group norm
    b.add("feature_extractor", "conv", "embeddings", conv, Formula.W2V_FEATURES, conv_dim=c,
          kernels=a.conv_kernels, strides=a.conv_strides, act=a.activation, modality="audio",
          model_input="waveform")
    b.add("feature_projection", "projection", "embeddings", 2 * c + c * d + d + d, Formula.W2V_PROJECTION,
          conv_dim=c, d=d, modality="audio")                     # + masked_spec_embed (d)
    k, g = a.pos_conv_kernel, a.pos_conv_groups
    b.add("encoder.pos_conv", "conv", "encoder", k + d * (d // g) * k + d, Formula.POS_CONV, d=d,
          kernel=k, groups=g, act=a.activation, modality="audio")   # weight-norm g, v, bias
    _layers(b, a, "encoder", "encoder", a.num_layers, modality="audio")
    b.add("final_norm", "norm", "encoder", 2 * d, Formula.NORM, d=d, norm="ln", modality="audio")
    return b.done()


def _clip_tower(b: _Builder, t: ArchConfig, side: str, proj: int) -> str:
    d = t.hidden_size
    comp = f"{side}_tower"
    if side == "vision":
        S = vit_tokens(t)
        emb = t.num_channels * t.patch_size ** 2 * d + d + S * d + 2 * d      # + pre_layrnorm
        b.add("vision.embeddings", "embeddings", comp, emb, Formula.PATCH_EMBED, after=None, d=d,
              channels=t.num_channels, patch=t.patch_size, image=t.image_size, bias=0, norm="ln",
              positions=S, modality="vision", model_input="image")
        _layers(b, t, "vision", comp, t.num_layers, positions=S, modality="vision")
        b.add("vision.post_norm", "norm", comp, 2 * d, Formula.NORM, d=d, norm="ln", pooled=1,
              modality="vision")
    else:
        b.add("text.embeddings", "embeddings", comp, (t.vocab_size + t.max_positions) * d,
              Formula.TOKEN_EMBED, after=None, d=d, adds=1, norm="none", model_input="tokens")
        _layers(b, t, "text", comp, t.num_layers)
        b.add("text.final_norm", "norm", comp, 2 * d, Formula.NORM, d=d, norm="ln")
    return b.add(f"{side}.projection", "projection", comp, d * proj, Formula.PROJECTION, d=d, proj=proj,
                 modality=side)


def _clip(a: ArchConfig) -> nx.DiGraph:
    assert a.vision_tower is not None and a.text_tower is not None
    b = _Builder(a)
    v = _clip_tower(b, a.vision_tower, "vision", a.projection_dim)
    t = _clip_tower(b, a.text_tower, "text", a.projection_dim)
    b.add("fusion", "fusion", "fusion", 1, Formula.FUSION, after=(v, t), proj=a.projection_dim,
          modality="multimodal")
    return b.done()


def _resnet(a: ArchConfig) -> nx.DiGraph:
    b = _Builder(a)
    b.add("stem", "conv", "embeddings", 3 * 64 * 49 + 2 * 64, Formula.RESNET_STEM, image=a.image_size,
          modality="vision", model_input="image", channels=a.num_channels)
    cin, side, idx = 64, a.image_size // 4, 0
    for s, blocks in enumerate(a.stage_blocks):
        mid = 64 * 2 ** s
        for blk in range(blocks):
            stride = 2 if (blk == 0 and s > 0) else 1
            ds = blk == 0
            p = cin * mid + mid * mid * 9 + mid * 4 * mid + 2 * (2 * mid + 4 * mid)
            p += (cin * 4 * mid + 2 * 4 * mid) if ds else 0
            b.add(f"stages.{s}.{blk}", "conv", "encoder", p, Formula.BOTTLENECK, layer=idx, stack="stages",
                  in_c=cin, mid=mid, out_c=4 * mid, side=side, stride=stride, downsample=int(ds),
                  modality="vision")
            cin, side, idx = 4 * mid, side // stride, idx + 1
    b.add("head", "head", "head", cin * a.num_labels + a.num_labels, Formula.RESNET_HEAD, d=cin,
          labels=a.num_labels, side=side, modality="vision")
    return b.done()


BUILDERS = {"bert": _bert, "roberta": _bert, "distilbert": _bert, "vit": _vit, "deit": _vit,
            "gpt2": _decoder_only, "llama": _decoder_only, "whisper": _encoder_decoder,
            "t5": _encoder_decoder, "wav2vec2": _wav2vec2, "clip": _clip, "resnet": _resnet}


def build_graph(arch: ArchConfig | str) -> nx.DiGraph:
    """The unit graph of a model: nodes keyed by unit name, attribute `unit` (a Unit)."""
    a = get_model(arch)
    return BUILDERS[a.family](a)


def execution_order(graph: nx.DiGraph) -> tuple[str, ...]:
    return graph.graph["order"]


def units(graph: nx.DiGraph) -> list[Unit]:
    """Units in execution order."""
    return [graph.nodes[n]["unit"] for n in execution_order(graph)]


def total_params(arch: ArchConfig | str) -> int:
    return sum(u.params for u in units(build_graph(arch)))


def effective_seq_len(arch: ArchConfig | str, seq_len: int) -> int:
    """seq_len as the model sees it: text positions are capped at the model's maximum."""
    a = get_model(arch)
    cap = a.text_tower.max_positions if a.text_tower else a.max_positions
    return min(seq_len, cap) if cap else seq_len

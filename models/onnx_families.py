"""Whisper graphs and weight layout (registered into the ONNX builder and models.weights).

Whisper (pre-LN encoder-decoder), unit names as in models/graph.py:
  encoder.embeddings (conv1 k3 + GELU, conv2 k3 stride 2 + GELU, + positions),
  encoder.{i}.attention|feedforward, encoder.final_norm, decoder.embeddings (tokens +
  positions), decoder.{i}.attention (causal) | cross_attention | feedforward,
  decoder.final_norm, head (logits = hidden @ token embedding^T, tied).
Request inputs: input_features float32 [B, mel, 2*max_source_positions],
decoder_input_ids int64 [B, S]. Carried: encoder_hidden [B, 1500, H], hidden [B, S, H].
Final outputs: hidden, logits [B, S, vocab]. The key projections have no bias (as in Whisper).
CLIP is not built here yet (PlanError lists the families that are).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.onnx_builder import Family, ShardState, emit_attention, emit_feedforward
from models.weights import _linear, _norm, attention_spec, feedforward_spec
from shardtwin.errors import PlanError


def whisper_spec(a: Any) -> dict[str, tuple[int, ...]]:
    h, e = a.hidden_size, "encoder.embeddings"
    spec = {f"{e}.conv1.weight": (h, a.num_mel_bins, 3), f"{e}.conv1.bias": (h,),
            f"{e}.conv2.weight": (h, h, 3), f"{e}.conv2.bias": (h,), f"{e}.position": (a.max_source_positions, h)}
    for i in range(a.encoder_layers):
        spec |= attention_spec(f"encoder.{i}.attention", h, key_bias=False)
        spec |= feedforward_spec(f"encoder.{i}.feedforward", h, a.intermediate_size)
    spec |= _norm("encoder.final_norm", h)
    spec |= {"decoder.embeddings.token": (a.vocab_size, h), "decoder.embeddings.position": (a.max_positions, h)}
    for i in range(a.decoder_layers):
        spec |= attention_spec(f"decoder.{i}.attention", h, key_bias=False)
        spec |= attention_spec(f"decoder.{i}.cross_attention", h, key_bias=False)
        spec |= feedforward_spec(f"decoder.{i}.feedforward", h, a.intermediate_size)
    return spec | _norm("decoder.final_norm", h) | _linear("head", h, a.vocab_size, bias=False)


def _conv_gelu(st: ShardState, x: str, name: str, stride: int) -> str:
    g = st.g
    y = g.op("Conv", [x, g.weight(f"{name}.weight"), g.weight(f"{name}.bias")], name,
             kernel_shape=[3], pads=[1, 1], strides=[stride])
    return g.activation(y, "gelu")


def _encoder_embeddings(st: ShardState) -> None:
    g = st.g
    x = _conv_gelu(st, st.get("input_features"), "encoder.embeddings.conv1", 1)
    x = _conv_gelu(st, x, "encoder.embeddings.conv2", 2)
    x = g.op("Transpose", [x], perm=[0, 2, 1])
    st.set("encoder_hidden", g.op("Add", [x, g.weight("encoder.embeddings.position")], "encoder.embeddings"))


def _decoder_embeddings(st: ShardState) -> None:
    g = st.g
    x = g.op("Gather", [g.weight("decoder.embeddings.token"), st.get("decoder_input_ids")])
    pos = g.op("Gather", [g.weight("decoder.embeddings.position"), g.const(np.arange(st.seq), np.int64)])
    st.set("hidden", g.op("Add", [x, pos], "decoder.embeddings"))


def _causal_bias(st: ShardState) -> str:
    if "causal" not in st.cache:
        upper = np.triu(np.full((st.seq, st.seq), -10000.0, np.float32), k=1)
        st.cache["causal"] = st.g.const(upper[None, None])
    return st.cache["causal"]


def _whisper_emit(st: ShardState, unit: str) -> None:
    g, eps, src = st.g, st.arch.layer_norm_eps, st.arch.max_source_positions
    match unit.split("."):
        case ["encoder", "embeddings"]:
            _encoder_embeddings(st)
        case ["encoder", _, "attention"]:
            emit_attention(st, unit, None, tensor="encoder_hidden", seq=src)
        case ["encoder", _, "feedforward"]:
            emit_feedforward(st, unit, tensor="encoder_hidden")
        case ["encoder", "final_norm"]:
            st.set("encoder_hidden", g.layer_norm(st.get("encoder_hidden"), unit, eps))
        case ["decoder", "embeddings"]:
            _decoder_embeddings(st)
        case ["decoder", _, "attention"]:
            emit_attention(st, unit, _causal_bias(st))
        case ["decoder", _, "cross_attention"]:
            emit_attention(st, unit, None, kv="encoder_hidden", kv_seq=src)
        case ["decoder", _, "feedforward"]:
            emit_feedforward(st, unit)
        case ["decoder", "final_norm"]:
            st.set("hidden", g.layer_norm(st.get("hidden"), unit, eps))
        case ["head"]:
            st.set("logits", g.linear(st.get("hidden"), "head"))
        case _:
            raise PlanError(f"unit {unit!r} is not a unit of {st.arch.name}")


def _whisper_type(st: ShardState, name: str) -> tuple[type, list[int]]:
    a, b, s = st.arch, st.batch, st.seq
    return {"input_features": (np.float32, [b, a.num_mel_bins, 2 * a.max_source_positions]),
            "decoder_input_ids": (np.int64, [b, s]),
            "encoder_hidden": (np.float32, [b, a.max_source_positions, a.hidden_size]),
            "hidden": (np.float32, [b, s, a.hidden_size]), "logits": (np.float32, [b, s, a.vocab_size])}[name]


def _whisper_reads(unit: str) -> set[str]:
    if unit == "encoder.embeddings":
        return {"input_features"}
    if unit.startswith("encoder."):
        return {"encoder_hidden"}
    if unit == "decoder.embeddings":
        return {"decoder_input_ids"}
    return {"hidden", "encoder_hidden"} if unit.endswith("cross_attention") else {"hidden"}


WHISPER = Family(_whisper_emit, _whisper_type, _whisper_reads,
                 frozenset({"input_features", "decoder_input_ids"}), ("hidden", "logits"))

FAMILIES: dict[str, Family] = {"whisper": WHISPER}
SPECS = {"whisper": whisper_spec}

"""Cost model of one unit: FLOPs by operator class, boundary and peak activation bytes.

Rules:
- Counts are analytic and standard: a multiply-accumulate is 2 FLOPs; a LayerNorm costs
  5 FLOPs per element, an RMSNorm 4; activations per element: gelu/gelu_new 8,
  quick_gelu 4, silu 4, relu 1; residual adds and bias adds 1 per element.
- Operator classes (what the simulator calibrates a rate for): `matmul` (dense
  projections, LM heads), `attention` (QK^T and AV products + softmax, full S x S_kv,
  causal masks not discounted), `elementwise` (norms, activations, adds), `conv`.
- Activation bytes are fp32 (4 bytes per element); token ids are int64 (8 bytes).
- A formula gets the unit's dims, the batch and the resolved positions `S`
  (a unit with fixed positions — vision patches, whisper's 1500 encoder frames — uses them
  and ignores the workload's seq_len; see models/graph.py for what seq_len means per model).
- Every formula is keyed by `Formula`; evaluating an unknown formula cannot happen (closed union).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Mapping

from shardtwin.errors import UnknownNameError

OP_CLASSES = ("matmul", "attention", "elementwise", "conv")
F32 = 4
DTYPE_BYTES = {"fp32": 4, "fp16": 2}
ACT_FLOPS = {"gelu": 8, "gelu_new": 8, "quick_gelu": 4, "silu": 4, "relu": 1, "tanh": 5}
NORM_FLOPS = {"post": 5, "pre": 5, "ln": 5, "rms": 4, "none": 0}


class Formula(StrEnum):
    TOKEN_EMBED = "token_embed"
    PATCH_EMBED = "patch_embed"
    AUDIO_CONV_EMBED = "audio_conv_embed"
    W2V_FEATURES = "w2v_features"
    W2V_PROJECTION = "w2v_projection"
    POS_CONV = "pos_conv"
    ATTENTION = "attention"
    FEEDFORWARD = "feedforward"
    NORM = "norm"
    POOLER = "pooler"
    LM_HEAD = "lm_head"
    CLASSIFIER = "classifier"
    PROJECTION = "projection"
    FUSION = "fusion"
    RESNET_STEM = "resnet_stem"
    BOTTLENECK = "bottleneck"
    RESNET_HEAD = "resnet_head"


@dataclass(frozen=True, slots=True)
class Cost:
    """The cost of one unit for one request shape."""

    flops: dict[str, float]
    output_bytes: int
    peak_activation_bytes: int


Dims = Mapping[str, object]


def _flops(matmul: float = 0.0, attention: float = 0.0, elementwise: float = 0.0, conv: float = 0.0) -> dict[str, float]:
    return {"matmul": float(matmul), "attention": float(attention),
            "elementwise": float(elementwise), "conv": float(conv)}


def _i(d: Dims, key: str) -> int:
    return int(d.get(key, 0))  # type: ignore[arg-type]


def _norm(d: Dims) -> int:
    return NORM_FLOPS[str(d.get("norm", "none"))]


def _act(d: Dims) -> int:
    return ACT_FLOPS[str(d.get("act", "gelu"))]


def conv_out_len(n: int, kernel: int, stride: int) -> int:
    return (n - kernel) // stride + 1


def w2v_samples(frames: int, kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Raw samples that give exactly `frames` outputs: receptive field + (frames-1) * hop."""
    field, hop = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * hop
        hop *= s
    return field + (frames - 1) * hop


# --- formulas: (dims, batch B, positions S) -> Cost --------------------------------------

def _token_embed(d: Dims, B: int, S: int) -> Cost:
    T, h = B * S, _i(d, "d")
    ew = T * h * (_i(d, "adds") + _norm(d))
    return Cost(_flops(elementwise=ew), T * h * F32, T * h * F32)


def _patch_embed(d: Dims, B: int, S: int) -> Cost:
    h, c, p = _i(d, "d"), _i(d, "channels"), _i(d, "patch")
    patches = (_i(d, "image") // p) ** 2
    conv = 2 * B * patches * c * p * p * h
    ew = B * patches * h * _i(d, "bias") + B * S * h * (1 + _norm(d))  # bias, pos add, (pre-)norm
    return Cost(_flops(conv=conv, elementwise=ew), B * S * h * F32, B * S * h * F32)


def _audio_conv_embed(d: Dims, B: int, S: int) -> Cost:
    h, mel, frames = _i(d, "d"), _i(d, "mel"), 2 * S   # conv2 has stride 2: 3000 mel frames -> 1500
    conv = 2 * B * frames * mel * 3 * h + 2 * B * S * h * 3 * h
    ew = B * (frames + S) * h * (1 + _act(d)) + B * S * h     # biases, gelu, positional add
    return Cost(_flops(conv=conv, elementwise=ew), B * S * h * F32, B * frames * h * F32)


def _w2v_features(d: Dims, B: int, S: int) -> Cost:
    kernels, strides, c = tuple(d["kernels"]), tuple(d["strides"]), _i(d, "conv_dim")  # type: ignore[arg-type]
    n, cin, conv, ew, peak = w2v_samples(S, kernels, strides), 1, 0, 0, 0
    for i, (k, s) in enumerate(zip(kernels, strides)):
        n = conv_out_len(n, k, s)
        conv += 2 * B * n * cin * k * c
        ew += B * n * c * (_act(d) + (5 if i == 0 else 0))   # gelu; group norm on the first layer
        peak = max(peak, B * n * c * F32)
        cin = c
    return Cost(_flops(conv=conv, elementwise=ew), B * S * c * F32, peak)


def _w2v_projection(d: Dims, B: int, S: int) -> Cost:
    T, cin, h = B * S, _i(d, "conv_dim"), _i(d, "d")
    return Cost(_flops(matmul=2 * T * cin * h, elementwise=T * cin * 5 + T * h), T * h * F32, T * h * F32)


def _pos_conv(d: Dims, B: int, S: int) -> Cost:
    T, h, k, g = B * S, _i(d, "d"), _i(d, "kernel"), _i(d, "groups")
    conv = 2 * T * (h // g) * k * h
    return Cost(_flops(conv=conv, elementwise=T * h * (2 + _act(d))), T * h * F32, 2 * T * h * F32)


def _attention(d: Dims, B: int, S: int) -> Cost:
    h, heads, hd = _i(d, "d"), _i(d, "heads"), _i(d, "head_dim")
    dq, dkv = heads * hd, _i(d, "kv_heads") * hd
    Skv = _i(d, "kv_positions") or S
    T, Tkv = B * S, B * Skv
    matmul = 2 * T * h * dq + 2 * Tkv * h * 2 * dkv + 2 * T * dq * h
    scores = B * heads * S * Skv
    attention = 4 * scores * hd + 5 * scores
    ew = _i(d, "bias") * (T * (dq + h) + Tkv * 2 * dkv) + T * h * (1 + _norm(d))
    ew += _i(d, "rope") * 3 * T * (dq + dkv) + _i(d, "rel_bias") * scores
    peak = (T * dq + 2 * Tkv * dkv + scores + T * h) * F32
    return Cost(_flops(matmul=matmul, attention=attention, elementwise=ew), T * h * F32, peak)


def _feedforward(d: Dims, B: int, S: int) -> Cost:
    T, h, f, gated = B * S, _i(d, "d"), _i(d, "ffn"), _i(d, "gated")
    matmul = 2 * T * h * f * (3 if gated else 2)
    ew = T * f * (_act(d) + gated) + _i(d, "bias") * T * (f + h) + T * h * (1 + _norm(d))
    peak = (T * f * (2 if gated else 1) + 2 * T * h) * F32
    return Cost(_flops(matmul=matmul, elementwise=ew), T * h * F32, peak)


def _norm_unit(d: Dims, B: int, S: int) -> Cost:
    rows = B if _i(d, "pooled") else B * S
    n = rows * _i(d, "d")
    return Cost(_flops(elementwise=n * _norm(d)), n * F32, n * F32)


def _pooler(d: Dims, B: int, S: int) -> Cost:
    h = _i(d, "d")
    return Cost(_flops(matmul=2 * B * h * h, elementwise=B * h * (1 + _act(d))), B * h * F32, B * h * F32)


def _lm_head(d: Dims, B: int, S: int) -> Cost:
    T, h, v = B * S, _i(d, "d"), _i(d, "vocab")
    return Cost(_flops(matmul=2 * T * h * v), T * v * F32, T * v * F32)


def _classifier(d: Dims, B: int, S: int) -> Cost:
    h, labels, n = _i(d, "d"), _i(d, "labels"), max(1, _i(d, "heads"))
    ew = B * labels * n + (B * labels if n > 1 else 0)   # biases; average of the two DeiT heads
    return Cost(_flops(matmul=2 * B * h * labels * n, elementwise=ew), B * labels * F32, B * labels * n * F32)


def _projection(d: Dims, B: int, S: int) -> Cost:
    h, p = _i(d, "d"), _i(d, "proj")
    return Cost(_flops(matmul=2 * B * h * p), B * p * F32, B * p * F32)


def _fusion(d: Dims, B: int, S: int) -> Cost:
    p = _i(d, "proj")
    ew = 2 * 3 * B * p + 2 * B * B        # L2-normalise both embeddings; scale both logit matrices
    return Cost(_flops(matmul=2 * B * B * p, elementwise=ew), 2 * B * B * F32, 2 * B * p * F32)


def _resnet_stem(d: Dims, B: int, S: int) -> Cost:
    side = _i(d, "image") // 2                     # 7x7 stride-2 conv: 224 -> 112
    conv = 2 * B * side * side * 3 * 49 * 64
    pooled = side // 2                             # 3x3 stride-2 max pool: 112 -> 56
    ew = B * side * side * 64 * 3 + B * pooled * pooled * 64 * 9   # BN (2) + relu; max pool
    return Cost(_flops(conv=conv, elementwise=ew), B * pooled * pooled * 64 * F32, B * side * side * 64 * F32)


def _bottleneck(d: Dims, B: int, S: int) -> Cost:
    cin, mid, cout, side, stride = (_i(d, k) for k in ("in_c", "mid", "out_c", "side", "stride"))
    out = side // stride
    conv = 2 * B * (side * side * cin * mid + out * out * mid * 9 * mid + out * out * mid * cout)
    ew = B * (side * side * mid * 3 + out * out * mid * 3 + out * out * cout * 4)  # BN+relu, BN+add+relu
    if _i(d, "downsample"):
        conv += 2 * B * out * out * cin * cout
        ew += B * out * out * cout * 2
    peak = B * max(side * side * mid, out * out * cout) * 2 * F32
    return Cost(_flops(conv=conv, elementwise=ew), B * out * out * cout * F32, peak)


def _resnet_head(d: Dims, B: int, S: int) -> Cost:
    c, labels, side = _i(d, "d"), _i(d, "labels"), _i(d, "side")
    return Cost(_flops(matmul=2 * B * c * labels, elementwise=B * c * side * side + B * labels),
                B * labels * F32, B * c * F32)


FORMULAS: dict[Formula, Callable[[Dims, int, int], Cost]] = {
    Formula.TOKEN_EMBED: _token_embed, Formula.PATCH_EMBED: _patch_embed,
    Formula.AUDIO_CONV_EMBED: _audio_conv_embed, Formula.W2V_FEATURES: _w2v_features,
    Formula.W2V_PROJECTION: _w2v_projection, Formula.POS_CONV: _pos_conv,
    Formula.ATTENTION: _attention, Formula.FEEDFORWARD: _feedforward, Formula.NORM: _norm_unit,
    Formula.POOLER: _pooler, Formula.LM_HEAD: _lm_head, Formula.CLASSIFIER: _classifier,
    Formula.PROJECTION: _projection, Formula.FUSION: _fusion, Formula.RESNET_STEM: _resnet_stem,
    Formula.BOTTLENECK: _bottleneck, Formula.RESNET_HEAD: _resnet_head,
}


def evaluate(formula: Formula, dims: Dims, batch: int, positions: int) -> Cost:
    """The cost of a unit with `dims` at `batch` requests of `positions` positions each."""
    return FORMULAS[formula](dims, batch, positions)


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise UnknownNameError("dtype", dtype, list(DTYPE_BYTES)) from None


def model_input_bytes(kind: str, dims: Dims, batch: int, positions: int) -> int:
    """Bytes of the model's own input consumed by an entry unit (token ids are int64)."""
    match kind:
        case "tokens":
            return batch * positions * 8
        case "image":
            return batch * _i(dims, "channels") * _i(dims, "image") ** 2 * F32
        case "mel":
            return batch * _i(dims, "mel") * 2 * positions * F32
        case "waveform":
            kernels, strides = tuple(dims["kernels"]), tuple(dims["strides"])  # type: ignore[arg-type]
            return batch * w2v_samples(positions, kernels, strides) * F32
        case "":
            return 0
    raise UnknownNameError("model input", kind, ["tokens", "image", "mel", "waveform"])

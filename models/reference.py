"""Reference computations: sentence embeddings, local shard chaining, and an independent
numpy forward pass of BERT-family encoders and ViT/DeiT to cross-check the ONNX graphs.

Rules:
- `numpy_forward` shares nothing with the ONNX builder except the canonical weight names
  and the documented conventions (mask bias -10000, RoBERTa position offset 2, pre/post LN).
- Sentence embedding = mean of `hidden` over attention_mask, then L2-normalised
  (sentence-transformers' Pooling + Normalize for all-MiniLM-L6-v2).
- onnxruntime errors surface as ModelAssetError (one line).
"""

from __future__ import annotations

from math import sqrt
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from scipy.special import erf

from models.catalogue import get_model
from models.onnx_builder import build_full_model, chain_feeds
from models.weights import BERT_FAMILIES, VIT_FAMILIES, load_weights
from shardtwin.errors import ModelAssetError

def session(model: onnx.ModelProto | str | bytes, threads: int = 0):
    """An onnxruntime CPU session for a ModelProto, a path or serialized bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelAssetError(f"onnxruntime could not load the model: {str(exc).splitlines()[0]}") from exc


def run_shards_locally(shard_models: Sequence[Any], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Chain shards (ModelProto, path or session) through onnxruntime; return the last outputs."""
    outputs: dict[str, np.ndarray] = {}
    for m in shard_models:
        sess = m if hasattr(m, "get_inputs") else session(m)
        names = [o.name for o in sess.get_outputs()]
        inputs = chain_feeds(outputs, feeds, [i.name for i in sess.get_inputs()])
        try:
            outputs = dict(zip(names, sess.run(names, inputs)))
        except Exception as exc:
            raise ModelAssetError(f"onnxruntime failed to run a shard: {str(exc).splitlines()[0]}") from exc
    return outputs


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True) if normalize else pooled


def reference_embedding(texts: Sequence[str] | str, model: str = "all-MiniLM-L6-v2", seq_len: int = 128,
                        seed: int = 0, engine: str = "onnx") -> np.ndarray:
    """L2-normalised mean-pooled sentence embeddings [N, H] (engine 'onnx' or 'numpy')."""
    from models.tokenizer import load_tokenizer

    texts = [texts] if isinstance(texts, str) else list(texts)
    enc = load_tokenizer(model).encode(texts, seq_len)
    weights = load_weights(model, seed)
    if engine == "numpy":
        hidden = numpy_forward(model, weights, enc.feeds())["hidden"]
    else:
        sess = session(build_full_model(model, weights, len(texts), seq_len))
        hidden = sess.run(["hidden"], enc.feeds())[0]
    return mean_pool(hidden, enc.attention_mask)


# -- independent numpy forward pass (float64 internally) --------------------------------
def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _act(x: np.ndarray, kind: str) -> np.ndarray:
    if kind in ("gelu", "gelu_erf"):
        return 0.5 * x * (1.0 + erf(x / sqrt(2.0)))
    if kind in ("gelu_new", "gelu_tanh", "gelu_pytorch_tanh"):
        return 0.5 * x * (1.0 + np.tanh(sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if kind == "quick_gelu":
        return x / (1.0 + np.exp(-1.702 * x))
    return np.maximum(x, 0)


def _lin(x: np.ndarray, W: Mapping[str, np.ndarray], p: str) -> np.ndarray:
    y = x @ W[f"{p}.weight"]
    return y + W[f"{p}.bias"] if f"{p}.bias" in W else y


def _attn(x: np.ndarray, W: Mapping[str, np.ndarray], p: str, heads: int, bias: np.ndarray | None) -> np.ndarray:
    b, s, h = x.shape
    split = lambda t: t.reshape(b, s, heads, h // heads).transpose(0, 2, 1, 3)
    q, k, v = (split(_lin(x, W, f"{p}.{n}")) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / sqrt(h // heads)
    if bias is not None:
        scores = scores + bias
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    ctx = (scores / scores.sum(-1, keepdims=True)) @ v
    return _lin(ctx.transpose(0, 2, 1, 3).reshape(b, s, h), W, f"{p}.output")


def _layers(x: np.ndarray, W: Mapping[str, np.ndarray], a: Any, bias: np.ndarray | None) -> np.ndarray:
    eps, pre = a.layer_norm_eps, a.norm_style == "pre"
    for i in range(a.num_layers):
        p, f = f"encoder.{i}.attention", f"encoder.{i}.feedforward"
        if pre:
            x = x + _attn(_ln(x, W[f"{p}.norm.weight"], W[f"{p}.norm.bias"], eps), W, p, a.num_heads, bias)
            hid = _ln(x, W[f"{f}.norm.weight"], W[f"{f}.norm.bias"], eps)
            x = x + _lin(_act(_lin(hid, W, f"{f}.intermediate"), a.activation), W, f"{f}.output")
        else:
            x = _ln(x + _attn(x, W, p, a.num_heads, bias), W[f"{p}.norm.weight"], W[f"{p}.norm.bias"], eps)
            y = x + _lin(_act(_lin(x, W, f"{f}.intermediate"), a.activation), W, f"{f}.output")
            x = _ln(y, W[f"{f}.norm.weight"], W[f"{f}.norm.bias"], eps)
    return x


def _bert_numpy(a: Any, W: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    offset = 2 if a.family == "roberta" else 0
    x = W["embeddings.word"][ids] + W["embeddings.position"][offset:offset + ids.shape[1]][None]
    if "embeddings.token_type" in W:
        x = x + W["embeddings.token_type"][feeds["token_type_ids"]]
    x = _ln(x, W["embeddings.norm.weight"], W["embeddings.norm.bias"], a.layer_norm_eps)
    x = _layers(x, W, a, ((1.0 - mask) * -10000.0)[:, None, None, :])
    return {"hidden": x, "pooled": np.tanh(_lin(x[:, 0], W, "pooler.dense"))}


def _vit_numpy(a: Any, W: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    pix, p = feeds["pixel_values"], a.patch_size
    b, c, n = pix.shape[0], pix.shape[1], a.image_size // p
    patches = pix.reshape(b, c, n, p, n, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, n * n, c * p * p)
    kernel = W["embeddings.patch.weight"].reshape(a.hidden_size, -1).T
    x = patches @ kernel + W["embeddings.patch.bias"]
    toks = ["embeddings.cls"] + (["embeddings.distillation"] if a.family == "deit" else [])
    x = np.concatenate([np.broadcast_to(W[t], (b, 1, a.hidden_size)) for t in toks] + [x], axis=1)
    x = _layers(x + W["embeddings.position"], W, a, None)
    x = _ln(x, W["final_norm.weight"], W["final_norm.bias"], a.layer_norm_eps)
    logits = _lin(x[:, 0], W, "head")
    if a.family == "deit":
        logits = (logits + _lin(x[:, 1], W, "head.distillation")) / 2
    return {"hidden": x, "logits": logits}


def numpy_forward(model: Any, weights: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Full forward pass in float64 numpy; returns float32 outputs like the ONNX graph's."""
    a = get_model(model)
    W = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    if a.family in BERT_FAMILIES:
        out = _bert_numpy(a, W, feeds)
    elif a.family in VIT_FAMILIES:
        out = _vit_numpy(a, W, feeds)
    else:
        known = ", ".join(BERT_FAMILIES + VIT_FAMILIES)
        raise ModelAssetError(f"no numpy reference for family {a.family!r}; known: {known}")
    return {k: v.astype(np.float32) for k, v in out.items()}

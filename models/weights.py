"""Model weights under our canonical tensor names: real (all-MiniLM-L6-v2) or seeded synthetic.

Rules:
- Every canonical tensor name starts with the name of the unit that owns it followed by
  '.', e.g. 'encoder.3.attention.query.weight'; a shard's weights are exactly the
  tensors whose unit is in the shard (see `unit_of`).
- Linear weights are stored [in, out] (y = x @ W + b); HF's [out, in] is transposed on load.
- All tensors are float32 and C-contiguous.
- `Weights.source` says what they are: 'real:<sha256 prefix>' or 'synthetic:seed=<n>'.
- Synthetic tensors have the true shapes; matrices/embeddings ~ normal(0, 0.02), LayerNorm
  weight 1 / bias 0, biases 0. Each tensor draws from its own stream
  default_rng(SeedSequence(seed, spawn_key=hash(name))), so adding a tensor never changes
  another one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from models.catalogue import get_model
from models.graph import vit_tokens
from shardtwin.errors import ModelAssetError

REAL_MODELS = ("all-MiniLM-L6-v2",)
BERT_FAMILIES = ("bert", "roberta", "distilbert")   # the one list of each (builder, reference)
VIT_FAMILIES = ("vit", "deit")
LOGIT_SCALE_INIT = float(np.log(1 / 0.07))


def _norm(prefix: str, h: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (h,), f"{prefix}.bias": (h,)}


def _linear(prefix: str, n_in: int, n_out: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    spec = {f"{prefix}.weight": (n_in, n_out)}
    if bias:
        spec[f"{prefix}.bias"] = (n_out,)
    return spec


def attention_spec(unit: str, h: int, key_bias: bool = True) -> dict[str, tuple[int, ...]]:
    spec = _norm(f"{unit}.norm", h)
    for part in ("query", "key", "value", "output"):
        spec |= _linear(f"{unit}.{part}", h, h, bias=key_bias or part != "key")
    return spec


def feedforward_spec(unit: str, h: int, inter: int) -> dict[str, tuple[int, ...]]:
    return _norm(f"{unit}.norm", h) | _linear(f"{unit}.intermediate", h, inter) | _linear(f"{unit}.output", inter, h)


def _layers(prefix: str, n: int, h: int, inter: int, key_bias: bool = True) -> dict:
    spec: dict[str, tuple[int, ...]] = {}
    for i in range(n):
        spec |= attention_spec(f"{prefix}.{i}.attention", h, key_bias)
        spec |= feedforward_spec(f"{prefix}.{i}.feedforward", h, inter)
    return spec


def bert_spec(a: Any) -> dict[str, tuple[int, ...]]:
    h = a.hidden_size
    spec = {"embeddings.word": (a.vocab_size, h), "embeddings.position": (a.max_positions, h)}
    if (a.type_vocab_size or 0) > 0:
        spec["embeddings.token_type"] = (a.type_vocab_size, h)
    spec |= _norm("embeddings.norm", h)
    spec |= _layers("encoder", a.num_layers, h, a.intermediate_size)
    return spec | _linear("pooler.dense", h, h)


def vit_spec(a: Any) -> dict[str, tuple[int, ...]]:
    h, p, labels = a.hidden_size, a.patch_size, num_labels(a)
    spec = {"embeddings.patch.weight": (h, a.num_channels or 3, p, p), "embeddings.patch.bias": (h,),
            "embeddings.cls": (1, 1, h), "embeddings.position": (1, vit_tokens(a), h)}
    if a.family == "deit":
        spec["embeddings.distillation"] = (1, 1, h)
    spec |= _layers("encoder", a.num_layers, h, a.intermediate_size)
    spec |= _norm("final_norm", h) | _linear("head", h, labels)
    if a.family == "deit":
        spec |= _linear("head.distillation", h, labels)
    return spec


def num_labels(a: Any) -> int:
    return int(getattr(a, "num_labels", None) or 1000)


SPECS = {**{f: bert_spec for f in BERT_FAMILIES}, **{f: vit_spec for f in VIT_FAMILIES}}


def weight_spec(arch: Any) -> dict[str, tuple[int, ...]]:
    """Canonical tensor name -> shape for an architecture (the true shapes)."""
    from models import onnx_families  # whisper/clip specs live next to their graphs

    spec = SPECS.get(arch.family) or onnx_families.SPECS.get(arch.family)
    if spec is None:
        known = sorted(set(SPECS) | set(onnx_families.SPECS))
        raise ModelAssetError(f"no weight layout for family {arch.family!r} of {arch.name!r}; known: {', '.join(known)}")
    return spec(arch)


def unit_of(tensor: str, units: "set[str] | frozenset[str]") -> str | None:
    """The unit owning a tensor name: the longest dotted prefix that is a unit."""
    parts = tensor.split(".")
    for k in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:k]) in units:
            return ".".join(parts[:k])
    return None


class Weights(Mapping[str, np.ndarray]):
    """Read-only mapping canonical name -> float32 array, plus where the values came from."""

    def __init__(self, model: str, tensors: dict[str, np.ndarray], source: str) -> None:
        self.model, self.source, self._t = model, source, tensors

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._t[name]
        except KeyError:
            raise ModelAssetError(f"{self.model} ({self.source}) has no tensor {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._t

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._t.values())


def _stream(seed: int, name: str) -> np.random.Generator:
    words = np.frombuffer(hashlib.sha256(name.encode()).digest()[:16], dtype="<u4")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(w) for w in words)))


def synthetic_tensor(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("norm.weight"):
        return np.ones(shape, np.float32)
    if name.endswith("logit_scale"):
        return np.full(shape, LOGIT_SCALE_INIT, np.float32)
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    return (_stream(seed, name).standard_normal(shape, dtype=np.float32) * np.float32(0.02))


def synthetic_weights(arch: Any, seed: int = 0) -> Weights:
    spec = weight_spec(arch)
    tensors = {n: synthetic_tensor(seed, n, s) for n, s in spec.items()}
    if "head.weight" in tensors and getattr(arch, "family", "") == "whisper":
        tensors["head.weight"] = np.ascontiguousarray(tensors["decoder.embeddings.token"].T)  # tied
    return Weights(arch.name, tensors, f"synthetic:seed={seed}")


def _hf_minilm_name(ours: str) -> tuple[str, bool]:
    """HF tensor name for one of ours, and whether it must be transposed."""
    fixed = {"embeddings.word": "embeddings.word_embeddings.weight",
             "embeddings.position": "embeddings.position_embeddings.weight",
             "embeddings.token_type": "embeddings.token_type_embeddings.weight",
             "embeddings.norm.weight": "embeddings.LayerNorm.weight",
             "embeddings.norm.bias": "embeddings.LayerNorm.bias"}
    if ours in fixed:
        return fixed[ours], False
    if ours.startswith("pooler.dense."):
        return ours, ours.endswith("weight")
    _, i, unit, part, leaf = ours.split(".")
    hf = {("attention", "query"): "attention.self.query", ("attention", "key"): "attention.self.key",
          ("attention", "value"): "attention.self.value", ("attention", "output"): "attention.output.dense",
          ("attention", "norm"): "attention.output.LayerNorm", ("feedforward", "intermediate"): "intermediate.dense",
          ("feedforward", "output"): "output.dense", ("feedforward", "norm"): "output.LayerNorm"}[(unit, part)]
    return f"encoder.layer.{i}.{hf}.{leaf}", leaf == "weight" and part != "norm"


def real_minilm_weights() -> Weights:
    from models.fetch_weights import SAFETENSORS_SHA256, ensure_minilm
    from models.safetensors import read_safetensors

    hf = read_safetensors(ensure_minilm() / "model.safetensors")
    tensors = {}
    for ours, shape in bert_spec(get_model("all-MiniLM-L6-v2")).items():
        name, transpose = _hf_minilm_name(ours)
        if name not in hf:
            raise ModelAssetError(f"all-MiniLM-L6-v2 safetensors lacks {name!r}")
        arr = hf[name].T if transpose else hf[name]
        if tuple(arr.shape) != shape:
            raise ModelAssetError(f"all-MiniLM-L6-v2 tensor {name!r} has shape {arr.shape}, expected {shape}")
        tensors[ours] = np.ascontiguousarray(arr, dtype=np.float32)
    return Weights("all-MiniLM-L6-v2", tensors, f"real:{SAFETENSORS_SHA256[:8]}")


def load_weights(model_name: Any, seed: int = 0) -> Weights:
    """Real weights for all-MiniLM-L6-v2, seeded synthetic (true shapes) for every other model."""
    arch = get_model(model_name)
    if arch.name in REAL_MODELS:
        return real_minilm_weights()
    return synthetic_weights(arch, seed)


def weights_source(model_name: Any, seed: int = 0) -> str:
    """The `.source` that load_weights(model_name, seed) will have, without loading anything."""
    from models.fetch_weights import SAFETENSORS_SHA256

    arch = get_model(model_name)
    return f"real:{SAFETENSORS_SHA256[:8]}" if arch.name in REAL_MODELS else f"synthetic:seed={seed}"

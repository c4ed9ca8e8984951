"""The shard files of one real run and the tensors that flow between them.

Rules: shard files are exported once per (model, units, shape, weights) and cached
(models.onnx_export); a request's input tensors are deterministic in (seed, request id):
real tokenised text for the BERT family (a fixed sentence list or the caller's texts, cycled), seeded
synthetic pixels / audio features otherwise. Outputs of finished requests are kept only
for the correctness check (the first `keep` requests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from models.fetch_weights import cache_root
from models.onnx_builder import chain_feeds
from models.onnx_export import ShardFile, export_plan_shards
from models.partition import ShardPlan
from models.weights import weights_source
from shardtwin.errors import InputError

SENTENCES = (
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
)
REAL_FAMILIES = ("bert", "roberta", "distilbert", "vit", "deit", "whisper")


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """load_tokenizer() reads the vocabulary file on every call (~8 ms): once per process here."""
    from models.tokenizer import load_tokenizer
    return load_tokenizer()


def cache_dir() -> Path:
    return cache_root() / "shards"


@dataclass
class ShardSet:
    plan: ShardPlan
    files: list[ShardFile]
    directory: Path
    weights: str
    texts: tuple[str, ...] = SENTENCES
    seed: int = 0
    keep: int = 64
    results: dict[int, dict[int, dict[str, np.ndarray]]] = field(default_factory=dict)
    _inputs: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def file(self, shard: int) -> ShardFile:
        return self.files[shard]

    def request_inputs(self, q: int) -> dict[str, np.ndarray]:
        """Memoised per request (every shard run of a request asks; tokenising costs ~8-25 ms)."""
        got = self._inputs.get(q)
        if got is None:
            got = self._inputs[q] = self._make_inputs(q)
            while len(self._inputs) > 256:
                del self._inputs[next(iter(self._inputs))]
        return got

    def _make_inputs(self, q: int) -> dict[str, np.ndarray]:
        names = {i.name: i for f in self.files for i in f.inputs}
        b, s = self.plan.batch_size, self.plan.seq_len
        out: dict[str, np.ndarray] = {}
        if "input_ids" in names:
            texts = [self.texts[(q * b + k) % len(self.texts)] for k in range(b)]
            enc = _tokenizer().encode(texts, s)
            out.update({k: np.asarray(v, dtype=np.int64) for k, v in enc.feeds().items()})
        rng = np.random.default_rng([self.seed, q])
        for n, info in names.items():
            if n in out or n.endswith("_in") or n == "attention_mask" and "input_ids" in out:
                continue
            if info.dtype == "float32":
                out[n] = rng.standard_normal(info.shape).astype(np.float32)
            else:
                out[n] = rng.integers(0, 1000, info.shape).astype(np.int64)
        return out

    def text(self, q: int) -> str:
        """The sentence request q carries (batch 1: the q-th of the cycled list)."""
        return self.texts[(q * self.plan.batch_size) % len(self.texts)]

    def embedding(self, q: int) -> np.ndarray | None:
        """Request q's sentence embedding from the browsers' last shard output: mean-pooled over
        the attention mask, L2-normalised (None when the request's outputs were not kept)."""
        from models.reference import mean_pool
        outs = self.results.get(q)
        if not outs:
            return None
        hidden = np.asarray(outs[max(outs)]["hidden"], dtype=np.float64)[:1]
        mask = np.asarray(self.request_inputs(q)["attention_mask"], dtype=np.float64)[:1]
        emb = mean_pool(hidden, mask, normalize=False)[0]
        return emb / np.linalg.norm(emb)   # mean_pool's row-wise norm can differ in the last bit

    def reference_cosines(self) -> dict[int, float]:
        """Kept request -> cosine of its browser embedding against unsharded onnxruntime."""
        from models.reference import reference_embedding
        kept = sorted(self.results)
        texts = [self.text(q) for q in kept]
        ref = reference_embedding(texts, self.plan.model, seq_len=self.plan.seq_len, seed=self.seed) if kept else []
        out = {}
        for q, want in zip(kept, ref):
            got, want = self.embedding(q), np.asarray(want, dtype=np.float64)
            out[q] = float(got @ want / np.linalg.norm(want))
        return out

    def feeds(self, shard: int, q: int, deps: Mapping[int, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        merged: dict[str, np.ndarray] = {}
        for d in sorted(deps):
            merged.update(deps[d])
        return chain_feeds(merged, self.request_inputs(q), [i.name for i in self.file(shard).inputs])

    def finished(self, q: int, outputs: dict[int, dict[str, np.ndarray]]) -> None:
        if len(self.results) < self.keep:
            self.results[q] = outputs


def prepare_shards(plan: ShardPlan, seed: int = 0, texts: tuple[str, ...] | None = None) -> ShardSet:
    """`texts`: the sentences requests carry, cycled (None or empty: SENTENCES; `shardtwin infer` passes
    the user's)."""
    from models.catalogue import get_model
    arch = get_model(plan.model)
    if arch.family not in REAL_FAMILIES:
        raise InputError(f"real execution builds ONNX shards for the {', '.join(REAL_FAMILIES)} families; "
                         f"{plan.model} ({arch.family}) runs in sim only (use shardtwin sim or --mode sim)")
    out = cache_dir()
    files = export_plan_shards(plan.model, [list(s.units) for s in plan.shards], out,
                               batch_size=plan.batch_size, seq_len=plan.seq_len, seed=seed)
    return ShardSet(plan, list(files), out, weights_source(arch, seed), seed=seed,
                    texts=tuple(texts) if texts else SENTENCES)

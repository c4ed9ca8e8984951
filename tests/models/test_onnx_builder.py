"""ONNX shards: sharded chain == full graph == independent numpy forward; real MiniLM embedding."""

import numpy as np
import onnx
import pytest

from models.catalogue import get_model, with_overrides
from models.onnx_builder import build_full_model, build_shard_model, model_units
from models.reference import mean_pool, numpy_forward, reference_embedding, run_shards_locally, session
from models.tokenizer import load_tokenizer
from models.weights import load_weights
from shardtwin.errors import PlanError

SEQ = 24
TEXTS = ["A man is eating food.", "Shards of a model run in several browsers, and some of them crash."]
STANDARD_OPS = {"MatMul", "Add", "Sub", "Mul", "Div", "Sqrt", "Erf", "Tanh", "Sigmoid", "Softmax", "Transpose",
                "Reshape", "Gather", "Conv", "Concat", "Expand", "Cast", "Unsqueeze", "LayerNormalization",
                "Identity", "ReduceMean", "Relu"}


def _cos(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _split(units, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(units[i:i + n])
        i += n
    assert i == len(units)
    return out


@pytest.fixture(scope="module")
def minilm():
    weights = load_weights("all-MiniLM-L6-v2")
    feeds = load_tokenizer().encode(TEXTS, SEQ).feeds()
    full = session(build_full_model("all-MiniLM-L6-v2", weights, len(TEXTS), SEQ)).run(None, feeds)
    return weights, feeds, dict(zip(["hidden", "pooled"], full))


def _shards(weights, plan):
    return [build_shard_model("all-MiniLM-L6-v2", units, weights, len(TEXTS), SEQ) for units in plan]


def _assert_close(got, want):
    assert _cos(got, want) >= 0.99999
    assert float(np.abs(got - want).max()) < 1e-4


@pytest.mark.parametrize("sizes", [(5, 4, 5), (7, 7), (2, 1, 10, 1)])
def test_minilm_sharded_equals_full(minilm, sizes):
    """Layer shards (2 and 3 shards) and attention/feed-forward splits inside a layer."""
    weights, feeds, full = minilm
    plan = _split(model_units("all-MiniLM-L6-v2"), sizes)
    got = run_shards_locally(_shards(weights, plan), feeds)
    assert set(got) == {"hidden", "pooled"}
    _assert_close(got["hidden"], full["hidden"])
    _assert_close(got["pooled"], full["pooled"])


def test_shard_boundary_names(minilm):
    weights, _, _ = minilm
    first, middle, last = _shards(weights, [["embeddings", "encoder.0.attention"],
                                            ["encoder.0.feedforward"], ["pooler"]])
    names = lambda vs: [v.name for v in vs]
    assert names(first.graph.input) == ["input_ids", "token_type_ids", "attention_mask"]
    assert names(first.graph.output) == ["hidden"]
    assert names(middle.graph.input) == ["hidden_in"] and names(middle.graph.output) == ["hidden"]
    assert names(last.graph.output) == ["hidden", "pooled"]
    for m in (first, middle, last):
        onnx.checker.check_model(m)
        assert {n.op_type for n in m.graph.node} <= STANDARD_OPS
        assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)


def test_minilm_onnx_equals_numpy_reference(minilm):
    weights, feeds, full = minilm
    ref = numpy_forward("all-MiniLM-L6-v2", weights, feeds)
    _assert_close(full["hidden"], ref["hidden"])
    _assert_close(full["pooled"], ref["pooled"])


def test_real_embedding_matches_independent_computation(minilm):
    weights, feeds, full = minilm
    onnx_emb = reference_embedding("A man is eating food.", seq_len=SEQ)
    ref = numpy_forward("all-MiniLM-L6-v2", weights, feeds)
    np_emb = mean_pool(ref["hidden"], feeds["attention_mask"])[:1]
    assert onnx_emb.shape == (1, 384) and abs(float(np.linalg.norm(onnx_emb)) - 1) < 1e-5
    assert _cos(onnx_emb, np_emb) > 0.999


def test_published_similarities_sentence_transformers_readme():
    """Published all-MiniLM-L6-v2 similarities (sentence-transformers quickstart): 0.6660, 0.1046, 0.1411."""
    emb = reference_embedding(["The weather is lovely today.", "It's so sunny outside!",
                               "He drove to the stadium."], seq_len=16)
    sim = emb @ emb.T
    assert np.allclose([sim[0, 1], sim[0, 2], sim[1, 2]], [0.6660, 0.1046, 0.1411], atol=6e-4)


def test_bad_unit_lists_are_plan_errors(minilm):
    weights, _, _ = minilm
    with pytest.raises(PlanError, match="not in all-MiniLM-L6-v2"):
        build_shard_model("all-MiniLM-L6-v2", ["encoder.9.attention"], weights)
    with pytest.raises(PlanError, match="contiguous"):
        build_shard_model("all-MiniLM-L6-v2", ["embeddings", "encoder.0.feedforward"], weights)


def _tiny(name, **kw):
    base = dict(hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64)
    return with_overrides(get_model(name), name=f"{name}-tiny", **(base | kw))


TINY = {
    "roberta": dict(vocab_size=100, max_positions=40),
    "distilbert": dict(vocab_size=100, max_positions=40),
    "vit": dict(image_size=32, patch_size=8, num_labels=10),
    "deit": dict(image_size=32, patch_size=8, num_labels=10),
}


def _tiny_feeds(arch, rng):
    if arch.family in ("vit", "deit"):
        return {"pixel_values": rng.standard_normal((2, 3, arch.image_size, arch.image_size)).astype(np.float32)}
    ids = rng.integers(0, arch.vocab_size, (2, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_synthetic_sharded_equals_full_and_numpy(name):
    arch = _tiny(name, **TINY[name])
    weights = load_weights(arch, seed=1)
    feeds = _tiny_feeds(arch, np.random.default_rng(0))
    seq = feeds["input_ids"].shape[1] if "input_ids" in feeds else 0
    full = run_shards_locally([build_full_model(arch, weights, 2, seq)], feeds)
    units = model_units(arch)
    plan = _split(units, (2, 3, len(units) - 5))
    got = run_shards_locally([build_shard_model(arch, u, weights, 2, seq) for u in plan], feeds)
    ref = numpy_forward(arch, weights, feeds)
    for key in full:
        _assert_close(got[key], full[key])
        _assert_close(full[key], ref[key])


def test_whisper_micro_sharded_equals_full():
    """Encoder-decoder boundaries: encoder_hidden travels with hidden through decoder shards."""
    arch = with_overrides(get_model("whisper-tiny"), name="whisper-micro", hidden_size=32, num_heads=4,
                          intermediate_size=64, vocab_size=60, max_positions=16, num_mel_bins=8,
                          max_source_positions=20, encoder_layers=2, decoder_layers=2, num_layers=4)
    weights = load_weights(arch, seed=2)
    rng = np.random.default_rng(0)
    feeds = {"input_features": rng.standard_normal((2, 8, 40)).astype(np.float32),
             "decoder_input_ids": rng.integers(0, 60, (2, 6))}
    full = run_shards_locally([build_full_model(arch, weights, 2, 6)], feeds)
    assert full["logits"].shape == (2, 6, 60)
    units = model_units(arch)
    for sizes in ((3, 3, 9), (1, 5, 4, 5), (7, 2, 6)):
        shards = [build_shard_model(arch, u, weights, 2, 6) for u in _split(units, sizes)]
        got = run_shards_locally(shards, feeds)
        for key in full:
            _assert_close(got[key], full[key])

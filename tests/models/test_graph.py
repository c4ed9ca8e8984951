"""Unit graphs: DAG shape, the unit-name contract, FLOPs and bytes sanity."""

import networkx as nx
import pytest

from models.catalogue import MODELS
from models.graph import KINDS, COMPONENTS, build_graph, effective_seq_len, execution_order, units

OP_CLASSES = {"matmul", "attention", "elementwise", "conv"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_graph_is_a_dag_and_order_is_topological(name):
    g = build_graph(name)
    order = execution_order(g)
    assert nx.is_directed_acyclic_graph(g) and set(order) == set(g.nodes) and len(order) == len(g)
    pos = {n: i for i, n in enumerate(order)}
    assert all(pos[a] < pos[b] for a, b in g.edges)
    for u in units(g):
        assert u.kind in KINDS and u.component in COMPONENTS and u.params >= 0
        f = u.flops(2, 16)
        assert set(f) == OP_CLASSES and all(v >= 0 for v in f.values())
        assert sum(f.values()) > 0 or u.kind == "embeddings"   # a bare gather costs no FLOPs
        assert u.output_bytes(2, 16) > 0 and u.weight_bytes("fp16") * 2 == u.weight_bytes()


def _names(model):
    return list(execution_order(build_graph(model)))


def test_bert_unit_names():
    assert _names("bert-base-uncased") == ["embeddings"] + [
        f"encoder.{i}.{k}" for i in range(12) for k in ("attention", "feedforward")] + ["pooler"]


def test_vit_gpt2_llama_unit_names():
    assert _names("vit")[0] == "embeddings" and _names("vit")[-2:] == ["final_norm", "head"]
    for m, n in (("gpt2", 12), ("llama-7b", 32)):
        assert _names(m) == ["embeddings"] + [f"decoder.{i}.{k}" for i in range(n)
                                              for k in ("attention", "feedforward")] + ["final_norm", "head"]


def test_whisper_unit_names_and_cross_attention_edges():
    names = _names("whisper-tiny")
    assert names[:3] == ["encoder.embeddings", "encoder.0.attention", "encoder.0.feedforward"]
    assert names[9:14] == ["encoder.final_norm", "decoder.embeddings", "decoder.0.attention",
                           "decoder.0.cross_attention", "decoder.0.feedforward"]
    assert names[-2:] == ["decoder.final_norm", "head"]
    g = build_graph("whisper-tiny")
    assert all(g.has_edge("encoder.final_norm", f"decoder.{i}.cross_attention") for i in range(4))
    assert build_graph("t5-small").nodes["head"]["unit"].tied_to == "encoder.embeddings"


def test_wav2vec2_and_clip_unit_names():
    w = _names("wav2vec2-base")
    assert w[:3] == ["feature_extractor", "feature_projection", "encoder.pos_conv"] and w[-1] == "final_norm"
    c = _names("clip")
    for n in ("vision.embeddings", "vision.11.feedforward", "vision.post_norm", "vision.projection",
              "text.embeddings", "text.0.attention", "text.final_norm", "text.projection"):
        assert n in c
    g = build_graph("clip")
    assert c[-1] == "fusion" and set(g.predecessors("fusion")) == {"vision.projection", "text.projection"}
    assert not nx.has_path(g, "vision.embeddings", "text.embeddings")   # parallel towers


def test_gpt2_head_is_tied_but_costed():
    head = build_graph("gpt2").nodes["head"]["unit"]
    assert head.params == 0 and head.tied_params == 50257 * 768 and head.flops(1, 128)["matmul"] > 0


def test_bert_base_about_22_gflops_at_seq_128():
    total = sum(u.total_flops(1, 128) for u in units(build_graph("bert-base-uncased")))
    assert abs(total / 22e9 - 1) <= 0.15
    attn = build_graph("bert").nodes["encoder.0.attention"]["unit"].flops(1, 128)
    assert attn["attention"] > 0 and attn["conv"] == 0


def test_flops_scale_with_batch_and_seq():
    ffn = build_graph("bert").nodes["encoder.0.feedforward"]["unit"]
    assert ffn.total_flops(4, 64) == pytest.approx(4 * ffn.total_flops(1, 64))
    assert ffn.total_flops(1, 256) == pytest.approx(2 * ffn.total_flops(1, 128))
    attn = build_graph("bert").nodes["encoder.0.attention"]["unit"]
    assert attn.flops(1, 256)["attention"] > 3.9 * attn.flops(1, 128)["attention"]   # quadratic


def test_fixed_positions_ignore_seq_len():
    vit = build_graph("vit").nodes["encoder.0.attention"]["unit"]
    assert vit.tokens(5) == 197 and vit.flops(1, 5) == vit.flops(1, 500)
    enc = build_graph("whisper").nodes["encoder.0.feedforward"]["unit"]
    assert enc.tokens(7) == 1500 and enc.output_bytes(1, 7) == 1500 * 384 * 4
    assert build_graph("deit").nodes["embeddings"]["unit"].positions == 198


def test_sane_whole_model_costs():
    def gflops(m, seq=128):
        return sum(u.total_flops(1, seq) for u in units(build_graph(m))) / 1e9
    assert 33 < gflops("vit") < 37            # ViT-B/16: 17.6 GMACs
    assert 7.5 < gflops("resnet-50") < 9       # ResNet-50: 4.1 GMACs
    assert 1600 < gflops("llama-7b") < 1800    # ~2 * 6.7e9 * 128 + attention


def test_effective_seq_len_caps_text_positions():
    assert effective_seq_len("clip", 128) == 77 and effective_seq_len("bert", 4096) == 512
    assert effective_seq_len("whisper", 1000) == 448 and effective_seq_len("bert", 100) == 100


def test_entry_units_report_model_input_bytes():
    g = build_graph("whisper-tiny")
    assert g.nodes["encoder.embeddings"]["unit"].input_bytes(1, 10) == 80 * 3000 * 4
    assert g.nodes["decoder.embeddings"]["unit"].input_bytes(2, 10) == 2 * 10 * 8
    assert build_graph("vit").nodes["embeddings"]["unit"].input_bytes(1, 1) == 3 * 224 * 224 * 4
    assert build_graph("bert").nodes["encoder.0.attention"]["unit"].input_bytes(1, 128) == 0

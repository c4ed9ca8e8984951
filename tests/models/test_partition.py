"""Partitioners: invariants over models x shard types x feasible shard counts, plus rules."""

import json

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from models.catalogue import MODELS
from models.graph import build_graph, execution_order, total_params, units
from models.partition import ShardPlan, balanced_cuts, make_plan, max_shards
from shardtwin.errors import PlanError
from shardtwin.vocab import ShardType


@st.composite
def feasible_plans(draw):
    model = draw(st.sampled_from(sorted(MODELS)))
    shard_type = draw(st.sampled_from(list(ShardType)))
    limit = max_shards(model, shard_type)
    if limit == 0:                       # attention_feedforward on a non-transformer
        shard_type, limit = ShardType.LAYER, max_shards(model, ShardType.LAYER)
    n = draw(st.one_of(st.integers(1, min(limit, 8)), st.integers(1, limit)))
    return model, n, shard_type, draw(st.integers(1, 4)), draw(st.integers(1, 300))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feasible_plans())
def test_plan_invariants(args):
    model, n, shard_type, batch, seq = args
    plan = make_plan(model, n, shard_type, batch_size=batch, seq_len=seq)
    g = build_graph(model)
    order = execution_order(g)
    assert len(plan.shards) == n and [s.index for s in plan.shards] == list(range(n))
    # every unit in exactly one shard, contiguous runs of the execution order
    assert [u for s in plan.shards for u in s.units] == list(order)
    # totals preserved
    assert plan.total_params == sum(s.params for s in plan.shards) == total_params(model)
    model_flops = sum(u.total_flops(batch, plan.seq_len) for u in units(g)) / 1e9
    assert sum(s.gflops for s in plan.shards) == pytest.approx(model_flops, rel=1e-9)
    assert plan.total_gflops == pytest.approx(model_flops, rel=1e-9)
    # dependencies: acyclic, only on earlier shards, match the unit data flow
    dg = plan.dependency_graph()
    assert nx.is_directed_acyclic_graph(dg) and all(d < s.index for s in plan.shards for d in s.deps)
    owner = {u: s.index for s in plan.shards for u in s.units}
    assert {(owner[a], owner[b]) for a, b in g.edges if owner[a] != owner[b]} == set(dg.edges)
    assert len({s.name for s in plan.shards}) == n and plan.sources() and plan.sinks()
    assert all(s.input_bytes > 0 and s.output_bytes > 0 for s in plan.shards)
    assert ShardPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_layer_plan_of_bert_is_balanced_and_chained():
    plan = make_plan("bert-base-uncased", 3, "layer")
    loads = [s.gflops for s in plan.shards]
    assert max(loads) / (sum(loads) / 3) <= 1.25
    assert [s.deps for s in plan.shards] == [(), (0,), (1,)]
    assert plan.topo_order() == (0, 1, 2) and plan.sources() == (0,) and plan.sinks() == (2,)
    assert [s.name for s in plan.shards] == ["embedding+layers_0_3", "layers_4_7", "layers_8_11+pooler"]
    assert abs(plan.total_params / 110e6 - 1) < 0.01


def test_layer_cuts_fall_between_whole_layers():
    for s in make_plan("gpt2", 5, "layer").shards:
        assert not s.units[0].endswith("feedforward") and not s.units[-1].endswith(".attention")


def test_attention_feedforward_may_split_inside_a_layer():
    plan = make_plan("bert-base-uncased", 24, "attention_feedforward")
    assert any(s.units == ("encoder.5.feedforward",) for s in plan.shards)
    whisper = make_plan("whisper-tiny", max_shards("whisper-tiny", "attention_feedforward"), "attention_feedforward")
    # self- and cross-attention of a decoder layer stay together (a boundary is attention|feed-forward)
    assert ("decoder.0.attention", "decoder.0.cross_attention") in [s.units for s in whisper.shards]


def test_clip_component_plan_has_parallel_towers():
    plan = make_plan("clip-vit-base-patch32", 3, "component")
    assert [s.name for s in plan.shards] == ["vision_tower", "text_tower", "fusion"]
    assert plan.sources() == (0, 1) and plan.shards[2].deps == (0, 1) and plan.sinks() == (2,)
    assert [s.specialization for s in plan.shards[:2]] == ["vision", "text"]
    five = make_plan("clip-vit-base-patch32", 5, "component")
    assert five.shards[-1].name == "fusion" and len(five.sources()) == 2


def test_component_merges_and_splits():
    assert [s.name for s in make_plan("whisper-tiny", 2, "component").shards] == ["encoder", "decoder+head"]
    assert [s.name for s in make_plan("bert-base-uncased", 3, "component").shards] == ["embedding", "encoder", "head"]
    five = make_plan("bert-base-uncased", 5, "component")
    assert [s.name for s in five.shards][1:4] == ["encoder_layers_0_3", "encoder_layers_4_7", "encoder_layers_8_11"]
    assert make_plan("bert-base-uncased", 1, "component").shards[0].specialization == "full"


def test_encoder_decoder_decoder_shards_depend_on_the_encoder_output():
    plan = make_plan("whisper-tiny", 4, "component")
    enc = plan.shard_of("encoder.final_norm")
    assert all(enc in plan.shards[plan.shard_of(f"decoder.{i}.cross_attention")].deps or
               plan.shard_of(f"decoder.{i}.cross_attention") == enc for i in range(4))


def test_tied_weights_are_owned_once_and_reported_where_used():
    plan = make_plan("t5-small", 3, "layer")
    head = plan.shards[plan.shard_of("head")]
    assert plan.shard_of("encoder.embeddings") != head.index and head.tied_weight_bytes == 32128 * 512 * 4


@pytest.mark.parametrize("args, words", [
    (("whisper-tiny", 40, "layer"), ["whisper-tiny", "40", "at most 13"]),
    (("resnet-50", 2, "attention_feedforward"), ["not a transformer", "use layer or component"]),
    (("bert-base-uncased", 0, "layer"), ["at least 1"]),
    (("bert-base-uncased", 15, "component"), ["at most 14"]),
    (("bert-base-uncased", 2, "layer", 0), ["at least 1"]),
])
def test_impossible_plans_raise_one_line_plan_errors(args, words):
    with pytest.raises(PlanError) as err:
        make_plan(*args)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words)
    assert err.value.exit_code == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=1, max_size=30), st.data())
def test_balanced_cuts_are_optimal_contiguous_partitions(costs, data):
    n = data.draw(st.integers(1, len(costs)))
    cuts = balanced_cuts(costs, n)
    assert cuts[0] == 0 and cuts[-1] == len(costs) and len(cuts) == n + 1
    assert all(a < b for a, b in zip(cuts, cuts[1:]))
    worst = max(sum(costs[a:b]) for a, b in zip(cuts, cuts[1:]))
    # no partition into n non-empty runs can have a smaller maximum: greedy check with that bound
    bound = worst - 1e-6
    pieces, acc = 1, 0.0
    feasible = all(c <= bound for c in costs)
    for c in costs:
        if acc + c > bound:
            pieces, acc = pieces + 1, c
        else:
            acc += c
    assert not (feasible and pieces <= n)

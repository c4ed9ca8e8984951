"""Catalogue: published parameter counts, aliases, unknown names."""

import pytest

from models.catalogue import MODELS, ArchConfig, get_model, list_models, with_overrides
from models.graph import total_params
from shardtwin.errors import UnknownNameError
from shardtwin.vocab import ModelType

DESIGN_MODELS = ("bert-base-uncased", "roberta-base", "distilbert-base-uncased", "gpt2", "t5-small",
                 "all-MiniLM-L6-v2", "vit-base-patch16-224", "deit-base-distilled-patch16-224",
                 "whisper-tiny", "wav2vec2-base", "clip-vit-base-patch32", "llama-7b", "llama-13b",
                 "llama-70b")


def test_every_design_model_is_catalogued():
    assert set(DESIGN_MODELS) <= set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unit_graph_params_within_2_percent_of_published(name):
    arch = MODELS[name]
    assert arch.published_params > 0 and arch.source
    assert abs(total_params(arch) / arch.published_params - 1) <= 0.02


@pytest.mark.parametrize("name, millions", [
    ("bert-base-uncased", 110), ("all-MiniLM-L6-v2", 22.7), ("vit-base-patch16-224", 86),
    ("clip-vit-base-patch32", 151), ("llama-7b", 6738), ("gpt2", 124), ("wav2vec2-base", 95),
])
def test_headline_sizes(name, millions):
    assert abs(total_params(name) / (millions * 1e6) - 1) <= 0.02


def test_whisper_tiny_is_the_hf_count_the_paper_rounds_to_39m():
    assert total_params("whisper-tiny") == 37_760_640


@pytest.mark.parametrize("alias, name", [
    ("bert", "bert-base-uncased"), ("whisper", "whisper-tiny"), ("vit", "vit-base-patch16-224"),
    ("clip", "clip-vit-base-patch32"), ("llama", "llama-7b"), ("gpt", "gpt2"), ("t5", "t5-small"),
    ("minilm", "all-MiniLM-L6-v2"), ("BERT-Base-Uncased", "bert-base-uncased"), (" deit ", "deit-base-distilled-patch16-224"),
])
def test_aliases(alias, name):
    assert get_model(alias).name == name


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        get_model("gpt-5")
    msg = str(err.value)
    assert "gpt-5" in msg and "bert-base-uncased" in msg and "whisper-tiny" in msg and "\n" not in msg
    assert err.value.exit_code == 2


def test_list_models_by_type():
    assert {a.name for a in list_models("audio")} == {"whisper-tiny", "wav2vec2-base"}
    assert [a.name for a in list_models(ModelType.MULTIMODAL)] == ["clip-vit-base-patch32"]
    assert len(list_models()) == len(MODELS)
    with pytest.raises(UnknownNameError):
        list_models("smell")


def test_published_config_numbers():
    w, c, l70 = get_model("whisper-tiny"), get_model("clip"), get_model("llama-70b")
    assert (w.hidden_size, w.encoder_layers, w.decoder_layers, w.num_heads, w.intermediate_size) == (384, 4, 4, 6, 1536)
    assert (w.num_mel_bins, w.max_source_positions, w.max_positions, w.vocab_size) == (80, 1500, 448, 51865)
    assert isinstance(c.vision_tower, ArchConfig) and c.vision_tower.patch_size == 32
    assert (c.text_tower.hidden_size, c.text_tower.num_heads, c.text_tower.max_positions, c.projection_dim) == (512, 8, 77, 512)
    assert (l70.hidden_size, l70.num_layers, l70.num_kv_heads, l70.intermediate_size) == (8192, 80, 8, 28672)
    assert get_model("all-MiniLM-L6-v2").family == "bert"
    assert get_model("gpt2").tie_word_embeddings and not get_model("llama-7b").tie_word_embeddings


def test_overrides_recompute_derived_fields():
    tiny = with_overrides(get_model("bert"), name="bert-tiny", hidden_size=32, num_heads=4)
    assert (tiny.head_dim, tiny.num_kv_heads) == (8, 4)
    assert with_overrides(get_model("llama-70b"), hidden_size=64, num_heads=8).num_kv_heads == 8

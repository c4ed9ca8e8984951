"""`shardtwin models` and `shardtwin plan` through the real dispatcher."""

import json

from experiments.cli import main


def test_models_type_audio_lists_whisper(capsys):
    assert main(["models", "--type", "audio"]) == 0
    out = capsys.readouterr().out
    assert "whisper-tiny" in out and "wav2vec2-base" in out and "bert-base-uncased" not in out


def test_models_names_one_per_line(capsys):
    assert main(["models", "--type", "text", "--names"]) == 0
    names = capsys.readouterr().out.split()
    assert "bert-base-uncased" in names and "llama-70b" in names and "vit-base-patch16-224" not in names


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "type", "params", "published_params"} <= set(rows[0])


def test_plan_json_bert_three_layer_shards(capsys):
    assert main(["plan", "--model", "bert-base-uncased", "--shards", "3", "--type", "layer", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["shards"]) == 3
    assert abs(sum(s["params"] for s in plan["shards"]) / 110e6 - 1) < 0.01


def test_plan_table(capsys):
    assert main(["plan", "--model", "clip", "--shards", "3", "--type", "component"]) == 0
    out = capsys.readouterr().out
    assert "vision_tower" in out and "text_tower" in out and "fusion" in out and "total" in out


def test_impossible_plan_is_one_line_and_nonzero(capsys):
    assert main(["plan", "--model", "whisper-tiny", "--shards", "40", "--type", "layer"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at most" in err


def test_unknown_model_is_exit_2(capsys):
    assert main(["plan", "--model", "nope", "--shards", "2"]) == 2
    assert "known:" in capsys.readouterr().err

"""Shard export: files + manifest, cache reuse, and the exported files chain like the full graph."""

import json

import numpy as np

from models.catalogue import get_model, with_overrides
from models.onnx_builder import build_full_model, model_units
from models.onnx_export import export_plan_shards
from models.reference import run_shards_locally
from models.weights import load_weights

ARCH = with_overrides(get_model("bert-base-uncased"), name="bert-export-tiny", hidden_size=32, num_layers=2,
                      num_heads=4, intermediate_size=64, vocab_size=100, max_positions=32)


def test_export_writes_manifest_and_reuses_cached_files(tmp_path):
    units = model_units(ARCH)
    plan = [units[:3], units[3:]]
    files = export_plan_shards(ARCH, plan, tmp_path, batch_size=1, seq_len=8, seed=5)
    assert [f.index for f in files] == [0, 1]
    assert [i.name for i in files[1].inputs] == ["hidden_in", "attention_mask"]
    assert [o.name for o in files[1].outputs] == ["hidden", "pooled"]
    assert files[0].outputs[0].shape == (1, 8, 32) and files[0].weights_source == "synthetic:seed=5"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["sha256"] for s in manifest["shards"]] == [f.sha256 for f in files]
    mtimes = [(tmp_path / f.path).stat().st_mtime_ns for f in files]
    again = export_plan_shards(ARCH, plan, tmp_path, batch_size=1, seq_len=8, seed=5)
    assert again == files and mtimes == [(tmp_path / f.path).stat().st_mtime_ns for f in files]
    other = export_plan_shards(ARCH, plan, tmp_path, batch_size=1, seq_len=8, seed=6)
    assert other[0].path != files[0].path and other[0].sha256 != files[0].sha256
    # switching back to the first plan reuses its files (cache is per file, not per manifest)
    assert export_plan_shards(ARCH, plan, tmp_path, batch_size=1, seq_len=8, seed=5) == files
    assert mtimes == [(tmp_path / f.path).stat().st_mtime_ns for f in files]

    ids = np.arange(8, dtype=np.int64)[None] + 3
    feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
    got = run_shards_locally([f.path for f in files], feeds)
    want = run_shards_locally([build_full_model(ARCH, load_weights(ARCH, 5), 1, 8)], feeds)
    assert np.abs(got["hidden"] - want["hidden"]).max() < 1e-5

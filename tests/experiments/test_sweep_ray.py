"""A sweep on a local Ray cluster gives the same points, in the same order, as the local pool."""

from __future__ import annotations

import json

import pytest

from experiments.cli import main

ray = pytest.importorskip("ray", reason="ray is the optional extra shardtwin[ray] (./dev setup installs it)")

SPEC = """
base:
  model: all-MiniLM-L6-v2
  shards: 2
  fault_tolerance_level: medium
  workload: {iterations: 20, seq_len: 32}
  faults: [{type: browser_crash, at_ms: 300, browser: chromium-0}]
grid:
  fault_tolerance_level: [low, medium, critical]
repeats: 2
"""


def _points(capsys, tmp_path, *extra):
    rc = main(["sweep", str(tmp_path / "spec.yaml"), "--db", str(tmp_path / f"s{len(extra)}.duckdb"),
               "--events", "none", "--json", "--quiet", *extra])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("run_id", "test_timestamp", "sweep_id")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(out["points"])


def test_ray_sweep_equals_local_pool(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text(SPEC)
    local = _points(capsys, tmp_path, "--workers", "2")
    on_ray = _points(capsys, tmp_path, "--workers", "2", "--ray")
    assert len(local) == 6
    assert on_ray == local

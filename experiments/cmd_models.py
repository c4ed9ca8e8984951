"""`shardtwin models` (the catalogue) and `shardtwin plan` (how a model is cut into shards).

Rules:
- Both commands are pure look-ups: no IO besides stdout; bad input raises a one-line
  ShardtwinError (exit 2) through the dispatcher in experiments/cli.py.
- `models --names` prints one name per line (for shell loops, like the seed's
  `for model in $(... --list-models text)`); `--json` prints machine-readable output.
- `plan --json` prints ShardPlan.to_dict() (lossless; ShardPlan.from_dict reads it back).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from experiments.runner import text_table
from models.catalogue import ArchConfig, list_models
from models.graph import total_params
from models.partition import ShardPlan, ShardSpec, make_plan
from shardtwin.vocab import ModelType, ShardType


def register(subparsers: Any) -> None:
    m = subparsers.add_parser("models", help="list the model catalogue",
                              description="List the models shardtwin can shard (published configs).")
    m.add_argument("--type", dest="model_type", choices=[t.value for t in ModelType], help="only this model type")
    m.add_argument("--names", action="store_true", help="names only, one per line")
    m.add_argument("--json", action="store_true", help="JSON list of configs")
    m.set_defaults(func=cmd_models)

    p = subparsers.add_parser("plan", help="show how a model is cut into shards",
                              description="Cut a model into shards and show each shard's cost.")
    p.add_argument("--model", required=True, help="model name or alias (see `shardtwin models`)")
    p.add_argument("--shards", type=int, required=True, help="number of shards")
    p.add_argument("--type", dest="shard_type", default=ShardType.LAYER.value,
                   choices=[t.value for t in ShardType], help="shard type (default layer)")
    p.add_argument("--batch-size", type=int, default=1, help="requests per batch (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens / frames per request (default 128)")
    p.add_argument("--json", action="store_true", help="print ShardPlan.to_dict() as JSON")
    p.set_defaults(func=cmd_plan)


def _arch_row(a: ArchConfig) -> dict[str, Any]:
    return {"name": a.name, "type": str(a.model_type), "family": a.family, "layers": a.num_layers,
            "hidden": a.hidden_size, "params": total_params(a), "published_params": a.published_params,
            "source": a.source}


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    return "\n".join(text_table(header, rows, right, rstrip=True))


def cmd_models(args: argparse.Namespace) -> int:
    archs = list_models(args.model_type)
    if args.names:
        print("\n".join(a.name for a in archs))
    elif args.json:
        print(json.dumps([_arch_row(a) for a in archs], indent=2))
    else:
        rows = [[r["name"], r["type"], r["family"], str(r["layers"]), str(r["hidden"]),
                 f"{r['params'] / 1e6:,.1f}"] for r in map(_arch_row, archs)]
        print(_table(["model", "type", "family", "layers", "hidden", "params M"], rows, {3, 4, 5}))
    return 0


def _units_summary(s: ShardSpec, limit: int = 40) -> str:
    text = f"{len(s.units)}: {s.units[0]}" + (f" .. {s.units[-1]}" if len(s.units) > 1 else "")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def render_plan(plan: ShardPlan) -> str:
    """The human-readable plan: one aligned row per shard, then totals."""
    head = (f"{plan.model} ({plan.model_type}) cut into {len(plan.shards)} shard(s) by {plan.shard_type}; "
            f"batch {plan.batch_size}, seq {plan.seq_len}")
    rows = [[str(s.index), s.name, _units_summary(s), f"{s.params / 1e6:,.2f}", f"{s.weight_mb:,.1f}",
             f"{s.gflops:,.3f}", f"{s.input_bytes / 1e3:,.1f}", f"{s.output_bytes / 1e3:,.1f}",
             ",".join(map(str, s.deps)) or "-", s.specialization] for s in plan.shards]
    rows.append(["", "total", str(sum(len(s.units) for s in plan.shards)), f"{plan.total_params / 1e6:,.2f}",
                 f"{sum(s.weight_mb for s in plan.shards):,.1f}", f"{plan.total_gflops:,.3f}", "", "", "", ""])
    header = ["shard", "name", "units", "params M", "weight MB", "GFLOPs", "in KB", "out KB", "deps", "hint"]
    return head + "\n" + _table(header, rows, {0, 3, 4, 5, 6, 7})


def cmd_plan(args: argparse.Namespace) -> int:
    plan = make_plan(args.model, args.shards, args.shard_type, batch_size=args.batch_size, seq_len=args.seq_len)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render_plan(plan))
    return 0

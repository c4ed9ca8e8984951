"""`shardtwin scenario validate|show|new`: check, inspect and write scenario files.

Rules: validate prints `ok <hash> <summary>` (exit 0) or one error line (exit 2);
show prints the compiled input events (a table, or JSON lines with --json);
new writes a scenario file from the shared scenario flags (experiments/flags.py).
"""

from __future__ import annotations

import argparse
import json
import sys

from events.scenario import compile_scenario, dump_scenario, load_scenario, scenario_hash
from events.schema import Event
from experiments.flags import add_scenario_flags, scenario_from_args


def _validate(args: argparse.Namespace) -> int:
    s = load_scenario(args.file)
    compile_scenario(s)  # compiling is part of being valid
    print(f"ok {scenario_hash(s)} {s.summary()}")
    return 0


def _event_dict(e: Event) -> dict:
    return {"seq": e.seq, "t_ms": e.t_ms, "kind": str(e.kind), "request_id": e.request_id, "shard": e.shard,
            "browser": e.browser, "attempt": e.attempt, "value": e.value, "detail": e.details() or None}


def _cell(v: object) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _show(args: argparse.Namespace) -> int:
    events = compile_scenario(load_scenario(args.file))
    out = sys.stdout
    if args.json:
        for e in events:
            out.write(json.dumps(_event_dict(e), sort_keys=True) + "\n")
        return 0
    out.write(f"{'seq':>5} {'t_ms':>12} {'kind':<18} {'req':>5} {'shard':>5} {'browser':<12} {'value':>8}  detail\n")
    for e in events:
        d = e.details()
        if "scenario" in d:  # the whole scenario is too long for a table row
            d = {"hash": d.get("hash"), "name": d.get("name")}
        detail = json.dumps(d, sort_keys=True, separators=(",", ":")) if d else "-"
        out.write(f"{e.seq:>5} {_cell(e.t_ms):>12} {str(e.kind):<18} {_cell(e.request_id):>5} {_cell(e.shard):>5} "
                  f"{_cell(e.browser):<12} {_cell(e.value):>8}  {detail}\n")
    return 0


def _new(args: argparse.Namespace) -> int:
    s = scenario_from_args(args)
    path = dump_scenario(s, args.output)
    print(f"wrote {path} {scenario_hash(s)} {s.summary()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scenario", help="validate, show or write scenario files")
    sub = p.add_subparsers(dest="scenario_command", metavar="ACTION", parser_class=type(p))
    sub.required = True
    v = sub.add_parser("validate", help="check a scenario file; prints ok <hash> <summary>")
    v.add_argument("file", metavar="FILE")
    v.set_defaults(func=_validate)
    s = sub.add_parser("show", help="print the compiled input events of a scenario file")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    s.set_defaults(func=_show)
    n = sub.add_parser("new", help="write a scenario file from flags")
    add_scenario_flags(n)
    n.add_argument("-o", "--output", required=True, metavar="FILE", help=".yaml/.yml or .json")
    n.set_defaults(func=_new)

"""`shardtwin demo`: the main job in one command, into the default embedded DuckDB file.

It predicts a browser crash in the simulator, replays the same scenario in real Chromium
and Firefox (when installed) running all-MiniLM-L6-v2 shards with real weights, and
prints prediction next to reality from the stored events.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from events.scenario import parse_scenario
from events.store import DEFAULT_DB_PATH

DEMO = {
    "name": "demo: firefox crashes mid-run, progressive recovery",
    "model": "all-MiniLM-L6-v2", "shards": 2, "shard_type": "layer", "browsers": ["chromium", "firefox"],
    "backend": "wasm", "fault_tolerance_level": "medium",
    "tolerance": {"detector_timeout_ms": 5000.0},
    "workload": {"kind": "iterations", "iterations": 60, "batch_size": 1, "seq_len": 32},
    "faults": [{"type": "browser_crash", "at_ms": 500.0, "browser": "firefox"}],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="predict a crash in sim, replay it in real browsers, compare")
    p.add_argument("--db", default=str(DEFAULT_DB_PATH), metavar="PATH")
    p.add_argument("--sim-only", action="store_true", help="skip the real browsers")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from experiments.cmd_sim import simulate_and_store
    from experiments.runner import summary_lines
    from sim.profile import DEFAULT_PROFILE
    scenario = parse_scenario(DEMO)
    out = sys.stdout.write
    out(f"scenario: {DEMO['name']} (hash in results)\n\n")
    sim = simulate_and_store(scenario, DEFAULT_PROFILE, args.db)
    out("\n".join(summary_lines(sim)) + "\n\n")
    have = shutil.which("chromium") and shutil.which("firefox-esr")
    if args.sim_only or not have:
        out("real run skipped: " + ("--sim-only" if args.sim_only else "chromium/firefox-esr not installed") + "\n")
        return 0
    from experiments.cmd_real import real_and_store
    real = real_and_store(scenario, args.db, timeout_s=300.0)
    out("\n".join(summary_lines(real)) + "\n\n")
    _compare(sim, real, out)
    out(f"\nboth runs are in {args.db} (shardtwin db runs --db {args.db})\n")
    out("the simulator used its built-in, uncalibrated profile: `shardtwin calibrate --collect` fits one to "
        "this machine, `shardtwin validate --profile FILE` checks it\n")
    return 0


def _compare(sim: dict, real: dict, out) -> None:
    from experiments.runner import fmt_num

    def g(d: dict, *path):
        for k in path:
            d = (d or {}).get(k) if isinstance(d, dict) else None
        return d
    rows = [("median latency ms", ("latency_ms", "p50")), ("p95 latency ms", ("latency_ms", "p95")),
            ("completed", ("requests", "completed")), ("failed", ("requests", "failed")),
            ("recovery ms", ("recovery_metrics", "recovery_time_ms")),
            ("recovery success", ("recovery_metrics", "recovery_success_rate"))]
    out(f"{'':22}{'sim (predicted)':>18}{'real (measured)':>18}\n")
    for label, path in rows:
        a, b = g(sim, *path), g(real, *path)
        out(f"{label:22}{fmt_num(a):>18}{fmt_num(b):>18}\n")

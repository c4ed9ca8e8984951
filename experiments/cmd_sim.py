"""`shardtwin sim` (one scenario in the simulator) and `shardtwin sweep` (many)."""

from __future__ import annotations

import argparse

from events.store import Store
from experiments.flags import add_scenario_flags, scenario_from_args
from experiments.runner import add_output_flags, emit_result, run_sim_stored
from sim.profile import load_profile


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="run one scenario in the simulator (predicted, source=sim)")
    add_scenario_flags(p)
    p.add_argument("--profile", metavar="FILE", help="calibration profile JSON (default: built-in, uncalibrated)")
    add_output_flags(p)
    p.set_defaults(func=cmd_sim)
    from experiments.sweep import register as register_sweep
    register_sweep(sub)


def simulate_and_store(scenario, profile, db: str, seed: int | None = None, placement: dict | None = None) -> dict:
    """Run in the simulator, store the run (one transaction), return the result JSON.
    `seed`: the simulator's seed instead of the scenario's (same scenario, another sample);
    `placement`: a real run's placement record to decide from (its twin)."""
    with Store(db) as store:
        stored = run_sim_stored(store, scenario, profile, seed=seed, placement=placement)
        stored.finish()
    return stored.result


def cmd_sim(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args)
    profile = load_profile(args.profile)
    res = simulate_and_store(scenario, profile, args.db)
    emit_result(args, res)
    return 0

"""`shardtwin real` (a scenario in real browsers), `shardtwin replay`, `shardtwin infer`.

Remote browsers (real/remote.py): `--browsers chromium,remote` or `--remote-browsers N` make slots
that launch nothing and print a join URL; `--bind` makes the worker channel reachable from
another network; `--playwright-endpoint` launches the local slots through a Playwright server.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from events.store import Store
from experiments.flags import add_scenario_flags, scenario_from_args
from experiments.runner import add_output_flags, emit_result, real_extras, run_real_stored, stop_if_signalled
from shardtwin.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("real", help="run one scenario in real headless browsers (source=real)")
    add_scenario_flags(p)
    _real_flags(p)
    add_output_flags(p)
    p.set_defaults(func=cmd_real)

    rp = sub.add_parser("replay", help="rerun a stored run's scenario (or a scenario file) in sim, real or both")
    rp.add_argument("target", metavar="RUN_ID|SCENARIO_FILE")
    rp.add_argument("--mode", choices=["real", "sim", "both"], default="both")
    rp.add_argument("--profile", metavar="FILE")
    _real_flags(rp)
    add_output_flags(rp)
    rp.set_defaults(func=cmd_replay)

    ip = sub.add_parser("infer", help="sentence embeddings computed by sharded browsers, checked against onnxruntime")
    ip.add_argument("--model", default="all-MiniLM-L6-v2")
    ip.add_argument("--text", action="append", required=True, help="a sentence (repeat for more)")
    ip.add_argument("--shards", type=int, default=2)
    ip.add_argument("--type", dest="shard_type", default="layer")
    ip.add_argument("--browsers", default="chromium,firefox")
    ip.add_argument("--backend", default="wasm")
    ip.add_argument("--seq-len", type=int, default=32)
    ip.add_argument("--json", action="store_true")
    _real_flags(ip, backend=False)
    ip.set_defaults(func=cmd_infer)


def _real_flags(p: argparse.ArgumentParser, backend: bool = True) -> None:
    p.add_argument("--headed", action="store_true", help="show the browser windows")
    p.add_argument("--launcher", choices=["auto", "playwright", "process"], default="auto")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="whole-run limit")
    g = p.add_argument_group("remote browsers")
    g.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                   help="also serve the worker channel on ADDRESS (default loopback only; a secret is always required)")
    g.add_argument("--public-host", metavar="HOST", help="host named in join URLs (default: the --bind address)")
    g.add_argument("--remote-browsers", type=int, default=0, metavar="N",
                   help="the last N browsers of the list are remote: print a join URL for each and wait "
                        "(or name them in --browsers: chromium,remote,remote:firefox)")
    g.add_argument("--join-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long a remote slot waits for a page to (re)join before it counts as exited")
    g.add_argument("--playwright-endpoint", metavar="WS_URL",
                   help="launch the local browsers through playwright.<kind>.connect(WS_URL) (a Playwright "
                        "launch-server / run-server elsewhere) instead of on this machine")


def split_remote_browsers(args: argparse.Namespace) -> tuple[int, ...]:
    """Rewrites args.browsers' `remote[:KIND]` entries to kinds; returns their indices."""
    from real.remote import split_browser_spec
    if not getattr(args, "browsers", None):
        return ()
    kinds, remote = split_browser_spec([b.strip() for b in args.browsers.split(",") if b.strip()])
    args.browsers = ",".join(kinds)
    return remote


def remote_options(args: argparse.Namespace, scenario, named: tuple[int, ...] = ()):
    """RemoteOptions from the flags (warns once on stderr when --bind is not loopback)."""
    from real.remote import RemoteOptions, bind_warning, last_slots
    if named and args.remote_browsers:
        raise InputError("name remote slots in --browsers or give --remote-browsers, not both")
    slots = named or last_slots(len(scenario.browser_list()), args.remote_browsers)
    if (warning := bind_warning(args.bind)) is not None:
        sys.stderr.write(warning + "\n")
    if slots and args.playwright_endpoint is None and args.bind == "127.0.0.1" and not args.public_host:
        sys.stderr.write("shardtwin: remote slots with --bind 127.0.0.1: their join URLs work only on this machine "
                         "or through a port-forward (ssh -L PORT:127.0.0.1:PORT)\n")
    return RemoteOptions(bind=args.bind, public_host=args.public_host, remote_slots=slots,
                         join_timeout_s=args.join_timeout, playwright_endpoint=args.playwright_endpoint)


def real_and_store(scenario, db: str, headed=False, launcher="auto", timeout_s=600.0, remote=None,
                   profile=None, stop_on_signal: bool = True) -> dict:
    """`profile` configures the run's placement as the simulator's (None: sim.profile.DEFAULT_PROFILE).
    A run ended by Ctrl-C / SIGTERM is stored, then ends the command (stop_on_signal; `shardtwin
    real` prints the run's result first)."""
    from sim.profile import DEFAULT_PROFILE
    with Store(db) as store:
        stored = run_real_stored(store, scenario, extra=lambda run: {**real_extras(run, scenario),
                                                                     **_remote_extra(run, remote)},
                                 headed=headed, launcher=launcher, timeout_s=timeout_s, remote=remote,
                                 profile=profile if profile is not None else DEFAULT_PROFILE)
        stored.finish()
    if stop_on_signal:
        stop_if_signalled(stored.result)
    return stored.result


def _remote_extra(run, remote) -> dict:
    if remote is None or not (remote.remote_slots or remote.playwright_endpoint or remote.bind != "127.0.0.1"):
        return {}
    return {"remote": {"bind": remote.bind, "playwright_endpoint": remote.playwright_endpoint,
                       "joins": [{k: v for k, v in j.items()} for j in (run.joins or [])]}}


def cmd_real(args: argparse.Namespace) -> int:
    named = split_remote_browsers(args)
    scenario = scenario_from_args(args)
    remote = remote_options(args, scenario, named)
    res = real_and_store(scenario, args.db, args.headed, args.launcher, args.timeout, remote, stop_on_signal=False)
    emit_result(args, res)
    stop_if_signalled(res)      # after its result is out: exit 130 / 143 as every command does
    return 0 if res["requests"]["lost"] == 0 else 1


def cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path
    from events.scenario import load_scenario
    if Path(args.target).is_file():
        scenario = load_scenario(args.target)
    else:
        with Store(args.db) as store:
            scenario = store.load_scenario(store.run(args.target).scenario_hash)
    results = []
    if args.mode in ("sim", "both"):
        from experiments.cmd_sim import simulate_and_store
        from sim.profile import load_profile
        results.append(simulate_and_store(scenario, load_profile(args.profile), args.db))
    if args.mode in ("real", "both"):
        results.append(real_and_store(scenario, args.db, args.headed, args.launcher, args.timeout,
                                      remote_options(args, scenario)))
    for res in results:
        emit_result(args, res)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from events.scenario import parse_scenario
    from models.reference import reference_embedding
    from real.run import run_real
    from sim.profile import DEFAULT_PROFILE
    named = split_remote_browsers(args)
    browsers = [b.strip() for b in args.browsers.split(",") if b.strip()]
    scenario = parse_scenario({
        "model": args.model, "shards": args.shards, "shard_type": args.shard_type, "browsers": browsers,
        "backend": args.backend, "workload": {"kind": "iterations", "iterations": len(args.text),
                                              "batch_size": 1, "seq_len": args.seq_len}})
    run = run_real(scenario, headed=args.headed, launcher=args.launcher, timeout_s=args.timeout,
                   remote=remote_options(args, scenario, named), profile=DEFAULT_PROFILE, texts=tuple(args.text))
    ref = reference_embedding(list(args.text), args.model, seq_len=args.seq_len)
    out = []
    used = _backends_used(run, args.backend)
    for i, text in enumerate(args.text):
        got = _embedding(run, i, args.seq_len)
        if got is None:
            raise InputError(f"request {i} ({text!r}) did not complete in the browsers; see the run's events")
        want = np.asarray(ref[i], dtype=np.float64)
        cos = float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want)))
        out.append({"text": text, "embedding": [round(float(x), 7) for x in got], "cosine_vs_reference": cos,
                    "max_abs_error": float(np.max(np.abs(got - want))), "weights": run.shards.weights,
                    "browsers": browsers, "backend": args.backend, "backend_used": used})
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for o in out:
            sys.stdout.write(f"{o['text']!r}: dim {len(o['embedding'])}, cosine vs onnxruntime "
                             f"{o['cosine_vs_reference']:.8f}, max abs err {o['max_abs_error']:.2e}, "
                             f"ran on {', '.join(f'{b}={k}' for b, k in o['backend_used'].items())}\n")
    return 0 if all(o["cosine_vs_reference"] >= 0.99999 for o in out) else 1


def _backends_used(run, requested: str) -> dict[str, str]:
    """browser id -> the backend its shards really ran on (a BACKEND_FALLBACK event says otherwise)."""
    from events.schema import EventKind
    used = {e.browser: requested for e in run.log.events if e.kind == EventKind.SHARD_COMPLETED}
    for e in run.log.events:
        if e.kind == EventKind.BACKEND_FALLBACK and e.browser in used:
            used[e.browser] = e.details().get("got") or requested
    return dict(sorted(used.items()))


def _embedding(run, q: int, seq_len: int) -> np.ndarray | None:
    return run.shards.embedding(q)

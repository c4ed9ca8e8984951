"""The scenario flags shared by `shardtwin sim`, `shardtwin real`, `shardtwin test`, `scenario new`.

Rules:
- Flag names follow the seed guide. Every flag defaults to None here, so a flag counts
  as "given" exactly when the user typed it; the real defaults live in Scenario (and
  --fault-at 1 s, --slow-factor 4, --interval 5 s, --from-shard 0 below).
- Times on the command line are SECONDS (like the guide's --reconnect-delay 5,
  --interval 5, --duration 120); the Scenario stores milliseconds.
- `--scenario FILE` loads a file first; flags given explicitly override its values.
  Fault flags, when any is given, REPLACE the file's fault list. Workload-mode flags
  (--iterations / --concurrent-requests / --duration / --rate) replace the file's
  workload mode; --batch-size / --seq-len override only those two fields.
- Workload rule: --rate -> open loop (needs --duration); --concurrent-requests or
  --duration -> closed loop; --iterations or nothing -> iterations.
- Fault flags all fire --fault-at seconds after the workload starts (all browsers ready).
- Errors are one-line InputError/ScenarioError (exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from events.scenario import Scenario, load_scenario, parse_scenario, scenario_to_dict
from shardtwin.errors import InputError
from shardtwin.vocab import (Backend, FaultToleranceLevel, ModelType, PlacementPolicy, PressureLevel,
                             RecoveryStrategy, ShardType)

DEFAULT_FAULT_AT_S = 1.0
DEFAULT_CASCADE_INTERVAL_S = 5.0


def _names(enum: Any) -> list[str]:
    return [m.value for m in enum]


def add_scenario_flags(parser: argparse.ArgumentParser) -> None:
    """Add the shared scenario flags (see module rules) to `parser`."""
    _scenario_group(parser)
    _tolerance_group(parser)
    _fault_group(parser)
    _workload_group(parser)


def _scenario_group(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scenario")
    g.add_argument("--scenario", metavar="FILE", help="YAML/JSON scenario file; explicit flags override it")
    g.add_argument("--model", help="model name or alias (see `shardtwin models`)")
    g.add_argument("--model-type", choices=_names(ModelType), help="checked against the model's type")
    g.add_argument("--shards", type=int, help="number of shards (default 2)")
    g.add_argument("--type", dest="shard_type", choices=_names(ShardType), help="shard type (default layer)")
    g.add_argument("--browsers", metavar="LIST", help="comma list, repeats allowed, e.g. chromium,firefox,firefox "
                   "(default: one per shard alternating chromium, firefox)")
    g.add_argument("--backend", choices=_names(Backend), help="default wasm")
    g.add_argument("--placement", choices=_names(PlacementPolicy), help="default round_robin")
    g.add_argument("--seed", type=int, help="RNG seed (default 0)")
    g.add_argument("--name", help="scenario name")
    g.add_argument("--mtbf", type=float, metavar="SECONDS", help="random browser crashes, mean time between failures")


def _tolerance_group(parser: argparse.ArgumentParser) -> None:
    ft = parser.add_argument_group("fault tolerance")
    ft.add_argument("--fault-tolerance", action="store_true", default=None,
                    help="enable fault tolerance (level medium unless --fault-tolerance-level)")
    ft.add_argument("--fault-tolerance-level", choices=_names(FaultToleranceLevel))
    ft.add_argument("--recovery-strategy", choices=_names(RecoveryStrategy), help="default: the level's")
    ft.add_argument("--recovery-time", action="store_true", help="report recovery time (always measured)")
    ft.add_argument("--request-timeout", type=float, metavar="SECONDS")
    ft.add_argument("--heartbeat-interval", type=float, metavar="SECONDS")
    ft.add_argument("--detector", choices=["fixed", "phi"])
    ft.add_argument("--detector-timeout", type=float, metavar="SECONDS")
    ft.add_argument("--phi-threshold", type=float)
    ft.add_argument("--standby-browsers", type=int)
    ft.add_argument("--replicas", type=int, help="extra copies of each shard")
    ft.add_argument("--max-retries", type=int)
    ft.add_argument("--backoff", type=float, metavar="SECONDS", help="retry backoff")


def _fault_group(parser: argparse.ArgumentParser) -> None:
    f = parser.add_argument_group("faults (all fire --fault-at seconds after the workload starts)")
    f.add_argument("--fault-at", type=float, metavar="SECONDS", help=f"default {DEFAULT_FAULT_AT_S:g}")
    f.add_argument("--fail-shard", type=int, metavar="K", help="shard K's compute throws (shard_error)")
    f.add_argument("--crash-browser", metavar="NAME|INDEX", help="kill a browser: id (firefox-1), kind or index")
    f.add_argument("--disconnect-browser", metavar="NAME|INDEX", help="drop a browser's link")
    f.add_argument("--reconnect-delay", type=float, metavar="SECONDS", help="link comes back after (default never)")
    f.add_argument("--memory-pressure", choices=_names(PressureLevel), help="memory pressure on --pressure-browser")
    f.add_argument("--pressure-browser", metavar="NAME|INDEX", help="target of --memory-pressure (default 0)")
    f.add_argument("--hang-browser", metavar="NAME|INDEX", help="page stops answering, heartbeats stop")
    f.add_argument("--slow-browser", metavar="NAME|INDEX", help="throttle a browser's compute")
    f.add_argument("--slow-factor", type=float, help="slowdown factor > 1 (default 4)")
    f.add_argument("--fault-duration", type=float, metavar="SECONDS",
                   help="how long hang/slow/memory pressure last (default until the run ends)")
    f.add_argument("--cascade-failures", action="store_true", default=None, help="crash one browser per shard")
    f.add_argument("--from-shard", type=int, metavar="K", help="first shard of the cascade (default 0)")
    f.add_argument("--interval", type=float, metavar="SECONDS", help="between cascade crashes (default 5)")
    f.add_argument("--cascade-count", type=int, help="crashes in the cascade (default: to the last shard)")


def _workload_group(parser: argparse.ArgumentParser) -> None:
    w = parser.add_argument_group("workload")
    w.add_argument("--iterations", type=int, help="sequential requests (default 10)")
    w.add_argument("--concurrent-requests", type=int, metavar="N", help="closed loop: N clients")
    w.add_argument("--duration", type=float, metavar="SECONDS", help="closed/open loop duration")
    w.add_argument("--rate", type=float, metavar="PER_S", help="open loop arrival rate (needs --duration)")
    w.add_argument("--arrival", choices=["poisson", "fixed"], help="open loop arrivals (default poisson)")
    w.add_argument("--think-time", type=float, metavar="SECONDS", help="closed loop pause between requests")
    w.add_argument("--batch-size", type=int)
    w.add_argument("--seq-len", type=int)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _workload(a: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    shape = {k: base[k] for k in ("batch_size", "seq_len") if k in base}
    shape.update({k: v for k, v in (("batch_size", a.batch_size), ("seq_len", a.seq_len)) if v is not None})
    if a.arrival is not None and a.rate is None:
        raise InputError("--arrival applies only with --rate (open loop)")
    if a.think_time is not None and a.concurrent_requests is None and a.duration is None:
        raise InputError("--think-time applies only to a closed loop (--concurrent-requests/--duration)")
    if a.rate is not None:
        if a.concurrent_requests is not None or a.iterations is not None:
            raise InputError("--rate (open loop) cannot be combined with --concurrent-requests or --iterations")
        if a.duration is None:
            raise InputError("--rate needs --duration SECONDS")
        mode = {"kind": "open_loop", "rate_per_s": a.rate, "duration_s": a.duration, "arrival": a.arrival or "poisson"}
    elif a.concurrent_requests is not None or a.duration is not None:
        if a.iterations is not None:
            raise InputError("--iterations cannot be combined with --concurrent-requests or --duration")
        if a.duration is None:
            raise InputError("--concurrent-requests needs --duration SECONDS")
        mode = {"kind": "closed_loop", "concurrency": a.concurrent_requests or 1, "duration_s": a.duration,
                "think_ms": _ms(a.think_time) or 0.0}
    elif a.iterations is not None:
        mode = {"kind": "iterations", "iterations": a.iterations}
    else:
        mode = {k: v for k, v in base.items() if k not in ("batch_size", "seq_len")}
    return {**mode, **shape}


def _requires(a: argparse.Namespace, flag: str, needs: str, given: bool) -> None:
    if getattr(a, flag) is not None and not given:
        raise InputError(f"--{flag.replace('_', '-')} needs {needs}")


def _faults(a: argparse.Namespace) -> list[dict[str, Any]]:
    at = _ms(a.fault_at if a.fault_at is not None else DEFAULT_FAULT_AT_S)
    dur = _ms(a.fault_duration)
    _requires(a, "reconnect_delay", "--disconnect-browser", a.disconnect_browser is not None)
    _requires(a, "slow_factor", "--slow-browser", a.slow_browser is not None)
    _requires(a, "pressure_browser", "--memory-pressure", a.memory_pressure is not None)
    for flag in ("from_shard", "interval", "cascade_count"):
        _requires(a, flag, "--cascade-failures", bool(a.cascade_failures))
    _requires(a, "fault_duration", "--hang-browser, --slow-browser or --memory-pressure",
              any(x is not None for x in (a.hang_browser, a.slow_browser, a.memory_pressure)))
    out: list[dict[str, Any]] = []
    if a.fail_shard is not None:
        out.append({"type": "shard_error", "at_ms": at, "shard": a.fail_shard})
    if a.crash_browser is not None:
        out.append({"type": "browser_crash", "at_ms": at, "browser": a.crash_browser})
    if a.disconnect_browser is not None:
        out.append({"type": "disconnect", "at_ms": at, "browser": a.disconnect_browser,
                    "reconnect_delay_ms": _ms(a.reconnect_delay)})
    if a.memory_pressure is not None:
        out.append({"type": "memory_pressure", "at_ms": at, "level": a.memory_pressure,
                    "browser": a.pressure_browser or "0", "duration_ms": dur})
    if a.hang_browser is not None:
        out.append({"type": "hang", "at_ms": at, "browser": a.hang_browser, "duration_ms": dur})
    if a.slow_browser is not None:
        out.append({"type": "slow", "at_ms": at, "browser": a.slow_browser, "duration_ms": dur,
                    "factor": a.slow_factor})
    if a.cascade_failures:
        out.append({"type": "cascade", "at_ms": at, "shard": a.from_shard or 0, "count": a.cascade_count,
                    "interval_ms": _ms(a.interval if a.interval is not None else DEFAULT_CASCADE_INTERVAL_S)})
    _requires(a, "fault_at", "a fault flag (--fail-shard, --crash-browser, ...)", bool(out))
    return out


_TOLERANCE_FLAGS = (  # (flag attribute, Tolerance field, seconds -> ms?)
    ("standby_browsers", "standby_browsers", False), ("replicas", "replicas", False),
    ("heartbeat_interval", "heartbeat_interval_ms", True), ("detector", "detector", False),
    ("detector_timeout", "detector_timeout_ms", True), ("phi_threshold", "phi_threshold", False),
    ("max_retries", "max_retries", False), ("backoff", "backoff_ms", True),
    ("request_timeout", "request_timeout_ms", True),
)
_SIMPLE_FLAGS = (("model", "model"), ("shards", "shards"), ("shard_type", "shard_type"), ("backend", "backend"),
                 ("placement", "placement"), ("recovery_strategy", "recovery_strategy"), ("seed", "seed"),
                 ("name", "name"))


def _overlay(a: argparse.Namespace, d: dict[str, Any]) -> dict[str, Any]:
    d.update({key: getattr(a, attr) for attr, key in _SIMPLE_FLAGS if getattr(a, attr) is not None})
    if a.mtbf is not None:
        d["mtbf_s"] = a.mtbf
    if a.browsers is not None:
        d["browsers"] = [b.strip() for b in a.browsers.split(",") if b.strip()]
    if a.fault_tolerance_level is not None:
        d["fault_tolerance_level"] = a.fault_tolerance_level
    elif a.fault_tolerance and d.get("fault_tolerance_level", "none") == "none":
        d["fault_tolerance_level"] = FaultToleranceLevel.MEDIUM.value
    tol = dict(d.get("tolerance", {}))
    for attr, key, seconds in _TOLERANCE_FLAGS:
        v = getattr(a, attr)
        if v is not None:
            tol[key] = _ms(v) if seconds else v
    d["tolerance"] = tol
    d["workload"] = _workload(a, dict(d.get("workload", {})))
    faults = _faults(a)
    if faults:
        d["faults"] = faults
    return d


def check_model_type(s: Scenario, model_type: str | None) -> None:
    """InputError if --model-type disagrees with the catalogue's type of the scenario's model."""
    if model_type is None:
        return
    from models.catalogue import get_model
    actual = str(get_model(s.model).model_type)
    if actual != model_type:
        raise InputError(f"--model-type {model_type} does not match {s.model}, whose type is {actual}")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The Scenario the shared flags describe (file first when --scenario, then the flags)."""
    if args.scenario is None and args.model is None:
        raise InputError("--model is required (or --scenario FILE)")
    base = scenario_to_dict(load_scenario(args.scenario)) if args.scenario else {}
    s = parse_scenario(_overlay(args, base))
    check_model_type(s, args.model_type)
    return s

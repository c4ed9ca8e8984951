"""Shared plumbing of run commands (sim, real, replay): store the run, write the result.

Rules: a run is registered in the store before it starts (status running) and written
with all its events in one transaction when it ends, or marked aborted with every event
so far (Ctrl-C, error). The result JSON goes to --out (atomically: temp file + rename)
and to the run's row in DuckDB.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from events.store import DEFAULT_DB_PATH, Store, host_info
from shardtwin.errors import InputError


@dataclass
class StoredRun:
    """A run registered in a store and executed but not yet written: `finish` writes it."""
    store: Store
    run_id: str
    run: Any                  # sim.run.SimRun or real.run.RealRun
    result: dict[str, Any]

    def finish(self, result: dict[str, Any] | None = None) -> None:
        """Write the run's events with `result` (default: self.result) as finished, or as
        aborted with the executor's reason when the run says it was aborted."""
        aborted = getattr(self.run, "aborted", None)
        if aborted:
            self.store.abort_run(self.run_id, self.run.log, reason=aborted)
        else:
            self.store.finish_run(self.run_id, self.run.log, self.result if result is None else result)


def run_sim_stored(store: Store, scenario, profile, seed: int | None = None,
                   history_speed: dict | None = None,
                   around: AbstractContextManager | None = None, placement: dict | None = None) -> StoredRun:
    """Register a sim run in `store`, simulate it (inside `around`, e.g. a progress printer)
    and compute its result; a failure marks the run aborted. `seed`: the simulator's seed
    instead of the scenario's; `placement`: a real run's placement record to decide from.
    The caller writes it with `.finish()`."""
    from sim.run import run_scenario, sim_result
    seed = scenario.seed if seed is None else seed
    run_id = store.begin_run("sim", scenario, profile.name, seed, host_info())
    try:
        with around or nullcontext():
            run = run_scenario(scenario, profile, seed=seed, run_id=run_id, history_speed=history_speed,
                               placement=placement)
    except BaseException:
        store.abort_run(run_id, reason="simulation error")
        raise
    return StoredRun(store, run_id, run, sim_result(run, scenario, profile))


def real_extras(run, scenario) -> dict[str, Any]:
    """The extras every real result carries (besides the seed guide's fields)."""
    from coordinator.config import placement_record
    return {"weights": run.shards.weights, "backend_requested": str(scenario.backend), "aborted": run.aborted,
            "placement": placement_record(run.coordinator.cfg)}


def run_real_stored(store: Store, scenario, extra: Callable[[Any], dict[str, Any]] | None = None,
                    around: AbstractContextManager | None = None, **run_real_kwargs: Any) -> StoredRun:
    """Register a real run in `store`, run it in real browsers (real.run.run_real with
    `run_real_kwargs`, inside `around`) and compute its result with `extra(run)` as extras
    (default: real_extras). A failure marks the run aborted with the events logged so far.
    The caller writes it with `.finish()` (aborted when the executor says the run was)."""
    from events.metrics import seed_result
    from real.run import run_real
    run_id = store.begin_run("real", scenario, "real", scenario.seed, host_info())
    holder: dict[str, Any] = {}
    try:
        with around or nullcontext():
            run = run_real(scenario, run_id=run_id, on_log=lambda log: holder.setdefault("log", log),
                           **run_real_kwargs)
    except BaseException:
        store.abort_run(run_id, holder.get("log", ()),
                        reason="interrupted or failed" if "log" in holder else "failed before any event")
        raise
    extras = real_extras(run, scenario) if extra is None else extra(run)
    return StoredRun(store, run_id, run, seed_result(run.log, scenario, run.plan, run.coordinator.s, extra=extras))


def stop_if_signalled(res: dict[str, Any]) -> None:
    """A real run ended by Ctrl-C or SIGTERM ends the command too. The driver traps both signals to
    kill the browsers and store the run (aborted, with its events) through the normal path, so a
    command that runs several real runs (validate's repeats, calibrate --collect, timeouts,
    test) would otherwise go on to launch the next one. Raises what the CLI turns into exit 130/143."""
    why = res.get("aborted")
    if why not in ("interrupted", "terminated"):
        return
    rid = f" {res['run_id']}" if res.get("run_id") else ""
    sys.stderr.write(f"shardtwin: the real run{rid} is stored as aborted with its events\n")
    if why == "interrupted":
        raise KeyboardInterrupt
    from experiments.cli import Terminated
    raise Terminated()


def add_output_flags(p) -> None:
    p.add_argument("--db", default=str(DEFAULT_DB_PATH), metavar="PATH", help="DuckDB file (default %(default)s)")
    p.add_argument("--out", metavar="FILE", help="write the result JSON here")
    p.add_argument("--json", action="store_true", help="print the result JSON instead of a summary")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def write_json_atomic(path: str | Path, data: Any) -> Path:
    p = Path(path)
    if p.parent and not p.parent.exists():
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create {p.parent}: {exc.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=str(p.parent or Path(".")))
    except OSError as exc:
        raise InputError(f"cannot write {p}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, p)
    except BaseException as exc:  # a failed dump (OSError, or TypeError on unserialisable data) leaves no .tmp
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {p}: {exc.strerror}") from None
        raise
    return p


def fmt_num(v: Any, digits: int = 1, unit: str = "") -> str:
    """'n/a' for None, a float with `digits` decimals, anything else as str; then `unit`."""
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] | None = None,
               rstrip: bool = False) -> list[str]:
    """Lines of an aligned text table: header, dashes, rows; columns two spaces apart.
    `right`: the right-aligned column indices (default: all but the first)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        text = "  ".join(c.rjust(w) if (i in right if right is not None else i) else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
        return text.rstrip() if rstrip else text
    return [line(headers), line(["-" * w for w in widths]), *map(line, rows)]


def summary_lines(res: dict[str, Any]) -> list[str]:
    lat = res.get("latency_ms") or {}
    req = res.get("requests") or {}
    rm = res.get("recovery_metrics") or {}

    def f(v: Any, unit: str = "") -> str:
        return fmt_num(v, 1, unit)
    lines = [
        f"[{res.get('source')}] {res.get('model_name')} x{res.get('shard_count')} {res.get('shard_type')} "
        f"run {res.get('run_id')}",
        f"  requests: {req.get('submitted')} submitted, {req.get('completed')} completed, "
        f"{req.get('failed')} failed {req.get('failed_reasons') or ''}, {req.get('lost')} lost",
        f"  latency: mean {f(lat.get('mean'), ' ms')}, p50 {f(lat.get('p50'), ' ms')}, "
        f"p95 {f(lat.get('p95'), ' ms')}, p99 {f(lat.get('p99'), ' ms')}; throughput {f(res.get('throughput_rps'), ' req/s')}",
        f"  recovery: {rm.get('failures_detected')} failures detected, success rate {f(rm.get('recovery_success_rate'))}, "
        f"mean recovery {f(rm.get('recovery_time_ms'), ' ms')}, method {rm.get('recovery_method')}",
        f"  memory: {f(res.get('memory_usage_mb'), ' MB')} ({res.get('memory_usage_basis')})",
    ]
    for fl in res.get("faults") or []:
        lines.append(f"  fault {fl['fault']} on {fl['browser']} at {fl['injected_ms']:.0f} ms: detected after "
                     f"{f(fl['detection_ms'], ' ms')} ({fl['cause']}), recovered={fl['recovered']} "
                     f"in {f(fl['recovery_ms'], ' ms')} via {fl['action']}")
    for fl in res.get("faults_not_fired") or []:
        lines.append(f"  fault {fl['fault']} scheduled at {f(fl['at_ms'], ' ms')} never fired: the run ended at "
                     f"{f(fl['run_ended_at_ms'], ' ms')} after the workload start (more requests or an earlier at_ms)")
    return lines


def emit_result(args, res: dict[str, Any]) -> None:
    if getattr(args, "out", None):
        write_json_atomic(args.out, res)
    if getattr(args, "quiet", False):
        return
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(summary_lines(res)) + "\n")


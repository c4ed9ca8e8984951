"""`shardtwin sweep SPEC`: many simulator runs from one spec, pooled, stored in DuckDB, summarised.

Rules:
- Points come from experiments.sweep_spec (expanded and validated before anything runs).
- A point's run is a pure function of (scenario, profile, seed): `run_point` is the only
  work a runner executes, and outcomes are yielded in point order whatever the
  completion order, so pooled and serial sweeps give the same results.
- Runners are pluggable (the `Runner` protocol): SerialRunner (in process) and
  LocalPoolRunner (concurrent.futures process pool). A Ray backend implements the same
  two methods (`run` yielding outcomes in task order, `close`).
- Only the parent process writes DuckDB. Runs are written in batches, each batch (its
  scenarios, runs rows with status and result JSON, events, sweep_points) in ONE
  transaction, so a killed sweep leaves whole runs only. `--events` chooses what events
  are kept: none, summary (request / fault / detection / recovery lifecycle), all.
- A point whose simulation raises is stored `aborted` with the error; the sweep goes on
  and exits 1 at the end. Invalid specs exit 2 before anything runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import multiprocessing
import pyarrow as pa

from events.schema import EventKind as K, EventLog, canonical_json, to_arrow
from events.store import DEFAULT_DB_PATH, Store, code_version, host_info, utcnow
from experiments.runner import write_json_atomic
from experiments.sweep_spec import Sweep, SweepPoint, load_sweep
from shardtwin.errors import InputError
from shardtwin.vocab import Source

EVENT_MODES = ("none", "summary", "all")
SUMMARY_KINDS = frozenset({
    K.RUN_STARTED, K.RUN_FINISHED, K.WORKLOAD_STARTED, K.FAULT_SCHEDULED,
    K.REQUEST_SUBMITTED, K.REQUEST_COMPLETED, K.REQUEST_FAILED,
    K.FAULT_INJECTED, K.FAULT_CLEARED, K.FAILURE_SUSPECTED, K.FAILURE_DETECTED,
    K.RECOVERY_STARTED, K.RECOVERY_COMPLETED, K.RECOVERY_FAILED,
})
SWEEP_DDL = """
CREATE TABLE IF NOT EXISTS sweeps (sweep_id VARCHAR PRIMARY KEY, spec JSON NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS sweep_points (sweep_id VARCHAR NOT NULL, point INTEGER NOT NULL, params JSON NOT NULL,
  run_id VARCHAR NOT NULL, PRIMARY KEY (sweep_id, point));
"""
BATCH_RUNS = 250


# --- the unit of work ---

@dataclass(frozen=True, slots=True)
class PointTask:
    point: SweepPoint
    run_id: str
    events: str                       # one of EVENT_MODES


@dataclass(frozen=True, slots=True)
class PointOutcome:
    index: int
    run_id: str
    status: str                       # finished | aborted
    result: dict[str, Any]
    events: pa.Table | None           # already filtered by the task's events mode
    sim_events: int
    log_events: int
    started_at: datetime
    finished_at: datetime


def point_result(run, point: SweepPoint) -> dict[str, Any]:
    """The seed result JSON of one simulated point (same extras as `shardtwin sim`)."""
    from sim.run import sim_result
    return sim_result(run, point.scenario, point.profile,
                      sweep_point={"index": point.index, "params": dict(point.params)})


def run_point(task: PointTask) -> PointOutcome:
    """Simulate one point; never raises for a simulation error (the outcome is `aborted`)."""
    from sim.run import run_scenario
    started = utcnow()
    try:
        run = run_scenario(task.point.scenario, task.point.profile, run_id=task.run_id)
        result = point_result(run, task.point)
    except Exception as exc:  # a bug in one point must not sink the sweep; recorded with the run
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return PointOutcome(task.point.index, task.run_id, "aborted",
                            {"aborted": f"{type(exc).__name__}: {exc} ({tb.filename}:{tb.lineno})"},
                            None, 0, 0, started, utcnow())
    events = None
    if task.events != "none":
        kept = run.log.events if task.events == "all" else tuple(e for e in run.log.events if e.kind in SUMMARY_KINDS)
        events = to_arrow(EventLog(task.run_id, Source.SIM, kept))
    return PointOutcome(task.point.index, task.run_id, "finished", result, events,
                        run.sim_events, len(run.log.events), started, utcnow())


# --- runners ---

class Runner(Protocol):
    """Executes tasks; `run` yields one outcome per task, in task order, as they become ready.

    Implementations: SerialRunner, LocalPoolRunner; a Ray runner would submit
    `ray.remote(run_point)` per task (or per chunk) and `ray.get` them in order. Runners
    are context managers; `close` releases workers (also on Ctrl-C).
    """

    workers: int

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]: ...

    def close(self) -> None: ...


class SerialRunner:
    workers = 1

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        return map(fn, tasks)

    def close(self) -> None:
        pass

    def __enter__(self) -> "SerialRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_pid(_: int) -> int:
    return os.getpid()


class LocalPoolRunner:
    """A concurrent.futures process pool on this machine (fork where available: warm caches)."""

    def __init__(self, workers: int | None = None, chunksize: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunksize = chunksize
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        # Start every worker now, before the caller opens DuckDB or starts threads (fork safety).
        list(self._pool.map(_worker_pid, range(self.workers)))

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        chunk = self.chunksize or max(1, min(16, len(tasks) // (self.workers * 8)))
        return self._pool.map(fn, tasks, chunksize=chunk)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "LocalPoolRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_runner(workers: int | None, ray: str | None = None) -> Runner:
    """ray: None = local processes; "local" = start a local Ray; anything else = a Ray address."""
    if ray is not None:
        from experiments.sweep_ray import RayRunner
        return RayRunner(None if ray == "local" else ray, workers)
    n = workers or os.cpu_count() or 1
    return SerialRunner() if n == 1 else LocalPoolRunner(n)


# --- storage ---

class SweepWriter:
    """Writes a sweep's runs through one Store connection, BATCH_RUNS per transaction."""

    def __init__(self, store: Store, sweep: Sweep, batch_runs: int = BATCH_RUNS) -> None:
        self.store, self.sweep, self.batch_runs = store, sweep, batch_runs
        self.sweep_id = uuid.uuid4().hex
        self._pending: list[PointOutcome] = []
        self._host, self._code = canonical_json(host_info()), code_version()
        store.con.execute(SWEEP_DDL)
        store.con.execute("INSERT INTO sweeps VALUES (?, ?, ?)",
                          [self.sweep_id, canonical_json(dict(sweep.spec)), utcnow()])

    def add(self, outcome: PointOutcome) -> None:
        self._pending.append(outcome)
        if len(self._pending) >= self.batch_runs:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            with self.store.transaction():
                self._write(batch)

    def _write(self, batch: list[PointOutcome]) -> None:
        points = self.sweep.points
        for s in {points[o.index].scenario for o in batch}:
            self.store.save_scenario(s)
        sp = pa.Table.from_pylist([{"sweep_id": self.sweep_id, "point": o.index,
                                    "params": canonical_json(dict(points[o.index].params)), "run_id": o.run_id}
                                   for o in batch])
        tables = [o.events for o in batch if o.events is not None and o.events.num_rows]
        self.store.insert_runs([self._run_row(o) for o in batch], pa.concat_tables(tables) if tables else None)
        self.store.insert_arrow("sweep_points", sp)

    def _run_row(self, o: PointOutcome) -> dict[str, Any]:
        from events.scenario import scenario_hash
        p = self.sweep.points[o.index]
        return {"run_id": o.run_id, "source": "sim", "scenario_hash": scenario_hash(p.scenario),
                "calibration_profile": p.profile.name, "seed": p.scenario.seed, "code_version": self._code,
                "host_info": self._host, "started_at": o.started_at, "finished_at": o.finished_at,
                "status": o.status, "result": canonical_json(o.result), "host": socket.gethostname(),
                "pid": os.getpid(), "pid_started": None}


# --- running a sweep ---

def execute(sweep: Sweep, runner: Runner, *, store: Store | None = None, events: str = "summary",
            progress: bool = False, batch_runs: int = BATCH_RUNS) -> tuple[list[PointOutcome], str | None]:
    """Run every point (outcomes in point order); store them when `store` is given. -> (outcomes, sweep_id)."""
    if events not in EVENT_MODES:
        raise InputError(f"unknown events mode {events!r}; known: {', '.join(EVENT_MODES)}")
    tasks = [PointTask(p, uuid.uuid4().hex, events if store is not None else "none") for p in sweep.points]
    writer = SweepWriter(store, sweep, batch_runs) if store is not None else None
    bar = _progress(len(tasks), progress)
    outcomes: list[PointOutcome] = []
    try:
        for o in runner.run(run_point, tasks):
            outcomes.append(o)
            if writer is not None:
                writer.add(o)
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.flush()   # whole runs done so far, also on Ctrl-C
    return outcomes, writer.sweep_id if writer else None


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="run", file=sys.stderr, disable=not enabled, dynamic_ncols=True, leave=False)


# --- summary ---

SUMMARY_COLUMNS = ("n", "err", "completed%", "mean ms", "p50 ms", "p95 ms", "recov ok", "recov ms", "detect ms")
MAX_DISTINCT = 8     # more distinct numeric values than this are shown as 5 equal-width bins


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def summary_row(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate of point results: latency figures are means of the per-point figures."""
    ok = [r for r in results if "aborted" not in r]
    sub = sum((r.get("requests") or {}).get("submitted", 0) for r in ok)
    done = sum((r.get("requests") or {}).get("completed", 0) for r in ok)
    lat = [r.get("latency_ms") or {} for r in ok]
    rm = [r.get("recovery_metrics") or {} for r in ok]
    return {"n": len(results), "err": len(results) - len(ok),
            "completed%": 100.0 * done / sub if sub else None,
            "mean ms": _mean(x.get("mean") for x in lat), "p50 ms": _mean(x.get("p50") for x in lat),
            "p95 ms": _mean(x.get("p95") for x in lat),
            "recov ok": _mean(x.get("recovery_success_rate") for x in rm),
            "recov ms": _mean(x.get("recovery_time_ms") for x in rm),
            "detect ms": _mean(f.get("detection_ms") for r in ok for f in r.get("faults") or [])}


def _groups(values: list[Any]) -> list[tuple[str, list[int]]]:
    """(label, point positions) per distinct value, or per bin for many distinct numbers."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    distinct = {canonical_json(v): v for v in values}
    if numeric and len(distinct) > MAX_DISTINCT:
        lo, hi = min(values), max(values)
        width = (hi - lo) / 5 or 1.0
        bins = [min(4, int((v - lo) / width)) for v in values]
        return [(f"[{lo + b * width:.4g}, {lo + (b + 1) * width:.4g}{']' if b == 4 else ')'}",
                 [i for i, x in enumerate(bins) if x == b]) for b in range(5) if b in bins]
    order = sorted(distinct, key=lambda k: distinct[k]) if numeric else list(distinct)
    keyed = [canonical_json(v) for v in values]
    return [(k if not isinstance(distinct[k], str) else distinct[k], [i for i, x in enumerate(keyed) if x == k])
            for k in order]


def summarize(sweep: Sweep, outcomes: Sequence[PointOutcome]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per swept parameter: [(value label, summary_row)]; '(all points)' when nothing was swept."""
    results = [o.result for o in outcomes]
    by_index = {o.index: o.result for o in outcomes}
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name in sweep.swept:
        pts = [p for p in sweep.points if p.index in by_index and name in p.params]
        groups = _groups([p.params[name] for p in pts])
        out[name] = [(label, summary_row([by_index[pts[i].index] for i in idx])) for label, idx in groups]
    if not out:
        out["(all points)"] = [("-", summary_row(results))]
    return out


def format_summary(table: Mapping[str, list[tuple[str, Mapping[str, Any]]]]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else \
            f"{v:.1f}" if isinstance(v, float) else str(v)
    lines = []
    for name, rows in table.items():
        w = max([len(name)] + [len(label) for label, _ in rows])
        lines.append(f"{name:<{w}}  " + "  ".join(f"{c:>{max(5, len(c))}}" for c in SUMMARY_COLUMNS))
        lines.extend(f"{label:<{w}}  " + "  ".join(f"{cell(row[c]):>{max(5, len(c))}}" for c in SUMMARY_COLUMNS)
                     for label, row in rows)
        lines.append("")
    return "\n".join(lines)


# --- the command ---

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run many simulator scenarios from a sweep spec (grid / random / seeds)")
    p.add_argument("spec", metavar="SPEC", help="sweep spec, YAML or JSON (base, grid, random, seeds, profile_grid)")
    p.add_argument("--db", default=str(DEFAULT_DB_PATH), metavar="PATH", help="DuckDB file (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: all cores; 1 = in process)")
    p.add_argument("--events", choices=EVENT_MODES, default="summary",
                   help="events stored per run: none, summary (requests, faults, recovery; default) or all")
    p.add_argument("--out", metavar="FILE", help="write every point's result JSON here")
    p.add_argument("--json", action="store_true", help="print every point's result JSON instead of the summary")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (a local one when no address is given; needs shardtwin[ray])")
    p.add_argument("--quiet", action="store_true", help="no progress bar, print nothing on success")
    p.set_defaults(func=cmd_sweep)


def point_records(sweep: Sweep, outcomes: Sequence[PointOutcome], sweep_id: str | None) -> dict[str, Any]:
    return {"sweep_id": sweep_id, "name": sweep.name, "points": [
        {"point": o.index, "params": dict(sweep.points[o.index].params), "run_id": o.run_id,
         "status": o.status, "result": o.result} for o in outcomes]}


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    sweep = load_sweep(args.spec)                       # every point validated: exit 2 before any run
    t0 = time.perf_counter()
    with make_runner(args.workers, args.ray) as runner, Store(args.db) as store:
        show = not args.quiet and sys.stderr.isatty()
        outcomes, sweep_id = execute(sweep, runner, store=store, events=args.events, progress=show)
    wall = time.perf_counter() - t0
    records = point_records(sweep, outcomes, sweep_id)
    if args.out:
        write_json_atomic(args.out, records)
    failed = [o for o in outcomes if o.status != "finished"]
    if args.json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
    elif not args.quiet:
        sys.stdout.write(f"sweep {sweep_id} {sweep.name or args.spec}: {len(outcomes)} runs in {wall:.1f} s "
                         f"on {runner.workers} worker(s), stored in {args.db} (events: {args.events})\n\n")
        sys.stdout.write(format_summary(summarize(sweep, outcomes)))
    for o in failed[:5]:
        sys.stderr.write(f"shardtwin: point {o.index} aborted: {o.result.get('aborted')}\n")
    return 1 if failed else 0

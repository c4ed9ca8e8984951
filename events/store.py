"""The DuckDB store: scenarios, runs, their event logs, calibration profiles; Parquet export/import.

Rules:
- Opening checks the path first: a read-only, unwritable or locked database is one
  StoreError line before any work. DuckDB allows one writing process per file.
- IDs are generated (uuid4 hex); timestamps are TIMESTAMP in UTC; JSON columns hold
  canonical JSON.
- A run is `running` from begin_run (committed at once, with the writer's pid and
  process start time). Its events are buffered in memory; finish_run / abort_run write
  all of them plus the status in ONE transaction. If that fails the transaction is
  rolled back and the run stays `running`. On open, `running` runs of this host whose
  process is gone are marked `aborted` (their buffered events died with the process).
- Leaving the `with` block aborts this Store's still-running runs with what they buffered.
- Batch writers (sweeps) write finished runs directly: `with store.transaction():
  store.insert_runs(rows, events)`; rows carry RUN_ROW_COLUMNS.
- export_run writes the events as Parquet with the run row and the scenario in the Arrow
  schema metadata; import_run restores all three and is idempotent.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

import shardtwin
from events.scenario import Scenario, parse_scenario, scenario_hash, scenario_to_dict
from events.schema import Event, EventKind, EventLog, canonical_json, from_arrow, to_arrow
from events.views import create_views
from shardtwin.errors import ShardtwinError, StoreError
from shardtwin.vocab import Source, parse

DEFAULT_DB_PATH = Path("shardtwin.duckdb")
EXPORT_FORMAT = "1"

DDL = """
CREATE TABLE IF NOT EXISTS scenarios (
  scenario_hash VARCHAR PRIMARY KEY, json JSON NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, scenario_hash VARCHAR NOT NULL,
  calibration_profile VARCHAR, seed BIGINT NOT NULL, code_version VARCHAR, host_info JSON,
  started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, status VARCHAR NOT NULL, result JSON,
  host VARCHAR, pid INTEGER, pid_started DOUBLE);
CREATE TABLE IF NOT EXISTS events (
  run_id VARCHAR NOT NULL, source VARCHAR NOT NULL, seq BIGINT NOT NULL, t_ms DOUBLE NOT NULL,
  kind VARCHAR NOT NULL, request_id BIGINT, shard INTEGER, browser VARCHAR, attempt INTEGER NOT NULL,
  value DOUBLE, detail VARCHAR, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS profiles (
  profile_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, version INTEGER NOT NULL,
  created_at TIMESTAMP NOT NULL, json JSON NOT NULL, residuals JSON, UNIQUE (name, version));
"""
RUN_COLUMNS = ("run_id", "source", "scenario_hash", "calibration_profile", "seed", "code_version",
               "host_info", "started_at", "finished_at", "status", "result")
RUN_ROW_COLUMNS = RUN_COLUMNS + ("host", "pid", "pid_started")     # every column of the runs table
_EVENTS_SELECT = """SELECT run_id, CAST(source AS VARCHAR), seq, t_ms, CAST(kind AS VARCHAR),
  request_id, shard, browser, attempt, value, detail"""


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    source: Source
    scenario_hash: str
    calibration_profile: str | None
    seed: int
    code_version: str | None
    host_info: dict[str, Any] | None
    started_at: datetime
    finished_at: datetime | None
    status: str
    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StoredProfile:
    profile_id: str
    name: str
    version: int
    created_at: datetime
    data: dict[str, Any]
    residuals: dict[str, Any] | None


def utcnow() -> datetime:
    """Now as the store writes timestamps: naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def query_rows(con: duckdb.DuckDBPyConnection, sql: str,
               params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of any SQL as dicts; `params`: a list for `?`, a dict for `$name` placeholders."""
    cur = con.execute(sql, params) if params else con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(shardtwin.__file__).resolve().parent)
        sha = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{shardtwin.__version__}+{sha}" if sha else shardtwin.__version__


def host_info() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "memory_mb": round(psutil.virtual_memory().total / 2**20)}


def _check_writable(p: Path) -> None:
    """StoreError unless the database file (or its directory) can be written."""
    target = p if p.exists() else p.parent
    if p.exists() and p.is_dir():
        raise StoreError(f"store path {p} is a directory; expected a DuckDB file")
    if not target.is_dir() and not p.exists():
        raise StoreError(f"cannot create store {p}: directory {target} does not exist")
    if not os.access(target, os.W_OK) or not target.stat().st_mode & 0o222:
        raise StoreError(f"store path {target} is read-only; choose a writable --db path")
    try:
        if p.exists():
            with open(p, "r+b"):
                pass
        else:
            with tempfile.TemporaryFile(dir=target):
                pass
    except OSError as exc:
        raise StoreError(f"store path {target} is not writable: {exc.strerror or exc}") from None


def _pid_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def read_export(p: Path) -> tuple[dict[str, Any], Scenario, pa.Table]:
    """(run row, scenario, events table) of an export_run file; InputError-style StoreError if not one."""
    try:
        table = pq.read_table(p)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"cannot read {p} as Parquet: {str(exc).splitlines()[0]}") from None
    meta = table.schema.metadata or {}
    if meta.get(b"shardtwin.format") != EXPORT_FORMAT.encode():
        raise StoreError(f"{p} is not a shardtwin run export (format {EXPORT_FORMAT})")
    try:
        run = json.loads(meta[b"shardtwin.run"])
        scenario = parse_scenario(json.loads(meta[b"shardtwin.scenario"]))
        for k in ("started_at", "finished_at"):
            run[k] = None if run[k] is None else datetime.fromisoformat(run[k])
        run["host_info"] = None if run["host_info"] is None else canonical_json(run["host_info"])
        run["result"] = None if run["result"] is None else canonical_json(run["result"])
    except (KeyError, ValueError, TypeError, ShardtwinError) as exc:
        raise StoreError(f"{p}: damaged run metadata ({exc})") from None
    if scenario_hash(scenario) != run["scenario_hash"]:
        raise StoreError(f"{p}: scenario does not match the run's scenario hash {run['scenario_hash']}")
    logs = from_arrow(table)
    if any(log.run_id != run["run_id"] for log in logs):
        raise StoreError(f"{p}: events of another run than {run['run_id']}")
    return run, scenario, table


class Store:
    """One DuckDB database file. Use as a context manager; see the module rules."""

    def __init__(self, path: str | Path = DEFAULT_DB_PATH) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            _check_writable(self.path)
        try:
            self.con = duckdb.connect(str(path))
            self.con.execute(DDL)
            create_views(self.con)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {str(exc).splitlines()[0]}") from None
        self._open: dict[str, Source] = {}
        self._buffers: dict[str, dict[int, Event]] = {}
        self.mark_stale_runs_aborted()

    # --- lifecycle ---
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for run_id in list(self._open):
                self.abort_run(run_id, reason="store closed while running")
        finally:
            self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around the block; any failure rolls back, database errors as StoreError."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
            self.con.execute("COMMIT")
        except BaseException as exc:
            try:   # a failed COMMIT (e.g. disk full) may already have ended the transaction
                self.con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            if isinstance(exc, ShardtwinError):
                raise
            if isinstance(exc, (duckdb.Error, pa.ArrowException, OverflowError, TypeError, ValueError)):
                raise StoreError(f"store write failed, rolled back: {str(exc).splitlines()[0]}") from exc
            raise

    def _tx(self, work, *args: Any) -> Any:
        with self.transaction():
            return work(*args)

    def insert_arrow(self, table: str, data: pa.Table, select: str = "SELECT *", ignore_existing: bool = False,
                     columns: Sequence[str] = ()) -> None:
        """INSERT INTO `table` [(columns)] `select` FROM the Arrow table `data`."""
        cols = f" ({', '.join(columns)})" if columns else ""
        self.con.register("_incoming", data)
        try:
            self.con.execute(f"INSERT INTO {table}{cols} {select} FROM _incoming"
                             + (" ON CONFLICT DO NOTHING" if ignore_existing else ""))
        finally:
            self.con.unregister("_incoming")

    def insert_runs(self, rows: Sequence[Mapping[str, Any]], events: pa.Table | None = None,
                    ignore_existing: bool = False) -> None:
        """Insert ended runs (dicts with the RUN_ROW_COLUMNS keys; JSON columns as canonical JSON
        text) and their events (an Arrow table of events.schema), e.g. inside `transaction()`.
        `ignore_existing`: rows already stored are left as they are (idempotent import)."""
        if rows:
            bad = {k for r in rows for k in r} - set(RUN_ROW_COLUMNS)
            if bad:
                raise StoreError(f"not columns of runs: {', '.join(sorted(bad))}")
            cols = [c for c in RUN_ROW_COLUMNS if c in rows[0]]
            self.insert_arrow("runs", pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows]),
                              ignore_existing=ignore_existing, columns=cols)
        if events is not None and events.num_rows:
            self.insert_arrow("events", events, _EVENTS_SELECT, ignore_existing)

    # --- scenarios ---
    def save_scenario(self, s: Scenario) -> str:
        h = scenario_hash(s)
        self.con.execute("INSERT INTO scenarios VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                         [h, canonical_json(scenario_to_dict(s)), utcnow()])
        return h

    def load_scenario(self, scenario_hash_: str) -> Scenario:
        row = self.con.execute("SELECT json FROM scenarios WHERE scenario_hash = ?", [scenario_hash_]).fetchone()
        if row is None:
            raise StoreError(f"no scenario with hash {scenario_hash_!r} in {self.path}")
        return parse_scenario(json.loads(row[0]))

    # --- runs ---
    def begin_run(self, source: Source | str, scenario: Scenario, profile_name: str | None = None,
                  seed: int | None = None, host_info_: Mapping[str, Any] | None = None,
                  code_version_: str | None = None) -> str:
        """Register a running run (committed now) and return its generated run_id."""
        src = parse(Source, source, "source")
        run_id = uuid.uuid4().hex
        h = self.save_scenario(scenario)
        pid = os.getpid()
        self.con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 'running', NULL, ?, ?, ?)",
            [run_id, src.value, h, profile_name, scenario.seed if seed is None else seed,
             code_version_ or code_version(), canonical_json(dict(host_info_ or host_info())), utcnow(),
             socket.gethostname(), pid, _pid_started(pid)])
        self._open[run_id] = src
        self._buffers[run_id] = {}
        return run_id

    def append_events(self, run_id: str, events: Iterable[Event]) -> None:
        """Buffer events of a running run; they are written by finish_run / abort_run."""
        if run_id not in self._open:
            raise StoreError(f"run {run_id} is not running in this store")
        buf = self._buffers[run_id]
        for e in events:
            old = buf.setdefault(e.seq, e)
            if old != e:
                raise StoreError(f"run {run_id}: two different events with seq {e.seq}")

    def _close_run(self, run_id: str, status: str, log: EventLog | None,
                   extra: Iterable[Event], result: Mapping[str, Any] | None) -> None:
        if run_id not in self._open:
            raise StoreError(f"run {run_id} is not running in this store")
        if log is not None and (log.run_id != run_id or log.source != self._open[run_id]):
            raise StoreError(f"event log of {log.run_id}/{log.source} given for run {run_id}/{self._open[run_id]}")
        self.append_events(run_id, [*(log.events if log else ()), *extra])
        events = tuple(sorted(self._buffers[run_id].values(), key=lambda e: e.seq))
        table = to_arrow(EventLog(run_id, self._open[run_id], events))
        self._tx(self._write_close, run_id, status, table, result)
        del self._open[run_id], self._buffers[run_id]

    def _write_close(self, run_id: str, status: str, table: pa.Table, result: Mapping[str, Any] | None) -> None:
        self.insert_runs((), table)
        self._set_status(run_id, status, result)

    def _set_status(self, run_id: str, status: str, result: Mapping[str, Any] | None) -> None:
        self.con.execute("UPDATE runs SET status = ?, finished_at = ?, result = ? WHERE run_id = ?",
                         [status, utcnow(), None if result is None else canonical_json(dict(result)), run_id])

    def finish_run(self, run_id: str, log: EventLog | None = None, result: Mapping[str, Any] | None = None) -> None:
        """Write the run's events (buffered + `log`) and status finished in one transaction."""
        self._close_run(run_id, "finished", log, (), result)

    def abort_run(self, run_id: str, events_so_far: EventLog | Iterable[Event] = (), reason: str = "aborted") -> None:
        """Write what the run logged so far and mark it aborted (one transaction)."""
        log = events_so_far if isinstance(events_so_far, EventLog) else None
        extra = () if log is not None else tuple(events_so_far)
        self._close_run(run_id, "aborted", log, extra, {"aborted": reason})

    def mark_stale_runs_aborted(self) -> list[str]:
        """Runs left `running` by a process of this host that no longer exists -> aborted."""
        rows = self.con.execute("SELECT run_id, pid, pid_started FROM runs WHERE status = 'running' AND host = ?",
                                [socket.gethostname()]).fetchall()
        stale = [r for r, pid, started in rows
                 if r not in self._open and (pid is None or _pid_started(pid) != started)]
        for run_id in stale:
            self._set_status(run_id, "aborted", {"aborted": "writer process died"})
        return stale

    def _run_row(self, row: tuple) -> RunRecord:
        d = dict(zip(RUN_COLUMNS, row))
        return RunRecord(**{**d, "source": Source(d["source"]), "host_info": _loads(d["host_info"]),
                            "result": _loads(d["result"])})

    def run(self, run_id: str) -> RunRecord:
        row = self.con.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        return self._run_row(row)

    def runs(self, source: Source | str | None = None, status: str | None = None) -> list[RunRecord]:
        rows = self.con.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE (? IS NULL OR source = ?) AND (? IS NULL OR status = ?)"
            " ORDER BY started_at, run_id", [source and str(source)] * 2 + [status] * 2).fetchall()
        return [self._run_row(r) for r in rows]

    def run_events(self, run_id: str) -> EventLog:
        rec = self.run(run_id)
        rows = self.con.execute("SELECT kind, t_ms, seq, request_id, shard, browser, attempt, value, detail"
                                " FROM events WHERE run_id = ? ORDER BY seq", [run_id]).fetchall()
        try:
            events = tuple(Event(EventKind(r[0]), *r[1:]) for r in rows)
        except ValueError as exc:
            raise StoreError(f"run {run_id}: unknown event kind in store ({exc})") from None
        return EventLog(run_id, rec.source, events)

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Rows of any SQL (e.g. over the request_latency / fault_recovery views) as dicts."""
        return query_rows(self.con, sql, params)

    # --- profiles ---
    def next_profile_version(self, name: str) -> int:
        """The version the next profile saved under `name` gets (1 for a new name)."""
        return int(self.con.execute("SELECT coalesce(max(version), 0) + 1 FROM profiles WHERE name = ?",
                                    [name]).fetchone()[0])

    def save_profile(self, name: str, data: Mapping[str, Any], residuals: Mapping[str, Any] | None = None,
                     version: int | None = None) -> StoredProfile:
        """Store a calibration profile; version defaults to the next one for this name."""
        if version is None:
            version = self.next_profile_version(name)
        prof = StoredProfile(uuid.uuid4().hex, name, int(version), utcnow(), dict(data),
                             None if residuals is None else dict(residuals))
        try:
            self.con.execute("INSERT INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
                             [prof.profile_id, name, prof.version, prof.created_at, canonical_json(prof.data),
                              None if residuals is None else canonical_json(prof.residuals)])
        except duckdb.ConstraintException:
            raise StoreError(f"profile {name!r} version {version} already exists") from None
        return prof

    def load_profile(self, name: str, version: int | None = None) -> StoredProfile:
        """The named profile at `version`, or its latest version."""
        row = self.con.execute(
            "SELECT profile_id, name, version, created_at, json, residuals FROM profiles"
            " WHERE name = ? AND (? IS NULL OR version = ?) ORDER BY version DESC LIMIT 1",
            [name, version, version]).fetchone()
        if row is None:
            known = [r[0] for r in self.con.execute("SELECT DISTINCT name FROM profiles ORDER BY 1").fetchall()]
            raise StoreError(f"no profile {name!r}{'' if version is None else f' version {version}'}; "
                             f"known: {', '.join(known) or 'none'}")
        return StoredProfile(*row[:4], json.loads(row[4]), _loads(row[5]))

    # --- Parquet ---
    def export_run(self, run_id: str, path: str | Path) -> Path:
        """Write the run's events to Parquet, run row and scenario in the schema metadata."""
        rec = self.run(run_id)
        table = to_arrow(self.run_events(run_id))
        run_meta = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(rec).items()}
        meta = {b"shardtwin.format": EXPORT_FORMAT.encode(), b"shardtwin.run": canonical_json(run_meta).encode(),
                b"shardtwin.scenario": canonical_json(scenario_to_dict(self.load_scenario(rec.scenario_hash))).encode()}
        p = Path(path)
        try:
            pq.write_table(table.replace_schema_metadata(meta), p)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"cannot write {p}: {exc}") from None
        return p

    def import_run(self, path: str | Path) -> str:
        """Restore a run exported by export_run (idempotent); returns its run_id."""
        run, scenario, table = read_export(Path(path))
        self._tx(self._write_import, run, scenario, table)
        return run["run_id"]

    def _write_import(self, run: dict[str, Any], scenario: Scenario, table: pa.Table) -> None:
        self.save_scenario(scenario)
        self.insert_runs([{k: run[k] for k in RUN_COLUMNS}], table, ignore_existing=True)

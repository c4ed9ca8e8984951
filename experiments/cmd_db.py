"""`shardtwin db runs|export|import`: list runs, move a run in and out as Parquet.

Rules: --db defaults to ./shardtwin.duckdb; an unusable path is one StoreError line.
Import is idempotent (importing the same file twice changes nothing).
"""

from __future__ import annotations

import argparse

from events.store import DEFAULT_DB_PATH, Store


def _runs(args: argparse.Namespace) -> int:
    with Store(args.db) as st:
        rows = st.runs()
        counts = dict(st.con.execute("SELECT run_id, count(*) FROM events GROUP BY run_id").fetchall())
        print(f"{'run_id':<32} {'source':<6} {'status':<9} {'scenario':<16} {'seed':>6} {'started_at (UTC)':<26} events")
        for r in rows:
            print(f"{r.run_id:<32} {r.source.value:<6} {r.status:<9} {r.scenario_hash:<16} {r.seed:>6} "
                  f"{r.started_at.isoformat(sep=' '):<26} {counts.get(r.run_id, 0)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    with Store(args.db) as st:
        path = st.export_run(args.run_id, args.output)
        n = st.query("SELECT count(*) AS n FROM events WHERE run_id = ?", [args.run_id])[0]["n"]
    print(f"wrote {path} ({n} events of run {args.run_id})")
    return 0


def _import(args: argparse.Namespace) -> int:
    with Store(args.db) as st:
        run_id = st.import_run(args.file)
    print(f"imported run {run_id} into {args.db}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("db", help="list runs; export/import a run as Parquet")
    sub = p.add_subparsers(dest="db_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    def add(name: str, help_: str, func) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_)
        q.add_argument("--db", default=str(DEFAULT_DB_PATH), metavar="PATH", help="DuckDB file (default %(default)s)")
        q.set_defaults(func=func)
        return q

    add("runs", "list the runs in the store", _runs)
    e = add("export", "write one run (events + run + scenario) to Parquet", _export)
    e.add_argument("run_id", metavar="RUN_ID")
    e.add_argument("-o", "--output", required=True, metavar="FILE.parquet")
    i = add("import", "restore a run from an exported Parquet file", _import)
    i.add_argument("file", metavar="FILE.parquet")

"""`shardtwin distributed`: many `shardtwin test` runs over N local worker processes.

    shardtwin distributed --worker-count N [--repeat K | --split [--levels LIST]] [--ray [ADDR]] -- <test args>
    shardtwin distributed --test-file ANY --test-args "<test args>" --worker-count N   (the seed guide's form)

Rules:
- The test args are checked with `shardtwin test`'s own parser before any worker starts
  (a bad flag exits 2, one line).
- Jobs: --repeat K runs the same test K times with seeds seed, seed+1, ... (default K = N);
  --split runs one job per model of the test's --model-mix and/or per level of --levels.
- Each job is a subprocess `python -m experiments.cli test ... --ci-mode` with its own DuckDB
  file (DuckDB allows one writer per file); when all are done their runs are merged into
  the --db of the test args (export/import through Parquet). Result files go to the test's
  --results-dir (default ./test_results); a summary JSON `distributed_..._<timestamp>.json` too.
- --ray: the same jobs as Ray tasks (experiments.sweep_ray.RayRunner), at most N out at a time;
  bare --ray starts a local Ray with N CPUs and shuts it down on the way out (Ctrl-C too).
  A task may run on any node, so it cannot use the driver's disk: it runs the test in a
  node-local temp dir and returns its runs (exported Parquet) and result files as bytes; the
  driver lands them where a local job's are (workdir/job<j>.duckdb, the test's --results-dir),
  so merging, gathering and the summary are the same code for both.
- Exit: 0 when every job exited 0; 2 when a job reported bad input; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from events.store import Store
from experiments.runner import fmt_num, write_json_atomic
from experiments.sweep_ray import RayRunner
from shardtwin.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distributed", help="run `shardtwin test` over N local worker processes and summarise",
                       description="Run `shardtwin test` jobs over N local worker processes (repeat or split), "
                                   "gather their result JSON files into one summary.")
    p.add_argument("--worker-count", type=int, required=True, metavar="N", help="parallel worker processes")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--repeat", type=int, metavar="K", help="run the test K times, seeds seed..seed+K-1 (default N)")
    how.add_argument("--split", action="store_true", help="one job per --model-mix model and/or --levels level")
    p.add_argument("--levels", metavar="LIST", help="with --split: comma list of fault-tolerance levels")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the jobs as Ray tasks: on a local Ray with N CPUs, or on the cluster at ADDRESS "
                        "('auto': the one this machine belongs to); needs shardtwin[ray]")
    p.add_argument("--test-file", metavar="PATH", help="accepted for the seed guide's form; ignored")
    p.add_argument("--test-args", metavar="STRING", help="the test's flags as one string (seed guide's form)")
    p.add_argument("--json", action="store_true", help="print the summary JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("test_args_rest", nargs=argparse.REMAINDER, metavar="-- TEST ARGS")
    p.set_defaults(func=cmd_distributed)


# --- jobs ------------------------------------------------------------------------------

def _test_argv(args: argparse.Namespace) -> list[str]:
    rest = list(args.test_args_rest or [])
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if args.test_args is not None:
        try:
            given = shlex.split(args.test_args)
        except ValueError as exc:
            raise InputError(f"--test-args: {exc}") from None
        if rest:
            raise InputError("give the test's flags either after -- or in --test-args, not both")
        rest = given
    if not rest:
        raise InputError("no test args: use `-- --model NAME ...` or --test-args \"--model NAME ...\"")
    return rest


def parse_test(argv: list[str]) -> argparse.Namespace:
    """The test args as `shardtwin test` reads them (a bad flag: one line, exit 2)."""
    from experiments.cli import build_parser
    ns = build_parser().parse_args(["test", *argv])
    for flag in ("--ci-mode", "--json", "--quiet", "--list-models"):
        if getattr(ns, flag[2:].replace("-", "_")):
            raise InputError(f"{flag} is set by `shardtwin distributed` itself; remove it from the test args")
    return ns


def _without(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok == flag:
            skip = True
        elif not tok.startswith(flag + "="):
            out.append(tok)
    return out


def make_jobs(args: argparse.Namespace, argv: list[str], ns: argparse.Namespace) -> list[list[str]]:
    if args.worker_count < 1:
        raise InputError(f"--worker-count must be >= 1, got {args.worker_count}")
    if args.levels is not None and not args.split:
        raise InputError("--levels applies with --split")
    if not args.split:
        k = args.repeat if args.repeat is not None else args.worker_count
        if k < 1:
            raise InputError(f"--repeat must be >= 1, got {k}")
        base = ns.seed or 0
        return [[*_without(argv, "--seed"), "--seed", str(base + i)] for i in range(k)]
    jobs = [argv]
    if ns.model_mix is not None:
        models = [m.strip() for m in ns.model_mix.split(",") if m.strip()]
        jobs = [[*_without(j, "--model-mix"), "--model", m] for j in jobs for m in models]
    if args.levels is not None:
        from shardtwin.vocab import FaultToleranceLevel
        levels = [x.strip() for x in args.levels.split(",") if x.strip()]
        bad = [x for x in levels if x not in {m.value for m in FaultToleranceLevel}]
        if bad or not levels:
            raise InputError(f"--levels: {', '.join(bad) or 'empty'} not in "
                             + ", ".join(m.value for m in FaultToleranceLevel))
        jobs = [[*_without(j, "--fault-tolerance-level"), "--fault-tolerance-level", lv] for j in jobs for lv in levels]
    if len(jobs) == 1:
        raise InputError("--split needs --model-mix LIST in the test args and/or --levels LIST")
    return jobs


# --- running ---------------------------------------------------------------------------

class Pool:
    """N worker slots; each job is one subprocess of `shardtwin test` on a free slot."""

    def __init__(self, n: int, workdir: Path) -> None:
        self.workdir = workdir
        self.slots = list(range(n))
        self.lock = threading.Lock()
        self.procs: dict[int, subprocess.Popen] = {}

    def run_job(self, j: int, argv: list[str]) -> dict[str, Any]:
        with self.lock:
            slot = self.slots.pop(0)
        db = self.workdir / f"job{j}.duckdb"
        t0 = time.monotonic()
        try:
            proc = _start_test(argv, db)
            self.procs[j] = proc
            out, err = proc.communicate()
        finally:
            self.procs.pop(j, None)
            with self.lock:
                self.slots.append(slot)
        return _job_result(j, slot, argv, proc.returncode, time.monotonic() - t0, db, out, err)

    def kill_all(self) -> None:
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.kill()


def _start_test(argv: list[str], db: Path, results_dir: Path | None = None) -> subprocess.Popen:
    extra = ["--results-dir", str(results_dir)] if results_dir is not None else []
    cmd = [sys.executable, "-m", "experiments.cli", "test", *argv, "--ci-mode", "--db", str(db), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": _pythonpath()})


def _job_result(j: int, worker: int | str, argv: list[str], rc: int, seconds: float, db: Path, out: str,
                err: str) -> dict[str, Any]:
    """One job's entry in the summary, the same for a local and a Ray job."""
    files = [ln.strip() for ln in out.splitlines() if ln.strip().endswith(".json")]
    return {"job": j, "worker": worker, "argv": argv, "rc": rc, "seconds": seconds, "db": str(db),
            "result_files": files, "stderr_tail": err.strip().splitlines()[-3:]}


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    return root if not old else f"{root}{os.pathsep}{old}"


def run_local(jobs: list[list[str]], n: int, workdir: Path, progress: bool) -> list[dict[str, Any]]:
    pool = Pool(n, workdir)
    done: list[dict[str, Any]] = []
    t0 = time.monotonic()
    ex = ThreadPoolExecutor(max_workers=n)
    try:
        pending = {ex.submit(pool.run_job, j, argv) for j, argv in enumerate(jobs)}
        while pending:
            finished, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for fut in finished:
                r = fut.result()
                done.append(r)
                _say(progress, f"[{len(done)}/{len(jobs)}] job {r['job']} on worker {r['worker']}: "
                               f"exit {r['rc']} in {r['seconds']:.1f} s")
            if not finished:
                _say(progress, f"{len(done)}/{len(jobs)} jobs done, {time.monotonic() - t0:.0f} s")
    except BaseException:
        pool.kill_all()
        raise
    finally:
        ex.shutdown(wait=True)
    return sorted(done, key=lambda r: r["job"])


def run_ray(ray_pool: RayRunner, jobs: list[list[str]], n: int, workdir: Path, results_dir: Path,
            progress: bool) -> list[dict[str, Any]]:
    """The jobs as Ray tasks, at most n out at a time; leaving early (Ctrl-C, an error) cancels the
    ones still out, which kill their test. Entries shaped as run_local's."""
    done: list[dict[str, Any]] = []
    with closing(ray_pool.run_each(ray_job, list(enumerate(jobs)), limit=n)) as finished:
        for _, r in finished:
            done.append(_land(r, workdir, results_dir))
            _say(progress, f"[{len(done)}/{len(jobs)}] job {r['job']} on {r['worker']}: "
                           f"exit {r['rc']} in {r['seconds']:.1f} s")
    return sorted(done, key=lambda r: r["job"])


def ray_job(task: tuple[int, list[str]]) -> dict[str, Any]:
    """One job on whichever node Ray picks: the test in a node-local temp dir; its runs come back as
    exported Parquet bytes ("runs") and its result files as bytes ("files"), for _land."""
    j, argv = task
    with tempfile.TemporaryDirectory(prefix="shardtwin-ray-job-") as d:
        db, t0 = Path(d) / "job.duckdb", time.monotonic()
        proc = _start_test(argv, db, Path(d) / "results")
        try:
            out, err = _communicate(proc)
        except BaseException:     # ray.cancel raises KeyboardInterrupt here: the test goes too
            proc.kill()
            proc.wait()
            raise
        r = _job_result(j, f"{socket.gethostname()}:{os.getpid()}", argv, proc.returncode,
                        time.monotonic() - t0, db, out, err)
        runs = []
        if db.exists():
            with Store(db) as st:
                runs = [(run.run_id, st.export_run(run.run_id, Path(d) / f"{run.run_id}.parquet").read_bytes())
                        for run in st.runs()]
        files = {f: Path(f).read_bytes() for f in r["result_files"] if Path(f).is_file()}
    return {**r, "runs": runs, "files": files}


def _communicate(proc: subprocess.Popen) -> tuple[str, str]:
    """proc.communicate() in slices: ray.cancel's KeyboardInterrupt (interrupt_main, not a real
    signal) is only seen between blocking calls, so one long wait would hold it back."""
    while True:
        try:
            return proc.communicate(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def _land(r: dict[str, Any], workdir: Path, results_dir: Path) -> dict[str, Any]:
    """A Ray job's output where a local job's would be: its runs in workdir/job<j>.duckdb, its result
    files in the test's --results-dir (names kept unless taken; paths inside re-pointed there)."""
    r = dict(r)
    db = workdir / f"job{r['job']}.duckdb"
    with Store(db) as st:
        for run_id, data in r.pop("runs"):
            p = workdir / f"ray_{run_id}.parquet"
            p.write_bytes(data)
            st.import_run(p)
    files: dict[str, bytes] = r.pop("files")
    results_dir.mkdir(parents=True, exist_ok=True)
    moved: dict[str, str] = {}
    for old in files:
        name, i = Path(old), 1
        p = results_dir / name.name
        while p.exists() or str(p) in moved.values():
            p, i = results_dir / f"{name.stem}-{i}{name.suffix}", i + 1
        moved[old] = str(p)
    for old, data in files.items():
        text = data.decode()
        for a, b in moved.items():
            text = text.replace(json.dumps(a)[1:-1], json.dumps(b)[1:-1])
        write_json_atomic(Path(moved[old]), json.loads(text))
    return {**r, "db": str(db), "result_files": list(moved.values())}


def _say(enabled: bool, line: str) -> None:
    if enabled:
        sys.stderr.write(f"shardtwin distributed: {line}\n")
        sys.stderr.flush()


# --- gathering -------------------------------------------------------------------------

def merge_dbs(jobs: list[dict[str, Any]], target: str, workdir: Path) -> int:
    """Copy every run of the jobs' DuckDB files into `target`; returns the number of runs."""
    exports = []
    for r in jobs:
        if not r.get("db") or not Path(r["db"]).exists():
            continue
        with Store(r["db"]) as src:
            for run in src.runs():
                exports.append(src.export_run(run.run_id, workdir / f"{run.run_id}.parquet"))
    with Store(target) as dst:
        for p in exports:
            dst.import_run(p)
    return len(exports)


def gather(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in jobs:
        for res in (json.loads(Path(f).read_text()) for f in r["result_files"] if Path(f).exists()):
            if res.get("record", "run") != "run":
                continue
            rows.append({"job": r["job"], "worker": r["worker"], "model": res["model_name"],
                         "source": res.get("source"), "test_case": res.get("test_case"),
                         "level": res["test_parameters"]["fault_tolerance_level"],
                         "seed": res.get("seed"), "latency_p50_ms": (res.get("latency_ms") or {}).get("p50"),
                         "recovery_success_rate": res["recovery_metrics"]["recovery_success_rate"],
                         "lost": res["requests"]["lost"], "passed": res.get("passed"),
                         "run_id": res.get("run_id"), "result_file": res.get("result_file")})
    return rows


def cmd_distributed(args: argparse.Namespace) -> int:
    argv = _test_argv(args)
    ns = parse_test(argv)
    jobs = make_jobs(args, argv, ns)
    progress = not (args.quiet or args.json)
    with ExitStack() as stack:      # Ray (if any) closes last, whatever happens
        ray_pool = None if args.ray is None else \
            stack.enter_context(RayRunner(None if args.ray == "local" else args.ray, args.worker_count))
        _say(progress, f"{len(jobs)} job(s) over {args.worker_count} worker(s)"
                       + (f" on Ray ({ray_pool.workers} CPUs)" if ray_pool else ""))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shardtwin-dist-")))
        if ray_pool is not None:
            done = run_ray(ray_pool, jobs, args.worker_count, work, Path(ns.results_dir), progress)
        else:
            done = run_local(jobs, args.worker_count, work, progress)
        merged = merge_dbs(done, ns.db, work)
    runs = gather(done)
    summary = {"record": "distributed", "worker_count": args.worker_count, "jobs": done, "runs": runs,
               "merged_db": str(ns.db), "merged_runs": merged,
               "passed": all(r["rc"] == 0 for r in done)}
    ts = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = write_json_atomic(Path(ns.results_dir) / f"distributed_{len(jobs)}jobs_{ts}.json", summary)
    _print(args, summary, path)
    if summary["passed"]:
        return 0
    return 2 if any(r["rc"] == 2 for r in done) else 1


def _print(args: argparse.Namespace, s: dict[str, Any], path: Path) -> None:
    if args.json:
        sys.stdout.write(json.dumps(s, indent=2) + "\n")
        return
    if args.quiet and s["passed"]:
        return
    lines = [f"distributed: {len(s['jobs'])} job(s) on {s['worker_count']} worker(s), "
             f"{len(s['runs'])} run(s), {s['merged_runs']} merged into {s['merged_db']}",
             f"  {'job':>3} {'worker':>6} {'model':<28} {'source':<6} {'case':<22} {'level':<9}{'p50 ms':>9} {'recovery':>9} "
             f"{'lost':>5}  result"]
    for r in s["runs"]:
        lines.append(f"  {r['job']:>3} {r['worker']:>6} {r['model']:<28} {r['source'] or '':<6} "
                     f"{r['test_case'] or '':<22} {r['level']:<9}{fmt_num(r['latency_p50_ms']):>9} {fmt_num(r['recovery_success_rate']):>9} "
                     f"{r['lost']:>5}  {'ok' if r['passed'] else 'FAILED'}")
    for j in s["jobs"]:
        if j["rc"] != 0:
            lines.append(f"  job {j['job']} exited {j['rc']}: {' / '.join(j['stderr_tail']) or 'no message'}")
    lines.append(f"summary: {path}")
    sys.stdout.write("\n".join(lines) + "\n")

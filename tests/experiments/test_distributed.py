"""`shardtwin distributed`: jobs (repeat / split), worker subprocesses, gathered results,
merged DuckDB, exit codes; the seed guide's --test-file/--test-args form; the same on a local Ray."""

from __future__ import annotations

import _thread
import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from experiments.cli import main
from experiments.cmd_distributed import make_jobs, parse_test


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def summary() -> dict:
    (p,) = Path("test_results").glob("distributed_*.json")
    return json.loads(p.read_text())


def _args(**kv) -> argparse.Namespace:
    base = {"worker_count": 2, "repeat": None, "split": False, "levels": None}
    return argparse.Namespace(**{**base, **kv})


def test_jobs_repeat_with_seeds_and_split_by_models_and_levels():
    argv = ["--model", "bert-base-uncased", "--shards", "3", "--seed", "7"]
    jobs = make_jobs(_args(repeat=3), argv, parse_test(argv))
    assert [j[-1] for j in jobs] == ["7", "8", "9"] and all(j.count("--seed") == 1 for j in jobs)
    assert len(make_jobs(_args(worker_count=4), argv, parse_test(argv))) == 4     # default: one per worker
    mix = ["--model-mix", "bert,vit", "--shards", "2", "--fault-tolerance-level", "low"]
    jobs = make_jobs(_args(split=True, levels="medium,critical"), mix, parse_test(mix))
    pairs = [(j[j.index("--model") + 1], j[j.index("--fault-tolerance-level") + 1]) for j in jobs]
    assert pairs == [("bert", "medium"), ("bert", "critical"), ("vit", "medium"), ("vit", "critical")]
    assert all("--model-mix" not in j and j.count("--fault-tolerance-level") == 1 for j in jobs)


def test_guide_form_two_workers_gather_two_results(capsys):
    rc = main(["distributed", "--test-file", "fixed_web_platform/test_cross_browser_model_sharding.py",
               "--test-args", "--model bert-base-uncased --shards 3 --type layer --mode sim --iterations 3",
               "--worker-count", "2"])
    assert rc == 0
    s = summary()
    assert len(s["jobs"]) == 2 and all(j["rc"] == 0 for j in s["jobs"])
    assert len(s["runs"]) == 2 and sorted(r["seed"] for r in s["runs"]) == [0, 1]
    for r in s["runs"]:
        assert r["model"] == "bert-base-uncased" and r["source"] == "sim" and r["latency_p50_ms"] > 0
        assert Path(r["result_file"]).is_file()
    # both workers' runs merged into the test's DB (default ./shardtwin.duckdb)
    n = duckdb.connect("shardtwin.duckdb", read_only=True).execute("SELECT count(*) FROM runs").fetchone()[0]
    assert n == 2 and s["merged_runs"] == 2
    assert "2 job(s) on 2 worker(s)" in capsys.readouterr().out


def test_split_reports_a_failed_worker():
    # llama-7b cannot load (fp32 shards > a browser's 4 GB): that job's checks fail -> exit 1
    rc = main(["distributed", "--worker-count", "2", "--split", "--", "--model-mix", "bert,llama-7b", "--shards", "2",
               "--mode", "sim", "--iterations", "2", "--db", "mix.duckdb"])
    assert rc == 1
    s = summary()
    assert sorted(j["rc"] for j in s["jobs"]) == [0, 1] and not s["passed"]
    assert {r["model"] for r in s["runs"]} == {"bert-base-uncased", "llama-7b"}


def test_ray_without_package_exits_2(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)       # as on a machine without the ray extra
    assert main(["distributed", "--worker-count", "2", "--ray", "127.0.0.1:1", "--", "--model", "bert"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'shardtwin[ray]'" in err[0]


def _processes(pattern: bytes) -> dict[int, str]:
    """Live processes whose command line matches `pattern` (a zombie's is empty): pid -> command."""
    found = {}
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes() if d.name.isdigit() else b""
        except OSError:
            continue
        if re.search(pattern, cmd):
            found[int(d.name)] = cmd.replace(b"\0", b" ").decode(errors="replace")[:120]
    return found


def _no_ray_left(ray) -> None:
    assert not ray.is_initialized()
    # a Ray this process started has its session dir named ..._<our pid> (raylet, gcs_server, ...)
    assert _processes(rb"/ray/session_[0-9_-]+_%d/" % os.getpid()) == {}


JOB = ["--model", "bert-base-uncased", "--shards", "3", "--mode", "sim", "--iterations", "3"]


def test_ray_jobs_land_in_the_db_and_ray_is_closed(capsys):
    ray = pytest.importorskip("ray", reason="ray is the optional extra shardtwin[ray]")
    assert main(["distributed", "--worker-count", "2", "--ray", "--", *JOB, "--db", "ray.duckdb"]) == 0
    s = summary()
    local_keys = {"job", "worker", "argv", "rc", "seconds", "db", "result_files", "stderr_tail"}
    assert [j["job"] for j in s["jobs"]] == [0, 1] and all(set(j) == local_keys for j in s["jobs"])
    assert all(j["rc"] == 0 and j["seconds"] > 0 and len(j["result_files"]) == 1 for j in s["jobs"])
    assert len(s["runs"]) == 2 and sorted(r["seed"] for r in s["runs"]) == [0, 1]
    for r in s["runs"]:     # result files come back into the test's --results-dir, and say so
        assert Path(r["result_file"]).parent == Path("test_results") and Path(r["result_file"]).is_file()
    ids = {r for (r,) in duckdb.connect("ray.duckdb", read_only=True).execute("SELECT run_id FROM runs").fetchall()}
    assert ids == {r["run_id"] for r in s["runs"]} and s["merged_runs"] == 2
    assert "2 job(s) on 2 worker(s), 2 run(s), 2 merged into ray.duckdb" in capsys.readouterr().out
    _no_ray_left(ray)


def test_ray_interrupted_cancels_the_jobs_out_and_closes_ray(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is the optional extra shardtwin[ray]")
    from experiments.sweep_ray import RayRunner
    hold = tmp_path / "hold.fifo"
    os.mkfifo(hold)     # each job's test blocks reading it as its --profile: jobs that run until stopped
    ours = rb"experiments\.cli\x00test\x00.*" + re.escape(str(hold).encode())
    lock, state = threading.Lock(), {"main": True}
    close = RayRunner.close

    def close_and_look(self) -> None:   # a local Ray's shutdown kills its workers' children anyway;
        state["at_close"] = _processes(ours)    # a joined cluster is only left, so the tasks must
        close(self)
    monkeypatch.setattr(RayRunner, "close", close_and_look)

    def ctrl_c() -> None:     # once both jobs' tests run
        deadline = time.monotonic() + 60
        while len(_processes(ours)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with lock:
            state["running"] = len(_processes(ours))
            if state["main"]:
                _thread.interrupt_main()
    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        rc = main(["distributed", "--worker-count", "2", "--ray", "--", *JOB, "--profile", str(hold)])
    finally:
        with lock:
            state["main"] = False
        left = _processes(ours)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert state["running"] == 2 and state["at_close"] == {}    # the cancelled tasks stopped their tests
    assert rc == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "shardtwin: interrupted"
    assert left == {}       # no job's test outlived its cancelled task
    _no_ray_left(ray)


@pytest.mark.parametrize("argv", [
    ["--worker-count", "2", "--", "--model", "bert", "--shards", "x"],
    ["--worker-count", "2", "--", "--model", "bert", "--ci-mode"],
    ["--worker-count", "0", "--", "--model", "bert"],
    ["--worker-count", "2", "--split", "--", "--model", "bert"],
    ["--worker-count", "2"],
    ["--worker-count", "2", "--test-args", "--model 'bert"],
])
def test_bad_input_exits_2_before_any_worker(argv, capsys):
    try:
        rc = main(["distributed", *argv])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not Path("test_results").exists()

"""The store under hostile conditions: read-only paths, a full disk, a writer killed with -9.

Whatever happens the user meets one StoreError line (never a DuckDB exception), the file
stays readable, and a run is either closed with all its events or has none of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from events.scenario import parse_scenario
from events.schema import Event, EventKind, EventLog, numbered
from events.store import Store
from shardtwin.errors import StoreError
from shardtwin.vocab import Source

S = parse_scenario({"model": "bert-base-uncased", "workload": {"iterations": 2}})


def _log(run_id: str, n: int, pad: int = 0) -> EventLog:
    return EventLog(run_id, Source.SIM, numbered([Event(EventKind.RUN_STARTED, float(i), 0,
                                                        detail="x" * pad or None) for i in range(n)]))


def test_read_only_file_and_directory_are_one_line_errors(tmp_path):
    f = tmp_path / "ro.duckdb"
    Store(f).close()
    d = tmp_path / "rodir"
    d.mkdir()
    os.chmod(f, 0o444)
    os.chmod(d, 0o555)
    try:
        for p in (f, d / "new.duckdb"):
            with pytest.raises(StoreError, match="read-only") as exc:
                Store(p)
            assert "\n" not in str(exc.value)
        assert not (d / "new.duckdb").exists()
    finally:
        os.chmod(f, 0o644)
        os.chmod(d, 0o755)


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:120]}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> None:
    with pytest.raises(OSError), open(mnt / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)


def test_disk_full_at_finish_is_a_store_error_and_leaves_no_partial_run(tiny_fs):
    db = tiny_fs / "run.duckdb"
    store = Store(db)
    run_id = store.begin_run("sim", S)
    _fill(tiny_fs)
    with pytest.raises(StoreError, match="No space left") as exc:   # was a bare DuckDB TransactionException
        store.finish_run(run_id, _log(run_id, 20_000, pad=400), {"ok": 1})
    assert "\n" not in str(exc.value)
    with pytest.raises(StoreError):    # leaving the block tries to abort: the same one-line error
        store.__exit__(None, None, None)
    (tiny_fs / "filler").unlink()
    with Store(db) as again:
        assert again.query("SELECT count(*) AS n FROM events")[0]["n"] == 0   # nothing half-written
        assert [r.status for r in again.runs()] == ["running"]   # its writer (this process) is alive


def test_database_on_a_full_disk_cannot_be_created_one_line(tiny_fs):
    _fill(tiny_fs)
    with pytest.raises(StoreError) as exc:
        with Store(tiny_fs / "new.duckdb") as st:
            st.begin_run("sim", S)
    assert "\n" not in str(exc.value)


WRITER = """
import sys, time
from events.scenario import parse_scenario
from events.store import Store
st = Store(sys.argv[1])
st.begin_run("sim", parse_scenario({"model": "bert-base-uncased"}))
print("BEGUN", flush=True)
time.sleep(60)
"""


def test_writer_killed_with_9_leaves_a_readable_file_and_the_run_aborted_on_next_open(tmp_path):
    db = tmp_path / "k.duckdb"
    with Store(db) as st:
        done = st.begin_run("sim", S)
        st.finish_run(done, _log(done, 5))
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert p.stdout.readline().strip() == "BEGUN"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with Store(db) as st:
        runs = {r.run_id: r for r in st.runs()}
        assert runs[done].status == "finished" and len(st.run_events(done).events) == 5
        stale = [r for r in runs.values() if r.run_id != done]
        assert len(stale) == 1 and stale[0].status == "aborted"
        assert stale[0].result == {"aborted": "writer process died"}
        assert st.query("SELECT count(*) AS n FROM events WHERE run_id = ?", [stale[0].run_id])[0]["n"] == 0

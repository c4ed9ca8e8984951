"""shardtwin trace: Chrome trace-event JSON that Perfetto / chrome://tracing can open, checked structurally."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from events.store import Store
from experiments import analysis as A
from experiments.cli import build_parser, main
from experiments.cmd_sim import simulate_and_store
from experiments.flags import scenario_from_args
from experiments.trace import chrome_trace, run_timeline
from sim.profile import load_profile

SCENARIOS = {
    "crash": ["--model", "bert-base-uncased", "--shards", "3", "--iterations", "5", "--fault-tolerance",
              "--recovery-strategy", "progressive", "--crash-browser", "firefox"],
    "concurrent": ["--model", "bert-base-uncased", "--shards", "2", "--concurrent-requests", "3", "--duration", "3",
                   "--fault-tolerance", "--recovery-strategy", "failover", "--fail-shard", "1"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "runs.duckdb"
    parser = build_parser()
    out = {}
    for name, flags in SCENARIOS.items():
        args = parser.parse_args(["sim", *flags, "--db", str(path)])
        out[name] = simulate_and_store(scenario_from_args(args), load_profile(None), str(path))
    return path, out


def check_trace(tr: dict) -> None:
    """The structural rules of the trace-event format that viewers rely on."""
    assert tr["displayTimeUnit"] == "ms" and isinstance(tr["traceEvents"], list)
    evs = tr["traceEvents"]
    for e in evs:
        assert {"ph", "ts", "pid", "tid", "name"} <= set(e), e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
    named = {e["tid"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {e["tid"] for e in evs if e["ph"] != "M"} <= named
    slices = defaultdict(list)
    for e in evs:
        if e["ph"] == "X":
            assert e["dur"] >= 0
            slices[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
        if e["ph"] == "i":
            assert e["s"] == "t"
    for tid, spans in slices.items():  # no partial overlap on one track
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert b0 >= a1 or b1 <= a1, (tid, (a0, a1), (b0, b1))
    flows = defaultdict(list)
    for e in evs:
        if e["ph"] in ("s", "f"):
            flows[e["id"]].append(e)
    for fid, pair in flows.items():
        assert sorted(p["ph"] for p in pair) == ["f", "s"], fid
        s, f = sorted(pair, key=lambda p: p["ph"] != "s")
        assert f["bp"] == "e" and s["ts"] <= f["ts"] and s["name"] == f["name"] and s["cat"] == f["cat"]
        # both ends lie inside a slice of their track, so the viewer can bind them
        assert any(a <= s["ts"] <= b for a, b in slices[s["tid"]])
        assert any(a <= f["ts"] <= b for a, b in slices[f["tid"]])


def _trace(path, run_id):
    with Store(path) as st:
        con = A.connect(st)
        return chrome_trace(run_timeline(con, run_id), "test"), st.run_events(run_id)


def test_crash_run_trace_is_valid_and_complete(runs):
    path, res = runs
    tr, log = _trace(path, res["crash"]["run_id"])
    check_trace(tr)
    evs = tr["traceEvents"]
    threads = {e["args"]["name"]: e["tid"] for e in evs if e["name"] == "thread_name"}
    browsers = {e.browser for e in log.events if e.browser}
    assert browsers | {"requests"} <= set(threads)
    kinds = Counter(e.kind.value for e in log.events)
    x = Counter(e["cat"] for e in evs if e["ph"] == "X")
    assert x["shard_run"] == kinds["shard_started"] and x["shard_load"] == kinds["shard_load_started"]
    assert x["request"] == kinds["request_submitted"] == res["crash"]["requests"]["submitted"]
    fault = [e for e in evs if e["ph"] == "i" and e["name"] == "fault_injected"]
    assert len(fault) == 1 and fault[0]["tid"] == threads["firefox-1"]
    assert any(e["ph"] == "i" and e["name"] == "recovery_completed" for e in evs)
    # one flow per consecutive pair of shard runs of a request; the failed attempt is linked to its rerun
    runs_per_req = Counter(e.request_id for e in log.events if e.kind.value == "shard_started")
    assert sum(1 for e in evs if e["ph"] == "s") == sum(n - 1 for n in runs_per_req.values())
    cross = [e for e in evs if e["ph"] in ("s", "f")]
    assert len({e["tid"] for e in cross}) >= 3  # flows cross browsers


def test_concurrent_requests_get_extra_tracks(runs):
    path, res = runs
    tr, _ = _trace(path, res["concurrent"]["run_id"])
    check_trace(tr)
    names = [e["args"]["name"] for e in tr["traceEvents"] if e["name"] == "thread_name"]
    assert "requests #2" in names


def test_cli_trace_writes_loadable_json(runs, tmp_path, capsys):
    path, res = runs
    out = tmp_path / "trace.json"
    assert main(["trace", res["crash"]["run_id"], "--db", str(path), "-o", str(out)]) == 0
    check_trace(json.loads(out.read_text()))
    assert "wrote" in capsys.readouterr().out


def test_cli_trace_unknown_run_is_one_line_exit_2(runs, tmp_path, capsys):
    path, _ = runs
    assert main(["trace", "no-such-run", "--db", str(path), "-o", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run 'no-such-run'" in err
    assert not (tmp_path / "t.json").exists()

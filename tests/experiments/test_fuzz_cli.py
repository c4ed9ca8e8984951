"""Hostile input: fuzzed scenario files, sweep specs and argument lists never give a traceback.

Every command runs in-process through experiments.cli.main (a few through a subprocess):
whatever the input, the outcome is exit 0 (it was valid), or exactly one line on stderr
and exit 2 (bad input) or 1 (a run failed); never an exception or a traceback. After a
failing command the database holds no `running` row and no event of a run that is not
finished or aborted. The budget is CI-sized (hypothesis examples capped, no deadlines).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from experiments.cli import main

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VALID = {"model": "bert-base-uncased", "shards": 2, "fault_tolerance_level": "medium",
         "workload": {"kind": "iterations", "iterations": 2, "seq_len": 16},
         "faults": [{"type": "browser_crash", "at_ms": 50.0, "browser": "chromium-0"}]}
EDGE_NUMBERS = [0, -1, 1, 2, 3, 0.5, -0.0, 1e-300, 5e-324, 1e9, 2**31, 2**63, 2**64, -2**63,
                math.nan, math.inf, -math.inf]

scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_NUMBERS), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["chromium", "firefox", "layer", "wasm", "medium", "browser_crash", "gpt2",
                                     "bert-base-uncased", "closed_loop", "open_loop", "iterations", "hang"]))
structures = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10) | st.sampled_from(list(VALID)), kids,
                                                max_size=5)), max_leaves=12)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); an escaping exception fails the test."""
    try:
        rc = main(argv)
    except SystemExit as exc:          # argparse usage errors and --help
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def check(rc: int, err: str, bad: bool | None = None) -> None:
    assert "Traceback" not in err, err
    if rc != 0:
        lines = err.strip("\n").splitlines()
        assert len(lines) == 1 and lines[0].strip(), f"rc {rc}, stderr {err!r}"
        assert rc in (1, 2), rc
    if bad is True:
        assert rc == 2, (rc, err)


def check_db(db: Path) -> None:
    """No half-written state: no `running` row, no event of a run that is not closed."""
    if not db.exists():
        return
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "runs" not in tables:
            return
        assert con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0] == 0
        orphans = con.execute("SELECT count(*) FROM events e LEFT JOIN runs r USING (run_id) "
                              "WHERE r.run_id IS NULL OR r.status NOT IN ('finished', 'aborted')").fetchone()[0]
        assert orphans == 0
    finally:
        con.close()


def dump(obj, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, allow_nan=True)
    return yaml.safe_dump(obj, allow_unicode=True)


def mutate(base: dict, path: list, value):
    """A copy of base with the value at a path (existing keys/indices followed) replaced."""
    out = copy.deepcopy(base)
    node = out
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            key = sorted(node, key=str)[step % len(node)]
        elif isinstance(node, list) and node:
            key = step % len(node)
        else:
            return out
        if not isinstance(node[key], (dict, list)):
            node[key] = value
            return out
        node = node[key]
    if isinstance(node, dict):
        keys = sorted(node, key=str)
        node[keys[path[-1] % len(keys)] if keys and path[-1] >= 0 else f"extra{path[-1]}"] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return out


@pytest.fixture
def work(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(d)   # `shardtwin test` writes ./test_results
    return d


# --- scenario files -------------------------------------------------------------------

@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".yaml", ".json", ".yml", ""]))
def test_random_bytes_as_a_scenario_file(raw, suffix, work, capsys):
    f = work / f"s{suffix}"
    f.write_bytes(raw)
    rc, _, err = run(["scenario", "validate", str(f)], capsys)
    check(rc, err, bad=True)


@FUZZ
@given(obj=structures, fmt=st.sampled_from(["yaml", "json"]))
def test_random_structures_as_a_scenario_file(obj, fmt, work, capsys):
    f = work / f"s.{fmt}"
    f.write_text(dump(obj, fmt))
    rc, _, err = run(["scenario", "validate", str(f)], capsys)
    check(rc, err, bad=not (isinstance(obj, dict) and "model" in obj))


@FUZZ
@given(path=st.lists(st.integers(-1, 8), min_size=1, max_size=4), value=structures,
       fmt=st.sampled_from(["yaml", "json"]))
def test_mutated_scenarios_validate_then_simulate(path, value, fmt, work, capsys):
    f = work / f"s.{fmt}"
    f.write_text(dump(mutate(VALID, path, value), fmt))
    rc, _, err = run(["scenario", "validate", str(f)], capsys)
    check(rc, err)
    db = work / "sim.duckdb"
    rc2, _, err2 = run(["sim", "--scenario", str(f), "--iterations", "2", "--db", str(db), "--quiet"], capsys)
    check(rc2, err2)
    assert (rc == 0) == (rc2 == 0) or rc2 == 1, (rc, err, rc2, err2)   # validate and sim agree on validity
    if rc2 != 0:
        check_db(db)


# --- sweep specs ----------------------------------------------------------------------

SPEC = {"name": "fz", "base": VALID, "grid": {"fault_tolerance_level": ["low", "high"]}, "seeds": [1]}


@FUZZ
@given(obj=structures | st.fixed_dictionaries({"base": structures}, optional={"grid": structures,
                                                                               "random": structures,
                                                                               "seeds": structures}),
       fmt=st.sampled_from(["yaml", "json"]))
def test_random_sweep_specs(obj, fmt, work, capsys):
    f = work / f"spec.{fmt}"
    f.write_text(dump(obj, fmt))
    db = work / "sweep.duckdb"
    rc, _, err = run(["sweep", str(f), "--db", str(db), "--workers", "1", "--quiet"], capsys)
    check(rc, err, bad=True)
    check_db(db)


@FUZZ
@given(path=st.lists(st.integers(-1, 8), min_size=1, max_size=5), value=structures)
def test_mutated_sweep_specs(path, value, work, capsys):
    spec = mutate(SPEC, path, value)
    grid = spec.get("grid")
    assume(not isinstance(grid, dict) or all(not isinstance(v, list) or len(v) <= 3 for v in grid.values()))
    f = work / "spec.yaml"
    f.write_text(dump(spec, "yaml"))
    db = work / "sweep.duckdb"
    rc, _, err = run(["sweep", str(f), "--db", str(db), "--workers", "1", "--quiet"], capsys)
    check(rc, err)
    if rc != 0:
        check_db(db)


# --- argument lists -------------------------------------------------------------------

FLAG_VALUES = ["gpt2", "bert-base-uncased", "all-MiniLM-L6-v2", "nope", "", "-1", "0", "1", "2", "3", "0.5",
               "nan", "inf", "-inf", "1e309", "18446744073709551616", "x", "chromium,firefox", "chromium,,",
               "safari", "firefox-1", "layer", "component", "medium", "high", "text", "audio", "--", "-", "☃"]
SCENARIO_FLAGS = ["--model", "--shards", "--type", "--browsers", "--backend", "--placement", "--seed", "--mtbf",
                  "--fault-tolerance", "--fault-tolerance-level", "--recovery-strategy", "--request-timeout",
                  "--heartbeat-interval", "--detector", "--detector-timeout", "--standby-browsers", "--replicas",
                  "--max-retries", "--fault-at", "--fail-shard", "--crash-browser", "--disconnect-browser",
                  "--reconnect-delay", "--memory-pressure", "--hang-browser", "--slow-browser", "--slow-factor",
                  "--fault-duration", "--cascade-failures", "--interval", "--iterations", "--concurrent-requests",
                  "--duration", "--rate", "--arrival", "--think-time", "--batch-size", "--seq-len", "--bogus"]
COMMANDS = {
    "sim": SCENARIO_FLAGS,
    "plan": ["--model", "--shards", "--type", "--batch-size", "--seq-len", "--json", "--bogus"],
    "models": ["--type", "--names", "--json", "--bogus"],
    "test": SCENARIO_FLAGS + ["--list-models", "--model-mix", "--stress-test", "--max-connections", "--ci-mode"],
}
# bounded work: a valid line must stay a small simulation
CAPS = {"--iterations": {"1", "2", "3"}, "--duration": {"0.5", "1", "2"}, "--concurrent-requests": {"1", "2", "3"},
        "--rate": {"0.5", "1", "2", "3"}, "--mtbf": {"1", "2", "3"}, "--shards": {"1", "2", "3"},
        "--seq-len": {"1", "2", "3"}, "--batch-size": {"1", "2", "3"}}


def argv_for(cmd: str):
    tokens = st.sampled_from(COMMANDS[cmd]) | st.sampled_from(FLAG_VALUES) | st.text(max_size=6)
    return st.lists(tokens, max_size=8)


def bounded(argv: list[str]) -> bool:
    return all(argv[i + 1] in CAPS[a] for i, a in enumerate(argv[:-1]) if a in CAPS) and \
        not any(a in CAPS and i == len(argv) - 1 for i, a in enumerate(argv))


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_fuzzed_argument_lists(cmd, work, capsys):
    db = work / f"{cmd}.duckdb"
    seen = {"ok": 0, "bad": 0, "failed": 0}

    @FUZZ
    @given(argv=argv_for(cmd))
    def body(argv):
        assume(bounded(argv) and "-h" not in argv and "--help" not in argv)
        extra = {"sim": ["--db", str(db), "--quiet"], "test": ["--mode", "sim", "--db", str(db)],
                 "plan": [], "models": []}[cmd]
        rc, _, err = run([cmd, *argv, *extra], capsys)
        check(rc, err)
        seen[{0: "ok", 2: "bad", 1: "failed"}[rc]] += 1
        if rc != 0:
            check_db(db)
    body()
    assert seen["bad"] > 0, seen   # the fuzzer did reach the error paths


def test_scenario_validate_and_sweep_argument_edges(work, capsys):
    for argv in (["scenario"], ["scenario", "validate"], ["scenario", "validate", str(work)],
                 ["scenario", "validate", "/nonexistent/x.yaml"], ["scenario", "validate", "/dev/null"],
                 ["scenario", "nope"], ["sweep"], ["sweep", str(work)], ["sweep", "/dev/null"],
                 ["sweep", "x.yaml", "--workers", "-3"], ["sweep", "x.yaml", "--events", "most"], []):
        rc, _, err = run(argv, capsys)
        check(rc, err, bad=True)


# --- a few through a real subprocess (the installed entry point, real stderr) ------------

SHARDTWIN = Path(sys.executable).with_name("shardtwin")


@pytest.mark.parametrize("argv,content", [
    (["scenario", "validate", "{f}"], b"\x00\xff\xfe garbage \x81"),
    (["scenario", "validate", "{f}"], b"model: [unclosed"),
    (["sim", "--scenario", "{f}"], b'{"model": "bert-base-uncased", "shards": 1e999}'),
    (["sweep", "{f}"], b"base: 3\ngrid: {a: [1]}"),
    (["sim", "--model", "bert-base-uncased", "--shards", "x"], b""),
    (["plan", "--model", "gpt2", "--shards", "99999"], b""),
    (["models", "--type", "plants"], b""),
    (["test", "--model", "bert-base-uncased", "--iterations", "-4", "--mode", "sim"], b""),
])
def test_subprocess_bad_input_is_one_line_exit_2(argv, content, work):
    f = work / "input.json"
    f.write_bytes(content)
    db = work / "sub.duckdb"
    cmd = [str(SHARDTWIN), *(a.replace("{f}", str(f)) for a in argv)]
    if argv[0] in ("sim", "sweep"):
        cmd += ["--db", str(db)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=work)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    check_db(db)

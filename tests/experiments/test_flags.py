"""Shared scenario flags (seed guide command lines) and the scenario / db commands."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from events.scenario import ScenarioBuilder, load_scenario, scenario_hash
from events.schema import EventLog
from events.store import Store
from experiments.cli import main
from experiments.flags import add_scenario_flags, scenario_from_args
from shardtwin.errors import InputError, ScenarioError
from shardtwin.vocab import FailureType, FaultToleranceLevel, PressureLevel, ShardType, WorkloadKind


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # make argparse failures visible to pytest
        raise ValueError(message)


def scenario(cmdline: str):
    p = _Parser()
    add_scenario_flags(p)
    return scenario_from_args(p.parse_args(shlex.split(cmdline)))


GUIDE = [  # the seed guide's scenario flags, verbatim
    "--model bert-base-uncased --shards 2 --type layer --model-type text",
    "--model bert-base-uncased --shards 2 --type attention_feedforward --model-type text",
    "--model whisper-tiny --shards 2 --type component --model-type audio",
    "--model vit-base-patch16-224 --shards 2 --type component --model-type vision",
    "--model clip-vit-base-patch32 --shards 3 --type component --model-type multimodal",
    "--model bert-base-uncased --shards 3 --type layer --fault-tolerance --fail-shard 1 --recovery-time",
    "--model bert-base-uncased --shards 3 --type layer --fault-tolerance --crash-browser firefox --recovery-strategy progressive",
    "--model bert-base-uncased --shards 3 --type layer --fault-tolerance --disconnect-browser 1 --reconnect-delay 5",
    "--model bert-base-uncased --shards 3 --type layer --fault-tolerance --memory-pressure high",
    "--model bert-base-uncased --shards 4 --type layer --fault-tolerance --cascade-failures --from-shard 1 --interval 5",
    "--model bert-base-uncased --shards 3 --type layer --iterations 10",
    "--model bert-base-uncased --shards 3 --type layer --batch-size 16 --iterations 5",
    "--model bert-base-uncased --shards 3 --type layer --concurrent-requests 50 --duration 120",
    "--model llama-7b --shards 6 --type layer --duration 60",
    "--model bert-base-uncased --shards 3 --type layer --fault-tolerance-level critical",
]


@pytest.mark.parametrize("cmdline", GUIDE)
def test_seed_guide_flags_build_scenarios(cmdline):
    s = scenario(cmdline)
    assert s.shards >= 2 and s.shard_type in ShardType


def test_flag_meanings():
    s = scenario("--model bert --shards 4 --fault-tolerance --cascade-failures --from-shard 1 --interval 5")
    assert s.fault_tolerance_level is FaultToleranceLevel.MEDIUM
    (f,) = s.faults
    assert (f.type, f.shard, f.interval_ms, f.at_ms) == (FailureType.CASCADE, 1, 5000.0, 1000.0)
    s = scenario("--model bert --shards 3 --disconnect-browser 1 --reconnect-delay 5 --fault-at 2.5")
    assert (s.faults[0].browser, s.faults[0].reconnect_delay_ms, s.faults[0].at_ms) == ("1", 5000.0, 2500.0)
    s = scenario("--model bert --memory-pressure high --fault-duration 3")
    assert (s.faults[0].level, s.faults[0].browser, s.faults[0].duration_ms) == (PressureLevel.HIGH, "0", 3000.0)
    s = scenario("--model bert --shards 3 --browsers firefox,firefox,chromium --slow-browser firefox-1 --slow-factor 3")
    assert [b.value for b in s.browsers] == ["firefox", "firefox", "chromium"] and s.faults[0].factor == 3.0
    s = scenario("--model bert --rate 5 --duration 2 --arrival fixed --seq-len 64 --request-timeout 10 "
                 "--heartbeat-interval 0.5 --detector phi --detector-timeout 2 --seed 9")
    assert (s.workload.kind, s.workload.rate_per_s, s.workload.arrival, s.workload.seq_len) == \
        (WorkloadKind.OPEN_LOOP, 5.0, "fixed", 64)
    t = s.tolerance
    assert (t.request_timeout_ms, t.heartbeat_interval_ms, t.detector, t.detector_timeout_ms, s.seed) == \
        (10000.0, 500.0, "phi", 2000.0, 9)
    s = scenario("--model bert --concurrent-requests 8 --duration 30 --think-time 0.1")
    assert (s.workload.kind, s.workload.concurrency, s.workload.think_ms) == (WorkloadKind.CLOSED_LOOP, 8, 100.0)
    assert scenario("--model bert").workload.kind is WorkloadKind.ITERATIONS


@pytest.mark.parametrize("cmdline, message", [
    ("--shards 2", "--model is required"),
    ("--model whisper --model-type text", "whose type is audio"),
    ("--model bert --rate 5", "--rate needs --duration"),
    ("--model bert --rate 5 --duration 2 --iterations 3", "cannot be combined"),
    ("--model bert --concurrent-requests 4", "needs --duration"),
    ("--model bert --reconnect-delay 5", "needs --disconnect-browser"),
    ("--model bert --interval 5", "needs --cascade-failures"),
    ("--model bert --fault-at 3", "needs a fault flag"),
    ("--model bert --arrival fixed", "only with --rate"),
    ("--model bert --shards 2 --fail-shard 2", "faults[0].shard"),
    ("--model bert --crash-browser opera", "faults[0].browser"),
    ("--model bert --shards 0", "'shards'"),
    ("--model nosuch", "'model'"),
    ("--model bert --heartbeat-interval 5 --detector-timeout 1", "detector_timeout_ms"),
])
def test_flag_errors_are_one_line(cmdline, message):
    with pytest.raises(InputError) as err:
        scenario(cmdline)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_scenario_file_then_flags_override(tmp_path):
    path = tmp_path / "base.json"
    assert main(["scenario", "new", "--model", "bert", "--shards", "3", "--crash-browser", "firefox",
                 "--rate", "2", "--duration", "5", "--batch-size", "4", "-o", str(path)]) == 0
    s = scenario(f"--scenario {path} --seed 4 --seq-len 32")
    assert (s.shards, s.seed, s.workload.rate_per_s, s.workload.batch_size, s.workload.seq_len) == (3, 4, 2.0, 4, 32)
    assert [f.type for f in s.faults] == [FailureType.BROWSER_CRASH]
    s = scenario(f"--scenario {path} --fail-shard 0 --iterations 3")  # fault flags replace the list
    assert [f.type for f in s.faults] == [FailureType.SHARD_ERROR]
    assert (s.workload.kind, s.workload.iterations, s.workload.batch_size) == (WorkloadKind.ITERATIONS, 3, 4)


def test_scenario_commands(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    assert main(["scenario", "new", "--model", "bert", "--shards", "3", "--fault-tolerance",
                 "--fail-shard", "1", "-o", str(path)]) == 0
    s = load_scenario(path)
    capsys.readouterr()
    assert main(["scenario", "validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"ok {scenario_hash(s)} bert-base-uncased 3xlayer")
    assert main(["scenario", "show", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in rows] == ["scenario_compiled", "clients_scheduled", "fault_scheduled"]
    assert main(["scenario", "show", str(path)]) == 0
    assert "fault_scheduled" in capsys.readouterr().out
    path.write_text("model: bert\nshards: -1\n")
    assert main(["scenario", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardtwin: error: scenario field 'shards'") and err.count("\n") == 1


def test_db_commands(tmp_path, capsys):
    s = ScenarioBuilder("bert").build()
    db, other = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    with Store(db) as st:
        run_id = st.begin_run("sim", s)
        st.finish_run(run_id, EventLog(run_id, "sim", ()))
    out = tmp_path / "run.parquet"
    assert main(["db", "export", run_id, "-o", str(out), "--db", str(db)]) == 0
    assert main(["db", "import", str(out), "--db", str(other)]) == 0
    assert main(["db", "import", str(out), "--db", str(other)]) == 0
    capsys.readouterr()
    assert main(["db", "runs", "--db", str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith(run_id)
    assert main(["db", "export", "nope", "-o", str(out), "--db", str(db)]) == 1
    assert main(["db", "runs", "--db", str(tmp_path / "missing" / "x.duckdb")]) == 1
    assert capsys.readouterr().err.count("\n") == 2


def test_scenario_error_is_an_input_error():
    assert issubclass(ScenarioError, InputError)

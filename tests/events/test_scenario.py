"""Scenario: validation, dict/YAML/JSON round trips, hash, compile -> Arrow round trip, malformed input."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from events.scenario import (FaultSpec, Scenario, ScenarioBuilder, Tolerance, Workload, compile_scenario,
                             dump_scenario, fault_from_event, load_scenario, parse_scenario,
                             scenario_from_events, scenario_hash, scenario_to_dict)
from events.schema import EventKind, EventLog, from_arrow, to_arrow
from shardtwin.errors import InputError, ScenarioError
from shardtwin.vocab import Browser, FailureType, Source, WorkloadKind

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One dir for the module's file-writing hypothesis tests (module scope: hypothesis refuses
    function-scoped fixtures); pytest prunes its old tmp_path_factory dirs itself."""
    return tmp_path_factory.mktemp("scenario")


# ---------------------------------------------------------------- strategies

times = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-3, 1e5, allow_nan=False, allow_infinity=False)


@st.composite
def fault_dicts(draw, shards: int, browser_list: list[str]) -> dict:
    t = draw(st.sampled_from([f.value for f in FailureType]))
    d: dict = {"type": t, "at_ms": draw(times)}
    if t in ("shard_error", "cascade") or draw(st.booleans()):
        d["shard"] = draw(st.integers(0, shards - 1))
    else:
        i = draw(st.integers(0, len(browser_list) - 1))
        d["browser"] = draw(st.sampled_from([f"{browser_list[i]}-{i}", browser_list[i], str(i)]))
    if t in ("hang", "slow", "memory_pressure"):
        d["duration_ms"] = draw(st.none() | positive)
    if t == "disconnect":
        d["reconnect_delay_ms"] = draw(st.none() | times)
    if t == "memory_pressure":
        d["level"] = draw(st.sampled_from(["low", "medium", "high"]))
    if t == "slow":
        d["factor"] = draw(st.floats(1.01, 100))
    if t == "cascade":
        d["interval_ms"] = draw(positive)
        d["count"] = draw(st.none() | st.integers(1, shards - d["shard"]))
    return d


@st.composite
def workload_dicts(draw) -> dict:
    kind = draw(st.sampled_from(["iterations", "open_loop", "closed_loop"]))
    d = {"kind": kind, "batch_size": draw(st.integers(1, 64)), "seq_len": draw(st.integers(1, 512))}
    if kind == "iterations":
        d["iterations"] = draw(st.integers(1, 1000))
    elif kind == "open_loop":
        d.update(rate_per_s=draw(st.floats(0.1, 50)), duration_s=draw(st.floats(0.1, 10)),
                 arrival=draw(st.sampled_from(["poisson", "fixed"])))
    else:
        d.update(concurrency=draw(st.integers(1, 64)), duration_s=draw(positive), think_ms=draw(times))
    return d


@st.composite
def tolerance_dicts(draw) -> dict:
    a = draw(positive)
    b = a + draw(positive)
    c = b + draw(positive)
    d = {k: draw(st.none() | st.just(v)) for k, v in
         (("heartbeat_interval_ms", a), ("detector_timeout_ms", b), ("request_timeout_ms", c))}
    d["detector"] = draw(st.sampled_from([None, "fixed", "phi"]))
    if d["detector"] != "fixed":
        d["phi_threshold"] = draw(st.none() | positive)
    d.update(standby_browsers=draw(st.none() | st.integers(0, 4)), replicas=draw(st.none() | st.integers(0, 3)),
             max_retries=draw(st.none() | st.integers(0, 10)), backoff_ms=draw(st.none() | times))
    return d


@st.composite
def scenario_dicts(draw) -> dict:
    shards = draw(st.integers(1, 6))
    browsers = draw(st.just([]) | st.lists(st.sampled_from([b.value for b in Browser]), min_size=1, max_size=6))
    blist = browsers or [("chromium", "firefox")[i % 2] for i in range(shards)]
    return {
        "model": draw(st.sampled_from(["bert-base-uncased", "whisper-tiny", "vit-base-patch16-224",
                                       "clip-vit-base-patch32", "llama-7b", "all-MiniLM-L6-v2"])),
        "shards": shards,
        "shard_type": draw(st.sampled_from(["layer", "attention_feedforward", "component"])),
        "browsers": browsers,
        "backend": draw(st.sampled_from(["webgpu", "wasm", "webnn"])),
        "placement": draw(st.sampled_from(["round_robin", "capacity", "specialization", "history"])),
        "fault_tolerance_level": draw(st.sampled_from(["none", "low", "medium", "high", "critical"])),
        "recovery_strategy": draw(st.none() | st.sampled_from(["retry", "restart", "failover", "progressive"])),
        "workload": draw(workload_dicts()),
        "faults": draw(st.lists(fault_dicts(shards, blist), max_size=4)),
        "tolerance": draw(tolerance_dicts()),
        "seed": draw(st.integers(0, 2**63 - 1)),
        "name": draw(st.text(string.printable, max_size=20)),
        "mtbf_s": draw(st.none() | positive),
    }


scenarios = scenario_dicts().map(parse_scenario)

# ---------------------------------------------------------------- round trips


@SETTINGS
@given(scenario_dicts(), st.sampled_from(["yaml", "json"]))
def test_dict_object_file_round_trip(scratch, d, fmt):
    s = parse_scenario(d)
    canonical = scenario_to_dict(s)
    assert parse_scenario(canonical) == s
    assert scenario_to_dict(parse_scenario(canonical)) == canonical
    path = dump_scenario(s, scratch / f"s.{fmt}")
    assert load_scenario(path) == s


@SETTINGS
@given(scenarios)
def test_compile_arrow_round_trip(s):
    events = compile_scenario(s)
    assert events == compile_scenario(s)  # pure
    assert [e.seq for e in events] == list(range(len(events)))
    assert [e.t_ms for e in events] == sorted(e.t_ms for e in events)
    assert events[0].kind == EventKind.SCENARIO_COMPILED and events[0].details()["hash"] == scenario_hash(s)
    (log,) = from_arrow(to_arrow(EventLog("run-x", Source.SIM, events)))
    assert log.events == events
    assert scenario_from_events(log.events) == s


@SETTINGS
@given(scenarios)
def test_compiled_faults_and_workload(s):
    events = compile_scenario(s)
    faults = [e for e in events if e.kind == EventKind.FAULT_SCHEDULED]
    expected = sum((f.count or s.shards - f.shard) if f.type is FailureType.CASCADE else 1 for f in s.faults)
    assert len(faults) == expected
    for e in faults:
        spec = fault_from_event(e)
        assert spec.type is not FailureType.CASCADE and spec.at_ms == e.t_ms
    w = s.workload
    if w.kind is WorkloadKind.OPEN_LOOP:
        arrivals = [e for e in events if e.kind == EventKind.REQUEST_SCHEDULED]
        assert [e.request_id for e in arrivals] == list(range(len(arrivals)))
        assert all(0 <= e.t_ms < w.duration_s * 1000 for e in arrivals)
    kinds = {e.kind for e in events}
    assert (EventKind.WORKLOAD_DEADLINE in kinds) == (w.kind is not WorkloadKind.ITERATIONS)


@SETTINGS
@given(scenarios, st.sampled_from(["seed", "shards", "name", "backend", "at_ms"]))
def test_hash_changes_with_any_field(s, what):
    h = scenario_hash(s)
    assert h == scenario_hash(parse_scenario(scenario_to_dict(s)))
    if what == "seed":
        t = dataclasses.replace(s, seed=(s.seed + 1) % 2**63)
    elif what == "shards":
        t = dataclasses.replace(s, shards=s.shards + 1)
    elif what == "name":
        t = dataclasses.replace(s, name=s.name + "x")
    elif what == "backend":
        t = dataclasses.replace(s, backend="wasm" if s.backend != "wasm" else "webgpu")
    else:
        t = dataclasses.replace(s, faults=(*s.faults, FaultSpec("browser_crash", 5.0, shard=0)))
    assert scenario_hash(t) != h


def test_hash_is_stable_across_versions():
    # Pins the canonical form: changing a default or a field name changes stored hashes.
    assert scenario_hash(Scenario("bert-base-uncased")) == "f097de141e9a5a86"
    assert len(scenario_hash(Scenario("bert"))) == 16


def test_open_loop_arrivals_are_seeded():
    a = ScenarioBuilder("bert").open_loop(20, 5).seed(1).build()
    b = dataclasses.replace(a, seed=2)
    times_a = [e.t_ms for e in compile_scenario(a) if e.kind == EventKind.REQUEST_SCHEDULED]
    assert times_a == [e.t_ms for e in compile_scenario(a) if e.kind == EventKind.REQUEST_SCHEDULED]
    assert times_a != [e.t_ms for e in compile_scenario(b) if e.kind == EventKind.REQUEST_SCHEDULED]
    fixed = ScenarioBuilder("bert").open_loop(4, 2, arrival="fixed").build()
    assert [e.t_ms for e in compile_scenario(fixed) if e.kind == EventKind.REQUEST_SCHEDULED] == \
        [0.0, 250.0, 500.0, 750.0, 1000.0, 1250.0, 1500.0, 1750.0]


def test_cascade_expansion_and_browser_resolution():
    s = ScenarioBuilder("bert").shards(4).cascade(1, interval_s=5).crash("firefox", at_s=0.5).build()
    ev = [e for e in compile_scenario(s) if e.kind == EventKind.FAULT_SCHEDULED]
    assert [(e.t_ms, e.shard, e.browser) for e in ev] == [
        (500.0, None, "firefox-1"), (1000.0, 1, None), (6000.0, 2, None), (11000.0, 3, None)]
    assert all(e.details()["cascade"] for e in ev[1:])
    assert s.browser_ids() == ("chromium-0", "firefox-1", "chromium-2", "firefox-3")
    assert [s.resolve_browser(x) for x in ("firefox", "firefox-3", "2", "9", "edge")] == [1, 3, 2, None, None]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("mapping, field", [
    ({"model": "bert", "shards": 0}, "shards"),
    ({"model": "bert", "shards": True}, "shards"),
    ({"model": "no-such-model"}, "model"),
    ({"shards": 2}, "model"),
    ({"model": "bert", "colour": "red"}, "<root>"),
    ({"model": "bert", "browsers": ["chromium", "opera"]}, "browsers[1]"),
    ({"model": "bert", "workload": {"kind": "open_loop", "rate_per_s": 0, "duration_s": 1}}, "workload.rate_per_s"),
    ({"model": "bert", "workload": {"kind": "open_loop", "rate_per_s": 1}}, "workload.duration_s"),
    ({"model": "bert", "workload": {"iterations": 5, "rate_per_s": 2.0}}, "workload.rate_per_s"),
    ({"model": "bert", "workload": {"kind": "open_loop", "rate_per_s": 1e6, "duration_s": 1e6}}, "workload.rate_per_s"),
    ({"model": "bert", "faults": [{"type": "hang", "at_ms": 0, "shard": 0},
                                  {"type": "browser_crash", "at_ms": 1, "shard": 0, "level": "high"}]}, "faults[1].level"),
    ({"model": "bert", "faults": [{"type": "memory_pressure", "at_ms": 0, "shard": 0}]}, "faults[0].level"),
    ({"model": "bert", "faults": [{"type": "shard_error", "at_ms": -1, "shard": 0}]}, "faults[0].at_ms"),
    ({"model": "bert", "faults": [{"type": "shard_error", "at_ms": 0, "shard": 2}]}, "faults[0].shard"),
    ({"model": "bert", "faults": [{"type": "hang", "at_ms": 0}]}, "faults[0].shard"),
    ({"model": "bert", "faults": [{"type": "hang", "at_ms": 0, "browser": "safari"}]}, "faults[0].browser"),
    ({"model": "bert", "faults": [{"type": "slow", "at_ms": 0, "shard": 0, "factor": 0.5}]}, "faults[0].factor"),
    ({"model": "bert", "faults": [{"type": "cascade", "at_ms": 0, "shard": 1, "interval_ms": 5, "count": 2}]},
     "faults[0].count"),
    ({"model": "bert", "faults": [{"type": "explode", "at_ms": 0}]}, "faults[0].type"),
    ({"model": "bert", "faults": [{"at_ms": 0}]}, "faults[0].type"),
    ({"model": "bert", "tolerance": {"heartbeat_interval_ms": 500, "detector_timeout_ms": 100}},
     "tolerance.detector_timeout_ms"),
    ({"model": "bert", "tolerance": {"detector": "fixed", "phi_threshold": 8}}, "tolerance.phi_threshold"),
    ({"model": "bert", "tolerance": {"retries": 3}}, "tolerance"),
    ({"model": "bert", "mtbf_s": float("nan")}, "mtbf_s"),
    ([1, 2], "<root>"),
])
def test_invalid_fields_are_named(mapping, field):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(mapping)
    assert err.value.field == field
    assert "\n" not in str(err.value)


def test_constructors_validate_and_normalise():
    f = FaultSpec("slow", 10, browser="0")
    assert f.type is FailureType.SLOW and f.factor == 4.0 and isinstance(f.at_ms, float)
    assert Scenario("bert", browsers=["firefox"]).browsers == (Browser.FIREFOX,)
    assert Scenario("bert").model == "bert-base-uncased"
    with pytest.raises(ScenarioError):
        Workload(kind="closed_loop")
    with pytest.raises(ScenarioError):
        Tolerance(max_retries=-1)
    with pytest.raises(ScenarioError):
        Scenario("bert", workload={"iterations": 3})
    with pytest.raises(AttributeError):
        Scenario("bert").shards = 3  # frozen


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)


@SETTINGS
@given(scenario_dicts(), st.data())
def test_malformed_mappings_give_one_line_scenario_errors(d, data):
    d = json.loads(json.dumps(d))
    target = d
    path = data.draw(st.sampled_from(["", "workload", "tolerance", "faults"]))
    if path == "faults":
        target = data.draw(st.sampled_from(d["faults"])) if d["faults"] else d
    elif path:
        target = d[path]
    action = data.draw(st.sampled_from(["replace", "add", "delete"]))
    keys = sorted(target) or ["model"]
    key = data.draw(st.sampled_from(keys)) if action != "add" else data.draw(st.text(max_size=6))
    if action == "delete":
        target.pop(key, None)
    else:
        target[key] = data.draw(json_values)
    try:
        parse_scenario(d)
    except InputError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | json_values.map(lambda v: json.dumps(v).encode()), st.sampled_from(["yaml", "json", "yml"]))
def test_random_files_give_input_errors(scratch, raw, ext):
    path = scratch / f"random.{ext}"
    path.write_bytes(raw)
    try:
        load_scenario(path)
    except InputError as exc:
        assert "\n" not in str(exc)


def test_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: bert\nshards: [1,\n")
    with pytest.raises(InputError, match=r"bad\.yaml: line \d+"):
        load_scenario(bad)
    badj = tmp_path / "bad.json"
    badj.write_text('{"model": "bert",\n "shards": }')
    with pytest.raises(InputError, match=r"bad\.json: line 2"):
        load_scenario(badj)
    with pytest.raises(InputError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(InputError, match="empty"):
        load_scenario(tmp_path / "empty.yaml")


def test_builder_reads_like_the_guide():
    s = (ScenarioBuilder("bert").shards(3).layer().fault_tolerance("high", "progressive")
         .crash("firefox").disconnect("1", reconnect_after_s=5).closed_loop(4, 10).requests(2, 64)
         .tolerance(detector="phi", phi_threshold=8.0).seed(7).build())
    assert s.workload == Workload(WorkloadKind.CLOSED_LOOP, concurrency=4, duration_s=10.0, batch_size=2, seq_len=64)
    assert [f.type for f in s.faults] == [FailureType.BROWSER_CRASH, FailureType.DISCONNECT]
    assert s.faults[1].reconnect_delay_ms == 5000.0 and s.tolerance.detector == "phi"

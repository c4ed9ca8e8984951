"""Scenario <-> plain dict <-> YAML/JSON file, the content hash, and a fluent builder.

Rules:
- The file format is the canonical dict: nested mappings, enums as their string
  values, every default present on output. On input, missing fields take their
  defaults and unknown fields are rejected naming the field path and the known fields.
- Every failure to read or parse a file is an InputError/ScenarioError of one line
  (file name, and line for YAML/JSON syntax errors); nothing else escapes.
- `.json` files are read and written as JSON, anything else as YAML.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from events.schema import canonical_json
from events.scenario_types import FaultSpec, Scenario, Tolerance, Workload
from shardtwin.errors import InputError, ScenarioError
from shardtwin.vocab import FailureType, WorkloadKind


def _plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [_plain(x) for x in obj]
    return obj


def scenario_to_dict(s: Scenario) -> dict[str, Any]:
    """The canonical dict: every field, defaults included, enums as strings, tuples as lists."""
    return _plain(s)


def fault_to_dict(f: FaultSpec) -> dict[str, Any]:
    return _plain(f)


def scenario_hash(s: Scenario) -> str:
    return hashlib.sha256(canonical_json(scenario_to_dict(s)).encode()).hexdigest()[:16]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(cls: type, m: object, path: str, nested: Mapping[str, Callable[[Any, str], Any]] = {}) -> Any:
    """cls(**m) with unknown keys rejected and field paths prefixed onto errors."""
    if not isinstance(m, Mapping):
        raise ScenarioError(path or "<root>", m, f"a mapping of {cls.__name__} fields")
    known = [f.name for f in fields(cls)]
    for key in m:
        if key not in known:
            raise ScenarioError(path or "<root>", key, "one of the fields " + ", ".join(known))
    for f in fields(cls):
        if f.name not in m and f.default is MISSING and f.default_factory is MISSING:
            raise ScenarioError(_join(path, f.name), None, "a value (required field)")
    kwargs = {k: nested[k](v, _join(path, k)) if k in nested else v for k, v in m.items()}
    try:
        return cls(**kwargs)
    except ScenarioError as exc:
        if not path:
            raise
        raise ScenarioError(_join(path, exc.field), exc.value, exc.accepted) from None


def _faults(v: object, path: str) -> tuple[FaultSpec, ...]:
    if not isinstance(v, (list, tuple)):
        raise ScenarioError(path, v, "a list of fault mappings")
    return tuple(_build(FaultSpec, f, f"{path}[{i}]") for i, f in enumerate(v))


def _list(v: object, path: str) -> Any:
    if not isinstance(v, (list, tuple)):
        raise ScenarioError(path, v, "a list")
    return tuple(v)


_NESTED = {
    "workload": lambda v, p: _build(Workload, v, p),
    "tolerance": lambda v, p: _build(Tolerance, v, p),
    "faults": _faults,
    "browsers": _list,
}


def parse_scenario(mapping: object) -> Scenario:
    """A Scenario from a plain mapping (file contents); ScenarioError names the bad field path."""
    return _build(Scenario, mapping, "", _NESTED)


# --- files ---

def _syntax_error(path: Path, exc: Exception) -> InputError:
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, json.JSONDecodeError):
        return InputError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}")
    if mark is not None:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        return InputError(f"{path}: line {mark.line + 1}: invalid YAML: {problem}")
    return InputError(f"{path}: invalid {'JSON' if path.suffix == '.json' else 'YAML'}: {type(exc).__name__}")


def load_scenario(path: str | Path) -> Scenario:
    """Read a YAML or JSON scenario file; any problem is one InputError/ScenarioError line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read scenario file {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise _syntax_error(p, exc) from None
    if data is None:
        raise InputError(f"{p}: empty scenario file; expected a mapping with at least 'model'")
    return parse_scenario(data)


def dump_scenario(s: Scenario, path: str | Path) -> Path:
    """Write the canonical dict as YAML (or JSON for a .json path)."""
    p = Path(path)
    d = scenario_to_dict(s)
    text = (json.dumps(d, indent=2) + "\n") if p.suffix.lower() == ".json" \
        else yaml.safe_dump(d, sort_keys=False, default_flow_style=False)
    try:
        p.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write scenario file {p}: {exc.strerror or exc}") from None
    return p


# --- builder ---

class ScenarioBuilder:
    """Readable construction: ScenarioBuilder('bert').shards(3).layer().crash('firefox', at_s=1).build().

    Every method returns the builder; build() validates through parse_scenario, so
    errors name the same field paths as a file would.
    """

    def __init__(self, model: str) -> None:
        self._d: dict[str, Any] = {"model": model, "faults": [], "workload": {}, "tolerance": {}}

    def _with(self, **kv: Any) -> "ScenarioBuilder":
        self._d.update(kv)
        return self

    def shards(self, n: int) -> "ScenarioBuilder":
        return self._with(shards=n)

    def layer(self) -> "ScenarioBuilder":
        return self._with(shard_type="layer")

    def attention_feedforward(self) -> "ScenarioBuilder":
        return self._with(shard_type="attention_feedforward")

    def component(self) -> "ScenarioBuilder":
        return self._with(shard_type="component")

    def browsers(self, *kinds: str) -> "ScenarioBuilder":
        return self._with(browsers=[str(k) for k in kinds])

    def backend(self, b: str) -> "ScenarioBuilder":
        return self._with(backend=str(b))

    def placement(self, p: str) -> "ScenarioBuilder":
        return self._with(placement=str(p))

    def fault_tolerance(self, level: str = "medium", strategy: str | None = None) -> "ScenarioBuilder":
        return self._with(fault_tolerance_level=str(level), recovery_strategy=strategy)

    def seed(self, n: int) -> "ScenarioBuilder":
        return self._with(seed=n)

    def name(self, text: str) -> "ScenarioBuilder":
        return self._with(name=text)

    def mtbf(self, seconds: float | None) -> "ScenarioBuilder":
        return self._with(mtbf_s=seconds)

    def iterations(self, n: int) -> "ScenarioBuilder":
        return self._workload(kind=WorkloadKind.ITERATIONS.value, iterations=n)

    def open_loop(self, rate_per_s: float, duration_s: float, arrival: str = "poisson") -> "ScenarioBuilder":
        return self._workload(kind=WorkloadKind.OPEN_LOOP.value, rate_per_s=rate_per_s,
                              duration_s=duration_s, arrival=arrival)

    def closed_loop(self, concurrency: int, duration_s: float, think_ms: float = 0.0) -> "ScenarioBuilder":
        return self._workload(kind=WorkloadKind.CLOSED_LOOP.value, concurrency=concurrency,
                              duration_s=duration_s, think_ms=think_ms)

    def requests(self, batch_size: int = 1, seq_len: int = 128) -> "ScenarioBuilder":
        w = {k: v for k, v in self._d["workload"].items()}
        self._d["workload"] = {**w, "batch_size": batch_size, "seq_len": seq_len}
        return self

    def _workload(self, **kv: Any) -> "ScenarioBuilder":
        keep = {k: self._d["workload"][k] for k in ("batch_size", "seq_len") if k in self._d["workload"]}
        self._d["workload"] = {**keep, **kv}
        return self

    def tolerance(self, **overrides: Any) -> "ScenarioBuilder":
        self._d["tolerance"].update(overrides)
        return self

    def fault(self, type: str | FailureType, at_s: float = 1.0, **params: Any) -> "ScenarioBuilder":
        """Any fault; params are FaultSpec fields (shard, browser, duration_ms, level, ...)."""
        self._d["faults"].append({"type": str(type), "at_ms": at_s * 1000.0, **params})
        return self

    def fail_shard(self, shard: int, at_s: float = 1.0) -> "ScenarioBuilder":
        return self.fault(FailureType.SHARD_ERROR, at_s, shard=shard)

    def crash(self, browser: str, at_s: float = 1.0) -> "ScenarioBuilder":
        return self.fault(FailureType.BROWSER_CRASH, at_s, browser=browser)

    def disconnect(self, browser: str, at_s: float = 1.0, reconnect_after_s: float | None = None) -> "ScenarioBuilder":
        delay = None if reconnect_after_s is None else reconnect_after_s * 1000.0
        return self.fault(FailureType.DISCONNECT, at_s, browser=browser, reconnect_delay_ms=delay)

    def cascade(self, from_shard: int, interval_s: float, at_s: float = 1.0, count: int | None = None) -> "ScenarioBuilder":
        return self.fault(FailureType.CASCADE, at_s, shard=from_shard, interval_ms=interval_s * 1000.0, count=count)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                for k, v in self._d.items()}

    def build(self) -> Scenario:
        return parse_scenario(self.to_dict())

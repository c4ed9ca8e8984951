"""Sweep specs: a YAML/JSON file -> the ordered list of validated sweep points.

Rules:
- A spec has `base` (a scenario mapping, or a path to a scenario file), optional `grid`
  (dotted path -> list of values; cartesian product in key order), optional `random`
  (`samples`, `seed`, `params`: path -> {uniform: [a, b]} | {int: [a, b]} | {choice: [...]}),
  `seeds: [...]` or `repeats: N` (seed = base seed + i), optional `profile` (a JSON file)
  and `profile_grid` (dotted path into the profile -> list), optional `name`.
  Unknown keys are rejected, listing the known ones.
- Expansion order is fixed: grid combination (row-major) x random sample x profile
  combination x seed. Random values come from numpy's default_rng(random.seed), drawn
  sample by sample, parameter by parameter in spec order: same spec, same points.
- Dotted paths: `a.b`, `faults[0].at_ms`, `browsers[1]`. Missing mappings on the way are
  created (so `tolerance.detector_timeout_ms` works on a base without `tolerance`);
  a list index must exist in the base.
- Every point is validated before anything runs (scenario fields, shard plan, profile and
  its browsers). Any problem is one ConfigError/ScenarioError line naming the spec file,
  the spec path (e.g. `grid.workload.iterations`) and the point; exit code 2.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from events.scenario import Scenario, load_scenario, parse_scenario, scenario_to_dict
from events.schema import canonical_json
from shardtwin.errors import ConfigError, InputError, ShardtwinError
from sim.profile import DEFAULT_PROFILE, Profile, load_profile, profile_from_dict

SPEC_KEYS = ("name", "base", "grid", "random", "seeds", "repeats", "profile", "profile_grid")
RANDOM_KEYS = ("samples", "seed", "params")
DISTRIBUTIONS = ("uniform", "int", "choice")
PROFILE_PREFIX = "profile."
MAX_POINTS = 1_000_000
_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[\d+\])*)")


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One run of a sweep: the scenario (seed included), the profile, and what was swept."""

    index: int
    scenario: Scenario
    profile: Profile
    params: Mapping[str, Any] = field(default_factory=dict)   # spec path -> value ("seed", "profile.x")


@dataclass(frozen=True, slots=True)
class Sweep:
    name: str
    spec: Mapping[str, Any]           # the spec as read (canonical JSON goes to the sweeps table)
    points: tuple[SweepPoint, ...]
    swept: tuple[str, ...]            # parameter names in summary order


# --- dotted paths ---

def parse_path(path: object, where: str) -> tuple[str | int, ...]:
    """`faults[0].at_ms` -> ('faults', 0, 'at_ms'); ConfigError naming `where` if malformed."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: parameter path {path!r} must be a non-empty dotted path like workload.iterations")
    out: list[str | int] = []
    for part in path.split("."):
        m = _TOKEN.fullmatch(part)
        if m is None:
            raise ConfigError(f"{where}: bad parameter path {path!r} (part {part!r}); "
                              "expected names and [index]es joined by dots, e.g. faults[0].at_ms")
        out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(out)


def set_path(doc: dict[str, Any], path: tuple[str | int, ...], value: Any, where: str) -> None:
    """Set doc[path] = value in place (creating missing mappings); ConfigError naming `where`."""
    node: Any = doc
    for i, key in enumerate(path):
        last = i == len(path) - 1
        shown = _show(path[:i + 1])
        if isinstance(key, int):
            if not isinstance(node, list):
                raise ConfigError(f"{where}: {_show(path[:i])} is not a list in the base (cannot index [{key}])")
            if key >= len(node):
                raise ConfigError(f"{where}: {shown} does not exist; the base has {len(node)} item(s) there")
        elif not isinstance(node, dict):
            raise ConfigError(f"{where}: {_show(path[:i])} is not a mapping in the base (cannot set {key!r})")
        elif not last and node.get(key) is None:
            node[key] = [] if isinstance(path[i + 1], int) else {}
        if last:
            node[key] = copy.deepcopy(value)
        else:
            node = node[key]


def _show(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if j else k) for j, k in enumerate(path)) or "<root>"


# --- reading the file ---

def load_spec(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The spec mapping and its directory; one InputError line for any read/syntax problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read sweep spec {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"sweep spec {p}: not UTF-8 text") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputError(f"{p}: {line}invalid YAML: {getattr(exc, 'problem', None) or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep spec {p}: expected a mapping with 'base' and 'grid' and/or 'random'")
    return data, p.parent


# --- expansion ---

def _values(where: str, v: object) -> list[Any]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: expected a non-empty list of values, got {v!r}")
    return v


def _axes(spec: Mapping[str, Any], key: str, where: str) -> list[tuple[str, tuple, list[Any]]]:
    """(name, parsed path, values) per entry of a grid-like section."""
    section = spec.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {key} must be a mapping of dotted.path: [values]")
    return [(name, parse_path(name, f"{where}: {key}"), _values(f"{where}: {key}.{name}", vals))
            for name, vals in section.items()]


def _int_field(where: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return v


def _draw(rng: np.random.Generator, where: str, dist: object) -> Any:
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected exactly one of {{uniform: [a, b]}}, {{int: [a, b]}}, "
                          f"{{choice: [...]}}, got {dist!r}")
    (kind, arg), = dist.items()
    if kind == "choice":
        vals = _values(where + ".choice", arg)
        return copy.deepcopy(vals[int(rng.integers(len(vals)))])
    num = int if kind == "int" else (int, float)
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, num) and not isinstance(x, bool) for x in arg)
            and arg[0] <= arg[1]):
        raise ConfigError(f"{where}.{kind}: expected [low, high] {'integers' if kind == 'int' else 'numbers'} "
                          f"with low <= high, got {arg!r}")
    if kind == "int":
        return int(rng.integers(arg[0], arg[1] + 1))
    return float(rng.uniform(arg[0], arg[1]))


def _random_samples(spec: Mapping[str, Any], where: str) -> tuple[list[str], list[list[tuple[tuple, Any]]]]:
    """(param names, per sample [(path, value)]); one empty sample when there is no `random`."""
    r = spec.get("random")
    if r is None:
        return [], [[]]
    if not isinstance(r, dict) or set(r) - set(RANDOM_KEYS) or "samples" not in r or "params" not in r:
        raise ConfigError(f"{where}: random must be a mapping with samples, params and optional seed "
                          f"(known keys: {', '.join(RANDOM_KEYS)})")
    n = _int_field(f"{where}: random.samples", r["samples"], 1)
    rng = np.random.default_rng(_int_field(f"{where}: random.seed", r.get("seed", 0), 0))
    params = r["params"]
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: random.params must be a non-empty mapping of dotted.path: distribution")
    paths = {name: parse_path(name, f"{where}: random.params") for name in params}
    samples = [[(paths[name], _draw(rng, f"{where}: random.params.{name}", dist)) for name, dist in params.items()]
               for _ in range(n)]
    return list(params), samples


def _seeds(spec: Mapping[str, Any], base_seed: int, where: str) -> list[int] | None:
    if "seeds" in spec and "repeats" in spec:
        raise ConfigError(f"{where}: give seeds or repeats, not both")
    if "seeds" in spec:
        seeds = _values(f"{where}: seeds", spec["seeds"])
        return [_int_field(f"{where}: seeds", s, 0) for s in seeds]
    if "repeats" in spec:
        return [base_seed + i for i in range(_int_field(f"{where}: repeats", spec["repeats"], 1))]
    return None


def _base(spec: Mapping[str, Any], spec_dir: Path, where: str) -> dict[str, Any]:
    base = spec.get("base")
    if isinstance(base, str):
        p = Path(base) if Path(base).exists() else spec_dir / base
        return scenario_to_dict(load_scenario(p))
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base must be a scenario mapping (or a scenario file path), got {base!r}")
    try:
        return scenario_to_dict(parse_scenario(copy.deepcopy(base)))
    except ShardtwinError as exc:
        raise ConfigError(f"{where}: base: {exc}") from None


def _profile(spec: Mapping[str, Any], spec_dir: Path, where: str) -> Profile:
    ref = spec.get("profile")
    if ref is None:
        return DEFAULT_PROFILE
    if not isinstance(ref, str):
        raise ConfigError(f"{where}: profile must be a path to a profile JSON file, got {ref!r}")
    return load_profile(ref if Path(ref).exists() else spec_dir / ref)


def expand(spec: Mapping[str, Any], spec_dir: Path | str = ".", where: str = "sweep spec") -> Sweep:
    """All points of a spec, validated; `where` (the file name) prefixes every error."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SPEC_KEYS)}")
    spec_dir = Path(spec_dir)
    base, profile = _base(spec, spec_dir, where), _profile(spec, spec_dir, where)
    grid, pgrid = _axes(spec, "grid", where), _axes(spec, "profile_grid", where)
    rnames, samples = _random_samples(spec, where)
    seeds = _seeds(spec, base["seed"], where)
    names = [n for n, _, _ in grid] + rnames + [PROFILE_PREFIX + n for n, _, _ in pgrid]
    dupes = sorted({n for n in names if names.count(n) > 1} | ({"seed"} & set(names) if seeds else set()))
    if dupes:
        raise ConfigError(f"{where}: parameter(s) {', '.join(dupes)} swept twice (grid, random, seeds/repeats)")
    total = _count(grid) * len(samples) * _count(pgrid) * len(seeds or [None])
    if total > MAX_POINTS:
        raise ConfigError(f"{where}: {total} points; at most {MAX_POINTS} per sweep")
    points = _points(base, profile, grid, samples, rnames, pgrid, seeds, where)
    swept = tuple(names + (["seed"] if seeds and len(seeds) > 1 else []))
    return Sweep(str(spec.get("name") or ""), dict(spec), tuple(points), swept)


def _count(axes: list) -> int:
    n = 1
    for _, _, vals in axes:
        n *= len(vals)
    return n


def _points(base, profile, grid, samples, rnames, pgrid, seeds, where) -> list[SweepPoint]:
    points: list[SweepPoint] = []
    origin = {**{n: "grid." for n, _, _ in grid}, **{n: "random.params." for n in rnames},
              **{PROFILE_PREFIX + n: "profile_grid." for n, _, _ in pgrid}, "seed": "seeds/repeats: "}
    profiles = [_profile_point(profile, pgrid, combo, where) for combo in itertools.product(*(v for _, _, v in pgrid))]
    scenario_cache: dict[str, Scenario] = {}
    for combo in itertools.product(*(v for _, _, v in grid)):
        for sample in samples:
            doc = copy.deepcopy(base)
            params: dict[str, Any] = {}
            for (name, path, _), value in zip(grid, combo):
                set_path(doc, path, value, f"{where}: grid.{name}")
                params[name] = value
            for name, (path, value) in zip(rnames, sample):
                set_path(doc, path, value, f"{where}: random.params.{name}")
                params[name] = value
            for prof, pparams in profiles:
                for seed in seeds or [doc.get("seed", 0)]:
                    if seeds is not None:
                        doc["seed"] = seed
                    full = {**params, **pparams, **({"seed": seed} if seeds is not None else {})}
                    s = _scenario(doc, prof, scenario_cache, f"{where}: point {len(points)} {_label(full, origin)}")
                    points.append(SweepPoint(len(points), s, prof, full))
    return points


def _label(params: Mapping[str, Any], origin: Mapping[str, str]) -> str:
    """`(grid.workload.iterations=0, seeds/repeats: seed=3)`: the spec paths that made a point."""
    shown = [f"{origin[k].replace(PROFILE_PREFIX, '')}{k.removeprefix(PROFILE_PREFIX) if origin[k] == 'profile_grid.' else k}={v!r}"
             for k, v in params.items()]
    return "(" + ", ".join(shown) + ")" if shown else "(base)"


def _profile_point(base: Profile, pgrid, combo, where: str) -> tuple[Profile, dict[str, Any]]:
    if not pgrid:
        return base, {}
    doc = base.to_dict()
    params = {}
    for (name, path, _), value in zip(pgrid, combo):
        set_path(doc, path, value, f"{where}: profile_grid.{name}")
        params[PROFILE_PREFIX + name] = value
    try:
        return profile_from_dict(doc), params
    except (ShardtwinError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: profile_grid {params}: {exc}") from None


def _scenario(doc: dict[str, Any], profile: Profile, cache: dict[str, Scenario], where: str) -> Scenario:
    """parse_scenario(doc) + shard plan + profile browsers, or one ConfigError line naming `where`."""
    key = canonical_json(doc) + "|" + str(id(profile))
    if key in cache:
        return cache[key]
    from sim.run import plan_for
    try:
        s = parse_scenario(copy.deepcopy(doc))
        plan_for(s)
        for kind in {str(b) for b in s.browser_list()}:
            profile.rate(kind, str(s.backend))
    except ShardtwinError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    cache[key] = s
    return s


def load_sweep(path: str | Path) -> Sweep:
    spec, spec_dir = load_spec(path)
    return expand(spec, spec_dir, where=f"sweep spec {path}")

"""Fit the simulator's profile from stored runs' events (real runs, or sim runs in tests).

Rules:
- Inputs are events only (plus each run's scenario for its shard plan and settings): the
  same code fits real runs and sim runs, so a test can check that a fit of sim-made events
  recovers the profile that made them.
- Compute: per (browser kind, backend), page-measured compute ms of warm, uncontended shard
  runs ~ sum over operator classes of GFLOP_c * ms_per_GFLOP_c + run overhead, robust least
  squares (soft-L1 on log residuals: host noise is multiplicative) with a prior toward the base
  profile for classes the data cannot separate (ms_per_GFLOP = base * exp(theta), prior
  residual PRIOR_WEIGHT[c] * sqrt(n) * theta). Samples are first normalised to an idle host by
  the run's measured background load (host_background) and the renderer's CPU weight.
- Hop: (SHARD_COMPLETED - SHARD_STARTED) - compute ~ per-kind intercept + bytes / bandwidth.
- Loads: SHARD_LOADED ms ~ create + MB * per_mb (pooled), times a per-kind scale.
- Launch: BROWSER_READY ms per kind (median, robust sd). Crash notice: FAULT_INJECTED ->
  FAILURE_DETECTED of a browser_crash. Heartbeats: gaps outside shard loads, minus the
  interval, kept as empirical quantiles. Warmup: first run of a shard in a page vs warm fit.
  Contention: warm runs overlapping another page's compute -> effective host cores.
- Parameters without data keep the base profile's value; residuals say which were fitted.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable

import numpy as np
from scipy.optimize import least_squares

from coordinator.settings import resolve
from events.store import Store
from models.partition import make_plan
from shardtwin.errors import InputError
from sim.profile import (AGED_PAGE_MS, DEFAULT_PROFILE, LATE_SESSION_RUNS, LAUNCH_NOISE_WINDOW_MS,
                         SERVED_IDLE_MS, STEADY_NOISE_RUNS, WARM_NOISE_WINDOW_MS, BackendRate, Profile,
                         background_factor, heap_growth, warm_time)

CLASSES = ("matmul", "attention", "elementwise", "conv")
RATE_FIELD = {"matmul": "matmul_gflops", "attention": "attention_gflops", "elementwise": "elementwise_gflops",
              "conv": "conv_gflops"}
# Prior weight on the log-deviation of a class's rate from the base profile. Matmul and attention
# FLOPs vary independently across shards and sequence lengths (attention ~ seq^2): the data decide.
# Elementwise FLOPs keep a near-fixed ratio to matmul inside a layer: not identifiable, the prior holds.
PRIOR_WEIGHT = {"matmul": 0.01, "attention": 0.01, "elementwise": 0.5, "conv": 0.5}
QUANTILES = 21           # heartbeat extra-delay quantiles kept in the profile
# Renderer CPU weights tried against runs under different measured background load (CFS shares;
# Chromium backgrounds some renderers at nice 5 ~ 0.33). The weight that makes the runs agree best wins.
WEIGHTS = (1.0, 0.7, 0.5, 0.33, 0.2)
STEADY_INDEX = 4         # runs in a page before its compute speed is steady (Chromium tier-up)
STEADY_AFTER_MS = 1000.0  # ... or ms after its first run ended (the tier-up is over time: fit_warmup_time)
NOISE_INDEX = STEADY_NOISE_RUNS   # runs in a page before its run-to-run noise is steady (tier-up bumps at 4-6)
NOISE_MIN_SAMPLES = 30   # fewer steady runs of a kind: keep the lognormal compute_cv model
LAUNCH_NOISE_MIN_SAMPLES = 20
# windows after startup work rather than the work itself: after a BROWSER_READY ("tail") and after a
# page's first session create ("warm": its optimising WASM compile on background threads)
AFTERMATH = ("tail", "warm")
TAIL_WINDOW_MS = LAUNCH_NOISE_WINDOW_MS   # after a BROWSER_READY: the launched browser may still be working
TAIL_WINDOWS = (250.0, 500.0, 750.0, 1000.0, 1500.0)
SETTLE_TAUS = (500.0, 1000.0, 1500.0, 2000.0, 3000.0)


@lru_cache(maxsize=256)
def _plan(model: str, shards: int, shard_type: str, batch: int, seq: int):
    return make_plan(model, shards, shard_type, batch_size=batch, seq_len=seq)


@dataclass
class Sample:
    run_id: str
    kind: str
    backend: str
    gflops: dict[str, float]
    nbytes: float
    compute_ms: float
    wall_ms: float
    start_ms: float
    end_ms: float
    browser: str
    first: bool = False
    concurrent: int = 1          # pages computing at the same time, this one included
    queued: bool = False         # another run of the same page overlapped its round trip (waited in the page)
    page_index: int = 0          # runs this page incarnation completed before this one
    session_index: int = 0       # runs this shard's session (in this page) completed before this one
    beside_startup: bool = False  # another page launched or loaded during most of this run
    beside_launch: bool = False  # started while another browser launched or within LAUNCH_NOISE_WINDOW_MS after,
    #                              or within WARM_NOISE_WINDOW_MS after another page's first session create
    since_own_load: float | None = None   # ms after its page's latest later session create (made once the
    #                                       page had run), when there was one
    since_first_run: float | None = None  # ms after its page's first run ended (None: it is that run)


@dataclass
class RunData:
    run_id: str
    scenario: Any
    samples: list[Sample] = field(default_factory=list)
    loads: list[tuple[str, float, float, bool]] = field(default_factory=list)  # (kind, MB, ms, first in page)
    load_age: list[float] = field(default_factory=list)       # ms the page had been ready when each load began
    load_since: list[float | None] = field(default_factory=list)   # ms since the page's first load ended (None: first)
    load_quiet: list[bool] = field(default_factory=list)      # no other browser launched (or worked after it) meanwhile
    load_served: list[bool] = field(default_factory=list)     # the page was serving (a run < SERVED_IDLE_MS before)
    load_units: list[int] = field(default_factory=list)       # graph units of each loaded shard
    load_grown: list[float] = field(default_factory=list)     # MB the page's heap grew past its high-water
    launches: list[tuple[str, float]] = field(default_factory=list)
    load_overlap: list[int] = field(default_factory=list)     # startup jobs overlapping each load, it included
    launch_overlap: list[int] = field(default_factory=list)
    notices: list[tuple[str, float]] = field(default_factory=list)          # crash -> detected ms
    gaps: list[tuple[str, float]] = field(default_factory=list)             # (kind, gap - interval)
    load_beats: list[tuple[str, float]] = field(default_factory=list)       # (kind, beats per interval in load)
    background: float | None = None    # cores busy outside the run while it ran (host_background)
    windows: list[tuple[str, float, float, str]] = field(default_factory=list)   # (browser, t0, t1, launch|load)
    busy_gaps: list[tuple[str, float]] = field(default_factory=list)        # gaps overlapping a shard run


def kind_of(browser: str) -> str:
    return browser.rsplit("-", 1)[0]


def _events(store: Store, run_id: str) -> list[dict[str, Any]]:
    return store.query("SELECT seq, t_ms, kind, request_id, shard, browser, attempt, value, detail FROM events"
                       " WHERE run_id = ? ORDER BY seq", [run_id])


def extract(store: Store, run_id: str) -> RunData:
    """Everything the fit needs from one stored run."""
    rec = store.run(run_id)
    s = store.load_scenario(rec.scenario_hash)
    interval = resolve(s.fault_tolerance_level, s.recovery_strategy, s.tolerance).heartbeat_interval_ms
    base = _plan(s.model, s.shards, str(s.shard_type), s.workload.batch_size, s.workload.seq_len)
    ev = _events(store, run_id)
    data = RunData(run_id, s, background=background_of(store, run_id))
    backend = {}
    for e in ev:
        if e["kind"] == "backend_fallback":
            backend[e["browser"]] = json.loads(e["detail"]).get("got", str(s.backend))
    shape: dict[int, tuple[int, int]] = {}
    started: dict[tuple, float] = {}
    loading: dict[tuple[str, int], float] = {}
    free: dict[str, float] = {}                  # when each page's task chain last became free
    ready_at: dict[str, float] = {}
    launching: dict[str, float] = {}
    windows: list[tuple[str, float, float, str]] = []      # (browser, start, end, what): startup CPU work
    runs_in_page: dict[str, int] = {}
    runs_in_session: dict[tuple[str, int], int] = {}   # (page, shard) -> runs of its current session
    sessions: dict[str, int] = {}
    first_end: dict[str, float] = {}             # when each page's first session create ended
    later_end: dict[str, float] = {}             # ... its latest session create after it had run
    first_run_end: dict[str, float] = {}         # ... its first shard run ended
    last_run_end: dict[str, float] = {}          # ... its latest shard run ended
    held: dict[str, set[int]] = {}               # shards each page holds a session of
    heap: dict[str, float] = {}                  # each page's heap high-water (sim.profile.heap_growth)
    faults: list[tuple[str, float]] = []
    for e in ev:
        k, b, t = e["kind"], e["browser"], e["t_ms"]
        if k == "request_submitted":
            d = json.loads(e["detail"] or "{}")
            shape[e["request_id"]] = (int(d.get("batch_size", s.workload.batch_size)),
                                      int(d.get("seq_len", s.workload.seq_len)))
        elif k == "shard_started":
            started[(e["request_id"], e["shard"], e["attempt"], b)] = t
        elif k == "shard_completed":
            t0 = started.get((e["request_id"], e["shard"], e["attempt"], b))
            free[b] = t
            if t0 is None or e["value"] is None:
                continue
            bsz, seq = shape.get(e["request_id"], (s.workload.batch_size, s.workload.seq_len))
            spec = _plan(s.model, s.shards, str(s.shard_type), bsz, seq).shards[e["shard"]]
            key = (b, e["shard"])
            runs_in_page[b] = runs_in_page.get(b, 0) + 1
            first = key not in runs_in_session
            runs_in_session[key] = runs_in_session.get(key, 0) + 1
            data.samples.append(Sample(
                run_id, kind_of(b), backend.get(b, str(s.backend)),
                {c: spec.flops_by_class.get(c, 0.0) / 1e9 for c in CLASSES},
                float(spec.input_bytes + spec.output_bytes), float(e["value"]), t - t0,
                t - float(e["value"]), t, b, first=first, page_index=runs_in_page[b] - 1,
                session_index=runs_in_session[key] - 1,
                since_own_load=(t - float(e["value"]) - later_end[b]) if b in later_end else None,
                since_first_run=(t - float(e["value"]) - first_run_end[b]) if b in first_run_end else None))
            first_run_end.setdefault(b, t)
            last_run_end[b] = t
        elif k == "shard_load_started":
            loading[(b, e["shard"])] = t
        elif k == "shard_loaded":
            asked = loading.pop((b, e["shard"]), None)
            # the page runs loads and shard runs one at a time (one task chain): a load queued behind
            # another task starts when that one ends
            t0 = None if asked is None else max(asked, free.get(b, asked))
            free[b] = t
            if t0 is not None and t - t0 > 3 * interval:   # heartbeats in the load's last 70% (after fetch)
                lo = t0 + 0.3 * (t - t0)
                n = sum(1 for x in ev if x["kind"] == "heartbeat_received" and x["browser"] == b and lo < x["t_ms"] < t - 20)
                data.load_beats.append((kind_of(b), n * interval / (0.7 * (t - t0))))
            runs_in_session.pop((b, e["shard"]), None)      # a new session of that shard
            own = held.setdefault(b, set())
            grown, high = heap_growth(sum(base.shards[x].weight_mb for x in own), base.shards[e["shard"]].weight_mb,
                                      heap.get(b, 0.0))
            if e["shard"] not in own:
                own.add(e["shard"])
                heap[b] = high
            if e["value"] is not None and e["value"] > 5.0 and t0 is not None:
                data.loads.append((kind_of(b), float(base.shards[e["shard"]].weight_mb),
                                   float(e["value"]) - (t0 - asked), sessions.get(b, 0) == 0))
                data.load_units.append(len(base.shards[e["shard"]].units))
                data.load_grown.append(grown)
                data.load_age.append(t0 - ready_at.get(b, t0))
                data.load_since.append(None if b not in first_end else t0 - first_end[b])
                data.load_served.append(b in last_run_end and t0 - last_run_end[b] < SERVED_IDLE_MS)
                if b not in first_end:
                    windows.append((b, t, t + WARM_NOISE_WINDOW_MS, "warm"))
                elif runs_in_page.get(b, 0) > 0:
                    later_end[b] = t
                first_end.setdefault(b, t)
                windows.append((b, t0, t, "load"))
                sessions[b] = sessions.get(b, 0) + 1
        elif k == "browser_launch_requested":
            launching[b] = t
        elif k == "browser_ready":
            if e["value"] is not None:
                data.launches.append((kind_of(b), float(e["value"])))
                windows.append((b, launching.pop(b, t - float(e["value"])), t, "launch"))
                windows.append((b, t, t + TAIL_WINDOW_MS, "tail"))
            runs_in_session = {ps: n for ps, n in runs_in_session.items() if ps[0] != b}
            runs_in_page[b] = sessions[b] = 0
            first_end.pop(b, None)
            later_end.pop(b, None)
            first_run_end.pop(b, None)
            last_run_end.pop(b, None)
            free.pop(b, None)
            held.pop(b, None)
            heap.pop(b, None)
            ready_at[b] = t
        if k == "fault_injected" and b and json.loads(e["detail"] or "{}").get("fault") == "browser_crash":
            faults.append((b, t))
        elif k == "failure_detected" and faults and faults[-1][0] == b:
            data.notices.append((kind_of(b), t - faults.pop()[1]))
    end_ms = max((e["t_ms"] for e in ev), default=0.0)
    windows += [(b, t0, end_ms, "launching") for b, t0 in launching.items()]   # still launching at the end
    _mark_concurrency(data.samples)
    data.windows = windows
    for x in data.samples:
        dur = max(x.end_ms - x.start_ms, 1e-6)
        x.beside_startup = any(b != x.browser and w not in AFTERMATH and min(t1, x.end_ms) - max(t0, x.start_ms)
                               >= 0.5 * dur for b, t0, t1, w in windows)
        x.beside_launch = any(b != x.browser and w in ("launch", "launching", *AFTERMATH) and t0 <= x.start_ms <= t1
                              for b, t0, t1, w in windows)
    busy = [w for w in windows if w[3] not in AFTERMATH] + [(x.browser, x.start_ms, x.end_ms, "run")
                                                            for x in data.samples]
    for what, out in (("load", data.load_overlap), ("launch", data.launch_overlap)):
        for b, t0, t1, w in windows:
            if w == what:
                dur = max(t1 - t0, 1e-6)
                out.append(1 + sum(1 for o in busy if o[0] != b and o[3] != "run"
                                   and min(t1, o[2]) - max(t0, o[1]) >= 0.5 * dur))
                if what == "load":   # no other browser launching or working after its launch meanwhile
                    data.load_quiet.append(not any(o != b and ww in ("launch", "launching", "tail")
                                                   and min(t1, o1) > max(t0, o0) for o, o0, o1, ww in windows))
    from experiments.timeouts import classify_gaps
    gaps = classify_gaps(ev)
    data.gaps = [("", g - interval) for g in gaps["idle"]]
    data.busy_gaps = [("", g - interval) for g in gaps["load"]]
    return data


def _mark_concurrency(samples: list[Sample]) -> None:
    """Count the other pages computing during at least half of each sample's compute."""
    for a in samples:
        dur = max(a.end_ms - a.start_ms, 1e-6)
        others = {o.browser for o in samples if o.browser != a.browser
                  and min(a.end_ms, o.end_ms) - max(a.start_ms, o.start_ms) >= 0.5 * dur}
        a.concurrent = 1 + len(others)
        a.queued = any(o is not a and o.browser == a.browser and o.end_ms > a.end_ms - a.wall_ms
                       and o.end_ms - o.wall_ms < a.end_ms for o in samples)


# --- fits --------------------------------------------------------------------------

def _robust_linear(X: np.ndarray, y: np.ndarray, x0: np.ndarray, scale: float) -> np.ndarray:
    res = least_squares(lambda p: (X @ p - y) / scale, x0, loss="soft_l1", f_scale=1.0)
    return res.x


def fit_compute(samples: list[Sample], base: BackendRate) -> tuple[BackendRate, dict[str, Any]]:
    """ms = sum_c GFLOP_c * k_c + overhead over warm uncontended samples (see module rules)."""
    if not samples:
        return base, {"n": 0, "fitted": False}
    G = np.array([[s.gflops[c] for c in CLASSES] for s in samples])
    y = np.array([s.compute_ms for s in samples])
    k0 = np.array([1000.0 / getattr(base, RATE_FIELD[c]) for c in CLASSES])
    active = G.max(axis=0) > 0

    weight = np.array([PRIOR_WEIGHT[c] for c in CLASSES])[active]

    def resid(p: np.ndarray) -> np.ndarray:
        # multiplicative noise (host load stretches a run): relative residuals, robust loss
        k = k0 * np.exp(p[:-1])
        data = np.log(np.maximum(G @ k + p[-1], 1e-6)) - np.log(y)
        prior = weight * math.sqrt(len(y)) * p[:-1][active]
        return np.concatenate([data, prior])
    lo = np.concatenate([np.full(len(CLASSES), -8.0), [0.0]])
    hi = np.concatenate([np.full(len(CLASSES), 8.0), [max(float(np.min(y)), 1.0)]])
    p0 = np.concatenate([np.zeros(len(CLASSES)), [min(base.run_overhead_ms, 0.5 * hi[-1])]])
    p = least_squares(resid, p0, bounds=(lo, hi), loss="soft_l1", f_scale=0.1).x
    k = k0 * np.exp(p[:-1])
    pred = G @ k + p[-1]
    rate = dataclasses.replace(base, run_overhead_ms=float(p[-1]),
                               **{RATE_FIELD[c]: float(1000.0 / k[i]) for i, c in enumerate(CLASSES)})
    lr = np.log(y / pred)
    runs = np.array([s.run_id for s in samples])
    per_run = {r: float(np.median(lr[runs == r])) for r in set(runs)}
    within = lr - np.array([per_run[r] for r in runs])
    return rate, {"n": len(y), "fitted": True, **_residual_stats(y, pred),
                  "fitted_classes": [c for c, a in zip(CLASSES, active) if a],
                  "log_ratio_sd": float(np.std(within)) if len(y) > 1 else 0.0,
                  "run_to_run_sd": float(np.std(list(per_run.values()))) if len(per_run) > 1 else 0.0,
                  "per_run_median_ratio": {r: math.exp(v) for r, v in sorted(per_run.items())}}


def _residual_stats(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    r = y - pred
    ss = float(np.sum((y - y.mean()) ** 2))
    return {"rmse_ms": float(np.sqrt(np.mean(r ** 2))), "median_abs_pct": float(np.median(np.abs(r) / y) * 100),
            "r2": 1.0 - float(np.sum(r ** 2)) / ss if ss > 0 else 1.0}


def predict_compute(rate: BackendRate, s: Sample) -> float:
    return sum(s.gflops[c] * 1000.0 / getattr(rate, RATE_FIELD[c]) for c in CLASSES) + rate.run_overhead_ms


def fit_hops(samples: list[Sample], link_latency_ms: float) -> tuple[dict[str, float], float, dict[str, Any]]:
    """Per-kind round-trip overhead and a shared bandwidth from wall - compute vs bytes."""
    kinds = sorted({s.kind for s in samples})
    if not samples:
        return {}, 0.0, {"n": 0, "fitted": False}
    X = np.array([[1.0 if s.kind == k else 0.0 for k in kinds] + [s.nbytes / 1e6] for s in samples])
    y = np.array([max(s.wall_ms - s.compute_ms, 0.0) for s in samples])
    scale = max(float(np.median(y)) * 0.1, 0.2)
    p = _robust_linear(X, y, np.concatenate([np.full(len(kinds), float(np.median(y))), [1.0]]), scale)
    ms_per_mb = max(float(p[-1]), 1e-3)
    over = {k: max(float(p[i]) - 2 * link_latency_ms, 0.0) for i, k in enumerate(kinds)}
    pred = X[:, :-1] @ p[:-1] + X[:, -1] * ms_per_mb
    # what the line leaves: per kind, the measured round trip's spread around it (right-skewed), which
    # the simulator draws per run (hop_extra_quantiles); a line through the mode alone is short
    quiet = np.array([s.concurrent == 1 and not s.beside_launch and not s.beside_startup for s in samples])
    extra = {k: [float(v) for v in _winsorized_quantiles((y - pred)[(X[:, i] == 1) & quiet])]
             for i, k in enumerate(kinds) if int(((X[:, i] == 1) & quiet).sum()) >= NOISE_MIN_SAMPLES}
    return over, 1000.0 / ms_per_mb, {"n": len(y), "fitted": True, **_residual_stats(np.maximum(y, 1e-3), pred),
                                      "ms_per_mb": ms_per_mb, "median_hop_ms": float(np.median(y)),
                                      "extra_quantiles": extra}


def _fit_load_line(loads: list[tuple], lat: float, settle_tau: float | None = None
                   ) -> tuple[float, float, float] | None:
    """ms - 2 * lat = fixed + MB * per_mb + init * first, robust on relative residuals, all >= 0.
    None when the loads cannot separate the three (one size only, or no warm load for `init`).
    settle_tau: also + E * exp(-since / tau) for later loads (x[6]: ms since the page's first load
    ended); then (fixed, per_mb, init, E, cost)."""
    mb = np.array([x[1] for x in loads])
    y = np.maximum(np.array([x[2] for x in loads]) - 2 * lat, 1.0)
    first = np.array([1.0 if x[3] else 0.0 for x in loads])
    if len(set(np.round(mb, 3))) < 2 or len(loads) < 3:
        return None
    has_warm, has_cold = bool((first == 0).any()), bool((first == 1).any())
    X = np.column_stack([np.ones_like(mb), mb, first])
    if not (has_warm and has_cold):
        X = X[:, :2]
    if settle_tau is not None:
        X = np.column_stack([X, [0.0 if x[3] or x[6] is None else math.exp(-max(x[6], 0.0) / settle_tau)
                                 for x in loads]])

    def resid(p: np.ndarray) -> np.ndarray:
        return (X @ p - y) / y
    p0 = np.full(X.shape[1], 1.0)
    p0[0] = float(np.median(y)) * 0.2
    fit = least_squares(resid, p0, bounds=(0.0, np.inf), loss="soft_l1", f_scale=0.1)
    p = fit.x
    line = float(p[0]), float(p[1]), float(p[2]) if X.shape[1] >= 3 + (settle_tau is not None) else 0.0
    if settle_tau is None:
        return line
    return (*line, float(p[-1]), float(fit.cost))


def fit_settle(loads: list[tuple], lat: float) -> tuple[tuple[float, float, float], float, float, dict] | None:
    """A later session create soon after a page's first one costs more (the page still compiles):
    the load line refitted with + E * exp(-since / tau), tau by grid; kept only when it explains the
    loads clearly better than a constant extra on every later load (robust cost down >= 20%) and
    later loads span early and settled pages.
    Returns (line, E, tau, residuals) or None."""
    since = [x[6] for x in loads if not x[3] and x[6] is not None]
    if len(since) < 3 or min(since) > 500.0 or max(since) < 750.0:
        return None
    base = _fit_load_line(loads, lat, SETTLE_TAUS[-1] * 1e6)   # the alternative: a constant extra on later loads
    best = None
    for tau in SETTLE_TAUS:
        r = _fit_load_line(loads, lat, tau)
        if r is not None and (best is None or r[4] < best[0][4]):
            best = (r, tau)
    if best is None or base is None or best[0][3] < 1.0 or best[0][4] > 0.8 * base[4]:
        return None
    (fixed, per_mb, init, e, cost), tau = best
    return (fixed, per_mb, init), e, tau, {"settle_load_ms": e, "settle_ms": tau, "cost": cost,
                                           "cost_without": base[4], "later_loads": len(since)}


def line_load_ms(line: tuple[float, float, float], settle: tuple[float, float], x: tuple) -> float:
    """Load `x` (as fit_loads takes loads) on the load line, less the round trip: fixed + MB * per_mb,
    + the page init for a page's first load, + the settle term (E, tau) for a later one."""
    (fixed, per_mb, init), (e, tau) = line, settle
    return (fixed + x[1] * per_mb + (init if x[3] else 0.0)
            + (e * math.exp(-max(x[6], 0.0) / tau) if not x[3] and x[6] is not None else 0.0))


def fit_loads(loads: list[tuple[str, float, float, bool, int, float]], link_latency_ms: float
              ) -> tuple[dict[str, tuple[float, float, float]], tuple[float, float, float] | None, dict]:
    """Shard load (session create) time per browser kind: fixed + MB * per_mb, plus the page's
    first-session cost (ORT runtime init) for the first load in a page. Per kind when its loads
    cover two sizes (and a warm load for the init); the pooled line for the other kinds."""
    if not loads:
        return {}, None, {"n": 0, "fitted": False}
    settled = [x for x in loads if x[3] and x[5] >= AGED_PAGE_MS]     # first loads of settled pages: apart
    loads = [x for x in loads if not (x[3] and x[5] >= AGED_PAGE_MS)] or loads
    pooled = _fit_load_line(loads, link_latency_ms)
    per_kind: dict[str, tuple[float, float, float]] = {}
    settles: dict[str, tuple[float, float]] = {}
    res: dict[str, Any] = {"n": len(loads), "warm_loads": sum(1 for x in loads if not x[3]), "fitted": True}
    for k in sorted({x[0] for x in loads}):
        own = [x for x in loads if x[0] == k]
        alone = [x for x in own if x[4] == 1]
        # loads that overlapped no other startup work, when they cover two sizes: another browser's
        # launch slows a load by more than a core's share (launches are multi-process)
        line = _fit_load_line(alone, link_latency_ms) if len(alone) >= 3 else None
        line = line or _fit_load_line(own, link_latency_ms)
        if line is not None and pooled is not None and all(x[3] for x in own):
            # only first loads of this kind: its intercept is fixed + init together; split it as the
            # pooled fit (which saw warm loads) splits its own
            fixed = min(pooled[0], line[0])
            line = (fixed, line[1], line[0] - fixed)
        used = line or pooled
        settle = fit_settle(alone if len(alone) >= 3 else own, link_latency_ms) if line is not None else None
        if settle is not None:
            used, res[f"settle.{k}"] = settle[0], settle[3]
            settles[k] = (settle[1], settle[2])
        if used is None:       # one size only anywhere: proportional to MB through the median
            med = float(np.median([(x[2] - 2 * link_latency_ms) / max(x[1], 1e-6) for x in own]))
            used = (0.0, med, 0.0)
        per_kind[k] = used
        pred = np.array([line_load_ms(used, settles.get(k, (0.0, 1.0)), x) for x in own])
        yy = np.maximum(np.array([x[2] - 2 * link_latency_ms for x in own]), 1e-3)
        res[k] = {"n": len(own), "own_fit": line is not None, "fixed_ms": used[0], "ms_per_mb": used[1],
                  "page_init_ms": used[2], **_residual_stats(yy, pred)}
        aged = [x[2] - 2 * link_latency_ms - used[0] - x[1] * used[1] for x in settled if x[0] == k]
        if aged:
            res[k]["page_init_aged_ms"] = max(0.0, float(np.median(aged)))
            res[k]["aged_first_loads"] = len(aged)
    # a kind with no settled first load (its standby came up late in the collect) takes the settled /
    # fresh page-init ratio of the kinds that have one (measured 0.63-0.79): a settled page is cheaper
    ratios = [res[k]["page_init_aged_ms"] / per_kind[k][2] for k in per_kind
              if "page_init_aged_ms" in res[k] and per_kind[k][2] > 0]
    for k in per_kind:
        if "page_init_aged_ms" not in res[k] and ratios and per_kind[k][2] > 0:
            res[k]["page_init_aged_ms"] = per_kind[k][2] * float(np.median(ratios))
            res[k]["aged_from_ratio_of_other_kinds"] = float(np.median(ratios))
    res["settle"] = settles
    return per_kind, pooled, res


WARMUP_TAUS_MS = (50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 700.0, 1000.0)


def fit_warmup_time(after: list[tuple[float, float]]) -> tuple[float, float]:
    """(after factor, tau ms) of ratio(t) = 1 + (factor - 1) * exp(-t / tau) over (t = ms since the
    page's first run ended, measured / steady) pairs of the runs after it, by grid, least absolute log
    error (launch spikes among them do not drag it). (1, 1): no warm-up after the first run (fewer than
    20 runs in the first second)."""
    xs = [(t, math.log(max(r, 1e-3))) for t, r in after if 0.0 <= t < 2000.0]
    if sum(1 for t, _ in xs if t < 1000.0) < 20:
        return 1.0, 1.0
    t_ = np.array([t for t, _ in xs])
    y_ = np.array([y for _, y in xs])
    best = (math.inf, 1.0, 1.0)
    for tau in WARMUP_TAUS_MS:
        d = np.exp(-t_ / tau)
        for f in np.arange(1.0, 4.001, 0.05):
            e = float(np.abs(y_ - np.log1p((f - 1.0) * d)).sum())
            if e < best[0] - 1e-9:
                best = (e, float(f), tau)
    return best[1], best[2]


POST_LOAD_WINDOWS = (250.0, 500.0, 750.0, 1000.0)
POST_LOAD_MIN_FACTOR = 1.15     # a smaller slowdown is left to the noise tables


def fit_post_load(samples: list[Sample], predicted) -> tuple[float, float, dict[str, Any]]:
    """(post_load_ms, post_load_factor) of one kind: the runs (but a session's first) of pages past
    STEADY_NOISE_RUNS runs that start within 1.5 s after their own page's later session create, old
    session or new (measured alike: 3.4-3.6x and 2.7-3.2x in the first 500 ms), against the steady
    fit. Grid over the window; factor = the median ratio inside it. (0, 1) when fewer than 8 runs
    fall inside or they are not POST_LOAD_MIN_FACTOR slow."""
    xs = [(s.since_own_load, s.compute_ms / predicted(s)) for s in samples
          if s.since_own_load is not None and 0.0 <= s.since_own_load < 1500.0 and not s.first
          and s.page_index >= STEADY_NOISE_RUNS and s.concurrent == 1]
    best = None
    for w in POST_LOAD_WINDOWS:
        inside = [r for t, r in xs if t < w]
        if len(inside) < 8:
            continue
        f = float(np.median(inside))
        err = sum((math.log(max(r, 1e-3)) - math.log(f if t < w else 1.0)) ** 2 for t, r in xs)
        if best is None or err < best[0] - 1e-9:
            best = (err, w, f, len(inside))
    if best is None or best[2] < POST_LOAD_MIN_FACTOR:
        return 0.0, 1.0, {"n": len(xs), "fitted": False,
                          "median_ratio_first_500ms": float(np.median([r for t, r in xs if t < 500] or [1.0]))}
    return best[1], best[2], {"n": len(xs), "fitted": True, "n_inside": best[3], "post_load_ms": best[1],
                              "post_load_factor": best[2],
                              "median_ratio_after": float(np.median([r for t, r in xs if t >= best[1]] or [1.0]))}


SERVED_LOAD_MIN = 2    # loads onto serving pages a kind needs for its extra (one per collect scattered 22-670 ms)


def fit_served_load(loads: list[tuple], served: list[bool], lines: dict[str, tuple[float, float, float]],
                    settles: dict[str, tuple[float, float]], link_latency_ms: float) -> dict[str, dict[str, Any]]:
    """Per kind with its own load line and no settle term (whose later loads it already describes,
    Chromium's): the median extra ms of later session creates on serving pages (a failover onto one;
    `served` marks them: a run < SERVED_IDLE_MS before, no launch beside) over the line, from
    SERVED_LOAD_MIN or more; kept when > 0.
    Measured in Firefox: +47-68 ms for a 69 MB shard, +4-57 ms for 15 MB, in every collect; a page
    that had not run yet (back-to-back loads) follows the line. `loads` as fit_loads takes them."""
    extra: dict[str, list[float]] = defaultdict(list)
    for (k, mb, ms, first, _n, _age, since), sv in zip(loads, served):
        if first or not sv or k not in lines or since is None or k in settles:
            continue
        fixed, per_mb, _ = lines[k]
        extra[k].append(ms - 2 * link_latency_ms - (fixed + per_mb * mb))
    return {k: {"n": len(v), "median_extra_ms": float(np.median(v)),
                "served_load_ms": max(0.0, float(np.median(v))) if len(v) >= SERVED_LOAD_MIN else 0.0}
            for k, v in extra.items()}


LATER_LOAD_MIN = 5            # later session creates a kind needs for its own later-load model
LATER_GROWN_MIN_MB = 5.0      # ... some growing the page's heap by this much, some by less


def fit_later_loads(loads: list[tuple], units: list[int | None], grown: list[float | None], quiet: list[bool],
                    link_latency_ms: float, rivals: dict[str, Callable[[int], float]] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Per kind: a later session create (the page holds one) = fixed + MB * per_mb + graph units *
    per_unit + MB the page's heap grows past its high-water * per_grown_mb, all >= 0, robust on
    relative residuals. `rivals`: per kind, the prediction of load i (its index in `loads`) by the
    model the kind has otherwise (the load line with its settle term); the later-load model is kept
    only when it misses the kind's later loads less (median |error|, each model's scaled for the
    terms it fits on them) than the rival does. From the
    loads with no other startup work beside them (no load, launch or work after a launch: a relaunch's
    tail beside one made a 69 MB Firefox load 929 ms against 404-470 without; all the kind's later
    loads when those are fewer than LATER_LOAD_MIN); fitted when they cover two sizes and heaps that
    grew and that did not.
    Measured in Firefox, session create alone (page-reported): 7.7 MB 15-20 ms, 14.2 MB 26-33 ms onto a
    page with room, 38-47 ms onto one that had to grow ~15 MB. `loads` as fit_loads takes them."""
    out: dict[str, dict[str, Any]] = {}
    for k in sorted({x[0] for x in loads}):
        rows = [(x, u, g, q, i) for i, (x, u, g, q) in enumerate(zip(loads, units, grown, quiet)) if x[0] == k
                and not x[3] and u is not None and g is not None]
        alone = [r for r in rows if r[0][4] == 1 and r[3]]
        use = alone if len(alone) >= LATER_LOAD_MIN else rows
        if (len(use) < LATER_LOAD_MIN or len({round(r[0][1], 1) for r in use}) < 2
                or not any(r[2] >= LATER_GROWN_MIN_MB for r in use) or all(r[2] >= LATER_GROWN_MIN_MB for r in use)):
            out[k] = {"n": len(use), "fitted": False}
            continue
        X = np.array([[1.0, r[0][1], float(r[1]), r[2]] for r in use])
        y = np.maximum(np.array([r[0][2] - 2 * link_latency_ms for r in use]), 1.0)
        fit_x = least_squares(lambda p: (X @ p - y) / y, np.array([float(np.median(y)) * 0.1, 1.0, 1.0, 0.1]),
                              bounds=(0.0, np.inf), loss="soft_l1", f_scale=0.1).x
        p = [float(v) for v in fit_x]
        out[k] = {"n": len(use), "fitted": True, "fixed_ms": p[0], "ms_per_mb": p[1], "ms_per_unit": p[2],
                  "ms_per_grown_mb": p[3], "grown_loads": sum(1 for r in use if r[2] >= LATER_GROWN_MIN_MB),
                  **_residual_stats(y, X @ fit_x)}
        if rivals and k in rivals:
            # each model's error on these loads, scaled by sqrt(n / (n - terms fitted on them)) as a
            # residual variance is: the later-load model fits 4 terms on them, the rival's settle term 2
            # (its line is fitted on every load, first loads too)
            n = len(use)
            other = np.maximum(np.array([rivals[k](r[4]) - 2 * link_latency_ms for r in use]), 1.0)
            out[k]["rival_median_abs_pct"] = float(np.median(np.abs(y - other) / y) * 100)
            ours = out[k]["median_abs_pct"] * math.sqrt(n / max(n - 4, 1))
            theirs = out[k]["rival_median_abs_pct"] * math.sqrt(n / max(n - 2, 1))
            out[k]["fitted"] = ours < theirs
    return out


def threads_for_slowdown(s: float, page_weight: float, cores: float) -> float:
    """Threads T of a nice-0 job that slow a one-thread page of CFS weight w by s on `cores` cores
    (sim.host's weighted sharing inverted): while the job is below its own cap the page gets
    cores * w / (w + T); once the job is capped, the cores it leaves."""
    if s <= 1.0:
        return 1.0
    t = page_weight * (s * cores - 1.0)
    if cores >= page_weight + t:
        t = cores - 1.0 / s
    return min(cores, max(1.0, t))


def _burst_slowdown(t: float, w: float, cores: float) -> float:
    """A one-thread page of weight w beside a nice-0 burst of t threads (sim.host's sharing)."""
    if 1.0 + t <= cores:
        return 1.0
    lam = cores / (w + t)
    return 1.0 / (lam * w) if lam < 1.0 else 1.0 / max(cores - t, 1e-3)


def fit_launch_cpu(runs: list[RunData], predicted, weight: dict[str, float], cores: float, fitted_rates: dict
                   ) -> tuple[dict[str, tuple[float, float]], dict[str, float], dict[str, Any]]:
    """Per launching kind (threads, fraction of the launch they burn), and the CFS weight of each page
    kind, from warm runs of other pages inside launch windows: their slowdown against the steady fit
    by position in the window. Grid over burst fraction and page weights; threads = the median
    slowdown inside the burst inverted through the sharing model. Pages of a low weight (a
    renderer at nice 5) lose far more to a launch than pages at nice 0: that is what tells the
    weights apart. Returns ({launch kind: (threads, fraction)}, {page kind: weight}, residuals)."""
    found: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for r in runs:
        for b, t0, t1, what in r.windows:
            if what != "launch" or t1 <= t0:
                continue
            for s in r.samples:
                mid = (s.start_ms + s.end_ms) / 2
                if s.browser != b and not s.first and s.concurrent == 1 and t0 <= mid <= t1 \
                        and (s.kind, s.backend) in fitted_rates:
                    found[kind_of(b)].append(((mid - t0) / (t1 - t0), s.compute_ms / predicted(s), s.kind))
    launchers = [k for k, v in found.items() if len(v) >= 8]
    pages = sorted({x[2] for k in launchers for x in found[k]})
    if not launchers:
        return {}, {}, {f"launch_cpu.{k}": {"n": len(v), "fitted": False} for k, v in found.items()}
    best = None
    import itertools
    for ws in itertools.product(WEIGHTS, repeat=len(pages)):
        wk = dict(zip(pages, ws))
        err, fit = 0.0, {}
        for k in launchers:
            kbest = None
            for frac in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0):
                inside = [threads_for_slowdown(s, wk[pk], cores) for p, s, pk in found[k] if p < frac]
                t = float(np.median(inside)) if inside else 1.0
                e = sum((math.log(max(s, 1e-3)) - math.log(_burst_slowdown(t, wk[pk], cores) if p < frac else 1.0)) ** 2
                        for p, s, pk in found[k])
                if kbest is None or e < kbest[0] - 1e-9:
                    kbest = (e, t, frac)
            err += kbest[0]
            fit[k] = (kbest[1], kbest[2]) if kbest[1] > 1.0 else (1.0, 1.0)
        if best is None or err < best[0] - 1e-9:
            best = (err, fit, wk)
    _, fit, wk = best
    res = {f"launch_cpu.{k}": {"n": len(found[k]), "fitted": k in fit, "launch_threads": fit.get(k, (None,))[0],
                               "launch_cpu_fraction": fit.get(k, (None, None))[1],
                               "median_slowdown_in_first_half": float(np.median([s for p, s, _ in found[k] if p < 0.5]
                                                                                or [1.0]))}
           for k in found}
    res["launch_cpu.page_weights"] = wk
    return fit, wk, res


def beside_load(run: RunData, s: Sample) -> bool:
    """Another page of the run was creating a session during any part of run `s`."""
    return any(b != s.browser and w == "load" and min(t1, s.end_ms) > max(t0, s.start_ms)
               for b, t0, t1, w in run.windows)


def fit_launch_tail(runs: list[RunData], predicted, weight: dict[str, float], cores: float, fitted_rates: dict
                    ) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
    """Per launching kind (tail ms, threads): the work a browser still does after its BROWSER_READY,
    from warm runs of other pages that start within TAIL_WINDOW_MS of it (and beside no load):
    their slowdown against the steady fit by time since ready. Grid over the tail's length (none
    included); threads = the median slowdown inside it inverted through the sharing model."""
    found: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for r in runs:
        for b, t0, t1, what in r.windows:
            if what != "tail":
                continue
            for s in r.samples:
                mid = (s.start_ms + s.end_ms) / 2
                if s.browser == b or s.first or s.concurrent != 1 or not t0 <= mid <= t1 \
                        or (s.kind, s.backend) not in fitted_rates \
                        or beside_load(r, s):
                    continue
                found[kind_of(b)].append((mid - t0, s.compute_ms / predicted(s), s.kind))
    fit: dict[str, tuple[float, float]] = {}
    res: dict[str, Any] = {}
    for k, xs in found.items():
        if len(xs) < 8:
            res[f"launch_tail.{k}"] = {"n": len(xs), "fitted": False}
            continue
        best = (sum(math.log(max(s, 1e-3)) ** 2 for _, s, _ in xs), 0.0, 1.0)
        for win in TAIL_WINDOWS:
            inside = [threads_for_slowdown(s, weight.get(pk, 1.0), cores) for d, s, pk in xs if d < win]
            if not inside:
                continue
            t = float(np.median(inside))
            e = sum((math.log(max(s, 1e-3)) - math.log(_burst_slowdown(t, weight.get(pk, 1.0), cores) if d < win else 1.0)) ** 2
                    for d, s, pk in xs)
            if e < best[0] - 1e-9:
                best = (e, win, t)
        _, win, t = best
        if win > 0 and t > 1.0:
            fit[k] = (win, t)
        res[f"launch_tail.{k}"] = {"n": len(xs), "fitted": k in fit, "launch_tail_ms": fit.get(k, (0.0,))[0],
                                   "launch_tail_threads": fit.get(k, (0.0, 1.0))[1],
                                   "median_slowdown_first_500ms": float(np.median([s for d, s, _ in xs if d < 500] or [1.0])),
                                   "median_slowdown_after_1000ms": float(np.median([s for d, s, _ in xs if d >= 1000] or [1.0]))}
    return fit, res


def _quantile_fit(xs: list[float], min_n: int) -> tuple[tuple[float, ...], dict[str, Any]]:
    """Ratios -> (QUANTILES winsorized quantiles, residuals); () when there are fewer than min_n."""
    if len(xs) < min_n:
        return (), {"n": len(xs), "fitted": False}
    a = np.array(xs)
    return _winsorized_quantiles(a), {"n": len(xs), "fitted": True, "median": float(np.median(a)),
                                      "p90": float(np.quantile(a, 0.9)), "p99": float(np.quantile(a, 0.99))}


def steady(s: Sample) -> bool:
    """Past the WASM tier-up of its page and of its own session: NOISE_INDEX runs of each (Chromium's
    runs 3-4 of a new session on a page serving for seconds measured 1.3-1.8x the steady time)."""
    return s.page_index >= NOISE_INDEX and s.session_index >= NOISE_INDEX


def noise_quantiles(samples: list[Sample], predicted) -> tuple[tuple[float, ...], dict[str, Any]]:
    """The empirical distribution of steady runs' compute / prediction (`steady`,
    warm, alone, beside no startup and no launch), as QUANTILES factors; () when there are too few."""
    return _quantile_fit([s.compute_ms / predicted(s) for s in samples if not s.first and steady(s)
                          and s.concurrent == 1 and not s.beside_startup and not s.beside_launch], NOISE_MIN_SAMPLES)


def early_noise_quantiles(samples: list[Sample], with_warmup) -> tuple[tuple[float, ...], dict[str, Any]]:
    """Runs 1..NOISE_INDEX-1 of a page or a session (warm, alone, beside no startup or launch): compute /
    `with_warmup(s)` (the prediction with the warm-up the simulator applies at that run index), as
    QUANTILES factors."""
    return _quantile_fit([s.compute_ms / with_warmup(s) for s in samples if not s.first and not steady(s)
                          and s.concurrent == 1 and not s.beside_startup and not s.beside_launch],
                         LAUNCH_NOISE_MIN_SAMPLES)


def launch_slowdown(run: RunData, s: Sample, launch: dict[str, tuple[float, float, float]],
                    tail: dict[str, tuple[float, float]], weight: float, cores: float) -> float:
    """The slowdown the simulator's launch model gives run `s` (a burst of launch threads over the first
    fraction of another browser's launch, then its tail after ready); 1 when nothing is launching.
    launch: kind -> (threads, fraction, launch_ms); tail: kind -> (ms, threads)."""
    worst = 1.0
    for b, t0, t1, w in run.windows:
        if b == s.browser or not t0 <= s.start_ms <= t1 or w not in ("launch", "launching", "tail"):
            continue
        k = kind_of(b)
        if w == "tail":
            ms, threads = tail.get(k, (0.0, 1.0))
            f = _burst_slowdown(threads, weight, cores) if s.start_ms - t0 < ms else 1.0
        else:
            threads, frac, launch_ms = launch.get(k, (1.0, 1.0, 0.0))
            span = (t1 - t0) if w == "launch" else max(launch_ms, 1e-6)
            f = _burst_slowdown(threads, weight, cores) if (s.start_ms - t0) / max(span, 1e-6) < frac else 1.0
        worst = max(worst, f)
    return worst


def _winsorized_quantiles(x: np.ndarray) -> tuple[float, ...]:
    """QUANTILES values at evenly spaced probabilities 0..1 of x clipped to its 1st..99th percentile
    (a sample's extreme is not a stable estimate of a distribution's end)."""
    lo, hi = np.quantile(x, [0.01, 0.99])
    return tuple(float(v) for v in np.quantile(np.clip(x, lo, hi), np.linspace(0, 1, QUANTILES)))


def launch_noise_quantiles(runs: list[RunData], kind: str, predicted, modelled) -> tuple[tuple[float, ...], dict[str, Any]]:
    """Warm runs of `kind` pages that started beside another browser's launch (or its
    LAUNCH_NOISE_WINDOW_MS after), beside no load: compute / (prediction x the slowdown the launch
    model gives them, `modelled(run, sample)`), as QUANTILES factors: with the model's slowdown they
    reproduce what was measured there."""
    return _quantile_fit([s.compute_ms / (predicted(s) * modelled(r, s)) for r in runs for s in r.samples
                          if s.kind == kind and s.beside_launch and not s.first and s.concurrent == 1
                          and not beside_load(r, s)], LAUNCH_NOISE_MIN_SAMPLES)


def _robust_sd(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) > 1 else 0.0


# --- the whole profile ---------------------------------------------------------------

def fit_profile(data: Iterable[RunData], base: Profile = DEFAULT_PROFILE, name: str = "calibrated",
                version: int = 1, main_thread: bool = True) -> Profile:
    """The base profile with every parameter the runs inform refitted; `main_thread`: the pages send
    heartbeats from the thread that loads and runs shards (true of the real worker page)."""
    runs = list(data)
    if not any(r.samples for r in runs):
        raise InputError("no shard runs in the given runs: nothing to calibrate from "
                         "(run `shardtwin calibrate --collect` or give runs that served requests)")
    samples = [s for r in runs for s in r.samples]
    residuals: dict[str, Any] = {}
    browsers = dict(base.browsers)
    known_bg = [r.background for r in runs if r.background is not None]
    bg = {r.run_id: (r.background if r.background is not None else base.background_cores) for r in runs}
    cores = base.host_cores
    # compute rates per (kind, backend), on samples normalised to an idle host; the renderer's CPU
    # weight is chosen (grid) so that runs under different background load agree best
    fitted_rates: dict[tuple[str, str], BackendRate] = {}
    weight: dict[str, float] = {}
    for kind, backend in sorted({(s.kind, s.backend) for s in samples}):
        if kind not in browsers:
            continue
        sub = [s for s in samples if s.kind == kind and s.backend == backend and not s.first]
        sub = [s for s in sub if not s.beside_startup] or sub     # a launch or load beside it slows it
        quiet = [s for s in sub if not s.beside_launch]           # the launch model and its noise cover these
        sub = quiet if len(quiet) >= 20 else sub
        sub = [s for s in sub if s.concurrent == 1] or sub
        # past the WASM tier-up when there is enough data: a second after the page's first run (measured
        # done by ~0.6 s), else past its first STEADY_INDEX runs
        steady = [s for s in sub if s.since_first_run is not None and s.since_first_run >= STEADY_AFTER_MS]
        steady = steady if len(steady) >= 8 else [s for s in sub if s.page_index >= STEADY_INDEX]
        sub = steady if len(steady) >= 8 else sub
        best = None
        for w in (WEIGHTS if known_bg else (browsers[kind].cpu_weight,)):
            scaled = [dataclasses.replace(s, compute_ms=s.compute_ms / background_factor(cores, w, bg[s.run_id]))
                      for s in sub]
            rate, res = fit_compute(scaled, base.rate(kind, backend))
            if best is None or res.get("median_abs_pct", 0) < best[2].get("median_abs_pct", 0):
                best = (w, rate, res)
        weight[kind], fitted_rates[(kind, backend)] = best[0], best[1]
        residuals[f"compute.{kind}.{backend}"] = {**best[2], "cpu_weight": best[0]}
    cv = [r["log_ratio_sd"] for k, r in residuals.items() if k.startswith("compute.") and r.get("n", 0) > 2]

    def predicted(s: Sample) -> float:
        return predict_compute(fitted_rates[(s.kind, s.backend)], s) * background_factor(
            cores, weight.get(s.kind, 1.0), bg[s.run_id])
    # a page's runs right after its own later session create (a failover onto it): slowed apart from
    # any launch beside them, so they are fitted here and kept out of the launch and noise fits below
    post_load: dict[str, tuple[float, float]] = {}
    for kind in sorted({s.kind for s in samples}):
        ms_, f_, residuals[f"post_load.{kind}"] = fit_post_load(
            [s for s in samples if s.kind == kind and (s.kind, s.backend) in fitted_rates], predicted)
        if ms_ > 0:
            post_load[kind] = (ms_, f_)

    def post(s: Sample) -> float:
        """The post-load factor the simulator gives run `s` (1 outside the window)."""
        ms_, f_ = post_load.get(s.kind, (0.0, 1.0))
        return f_ if s.since_own_load is not None and 0.0 <= s.since_own_load < ms_ else 1.0
    runs_q = [dataclasses.replace(r, samples=[s for s in r.samples if post(s) == 1.0]) for r in runs]
    samples_q = [s for r in runs_q for s in r.samples]
    # warm-up: a page's first run, and the runs after it over time, relative to the steady fit
    warm: dict[str, tuple[float, float, float, float]] = {}   # kind -> (factor, extra ms, after factor, tau ms)
    eff: list[float] = []
    for kind in sorted({s.kind for s in samples}):
        ours = [s for s in samples if s.kind == kind and (s.kind, s.backend) in fitted_rates and s.concurrent == 1
                and not s.beside_startup]
        firsts = [(predicted(s), s.compute_ms) for s in ours if s.page_index == 0]
        if firsts:
            factor, extra = max(float(np.median([y / p for p, y in firsts])), 1.0), 0.0
            # a page's first run costs extra + (factor - 1) * its steady time: both from the first runs
            # of pages whose shards differ in size (else the ratio alone)
            if len(firsts) >= 4 and len({round(p, 0) for p, _ in firsts}) >= 3:
                P_ = np.array([p for p, _ in firsts])
                R_ = np.array([y - p for p, y in firsts])
                A, B = (max(float(v), 0.0) for v in _robust_linear(np.column_stack([np.ones_like(P_), P_]), R_,
                                                                    np.array([float(np.median(R_)), 0.5]),
                                                                    max(float(np.median(np.abs(R_))) * 0.2, 1.0)))
                extra, factor = A, 1.0 + B
            after = [(s.since_first_run, s.compute_ms / predicted(s)) for s in ours
                     if not s.first and s.since_first_run is not None and post(s) == 1.0]
            after_f, tau = fit_warmup_time(after)
            warm[kind] = (factor, extra, after_f, tau)
            residuals[f"warmup.{kind}"] = {
                "median_ratio_by_100ms_after_first_run": {
                    b: float(np.median([r for t, r in after if b <= t < b + 100])) for b in range(0, 1000, 100)
                    if any(b <= t < b + 100 for t, _ in after)},
                "factor": factor, "extra_ms": extra, "after_factor": after_f, "warmup_ms": tau,
                "first_runs": len(firsts), "runs_after": len(after)}
        # a new session's first run in a page that is past its own warm-up (failover onto a live page)
        late = [s.compute_ms / post(s) - predicted(s) for s in samples if s.kind == kind and s.first
                and s.page_index >= LATE_SESSION_RUNS and (s.kind, s.backend) in fitted_rates and s.concurrent == 1]
        if late:
            residuals.setdefault(f"warmup.{kind}", {})["session_first_run_ms"] = max(0.0, float(np.median(late)))
            residuals[f"warmup.{kind}"]["late_first_runs"] = len(late)
    for s in samples:
        if s.concurrent > 1 and not s.first and (s.kind, s.backend) in fitted_rates:
            threads = fitted_rates[(s.kind, s.backend)].threads
            eff.append(s.concurrent * threads / max(s.compute_ms / predicted(s), 1e-6))
    residuals["contention"] = {"n": len(eff), "effective_cores_for_our_pages": float(np.median(eff)) if eff else None,
                               "background_cores_per_run": {r.run_id: r.background for r in runs}}
    # hops, loads, launches, notices
    hop_samples = [dataclasses.replace(s, wall_ms=s.compute_ms + (s.wall_ms - s.compute_ms)
                                       / background_factor(cores, 1.0, bg[s.run_id]))
                   for s in samples if not s.first and not s.queued]
    over, mb_s, residuals["hop"] = fit_hops(hop_samples, base.link_latency_ms)
    # startup work (launch, load) is CPU: one job's time / max(1, overlapping jobs / cores) is its
    # time alone (the sim runs it on the host again: cpu_bound_startup)
    def alone(ms: float, n: int) -> float:
        return ms / max(1.0, n / cores)
    loads = [(k, mb, alone(ms, n), first, n, age, since) for r in runs
             for (k, mb, ms, first), n, age, since in zip(r.loads, r.load_overlap, r.load_age or [0.0] * len(r.loads),
                                                          r.load_since or [None] * len(r.loads))]
    # the extra of loads onto serving pages from those with no launch beside them (a relaunch and its
    # tail beside one made a 69 MB Firefox load 929 ms against 404-470 without)
    served = [sv and q for r in runs for sv, q in zip(r.load_served or [False] * len(r.loads),
                                                      r.load_quiet or [True] * len(r.loads))]
    # the line and the extra of loads onto serving pages together (backfitting: the line is fitted with
    # those loads less their extra, the extra against that line; a few passes settle it)
    served_load: dict[str, dict[str, Any]] = {}
    for _ in range(3):
        less = [(k, mb, ms - (served_load.get(k, {}).get("served_load_ms", 0.0) if sv else 0.0), *rest)
                for (k, mb, ms, *rest), sv in zip(loads, served)]
        load_lines, pooled_load, residuals["load"] = fit_loads(less, base.link_latency_ms)
        served_load = fit_served_load(loads, served, load_lines, residuals["load"]["settle"], base.link_latency_ms)
    residuals["load"]["served"] = served_load
    def line_with_settle(k: str) -> Callable[[int], float]:
        """Load i on the kind's line with its settle term (a kind with one has no served extra)."""
        line, settle = load_lines[k], residuals["load"]["settle"][k]
        return lambda i: 2 * base.link_latency_ms + line_load_ms(line, settle, loads[i])
    later = fit_later_loads(loads, [u for r in runs for u in (r.load_units or [None] * len(r.loads))],
                            [g for r in runs for g in (r.load_grown or [None] * len(r.loads))],
                            [q for r in runs for q in (r.load_quiet or [True] * len(r.loads))],
                            base.link_latency_ms,
                            {k: line_with_settle(k) for k in residuals["load"]["settle"] if k in load_lines})
    residuals["load"]["later"] = later
    def with_warmup(s: Sample) -> float:
        """The prediction with the warm-up the simulator applies to the run (its page's first, or
        since that one ended): pages beside a launch or in the noise windows may be warming up."""
        w = warm.get(s.kind)
        return predicted(s) if w is None else warm_time(predicted(s), s.since_first_run, *w)
    launch_cpu, launch_weights, launch_res = fit_launch_cpu(runs_q, with_warmup, weight, cores, fitted_rates)
    residuals.update(launch_res)
    if main_thread:
        weight.update(launch_weights)    # identified by launches (the background-load grid rarely is)
    launch_tail, tail_res = fit_launch_tail(runs_q, with_warmup, weight, cores, fitted_rates)
    residuals.update(tail_res)
    launch_model = {k: (*(launch_cpu.get(k) or (bp.launch_threads, bp.launch_cpu_fraction)),
                        float(np.median([ms for r in runs for kk, ms in r.launches if kk == k] or [bp.launch_ms])))
                    for k, bp in browsers.items()} if main_thread else {}
    if not main_thread:
        launch_tail = {}
    launches = defaultdict(list)
    for r in runs:
        for (k, ms), n in zip(r.launches, r.launch_overlap):
            launches[k].append(alone(ms, n))
    notices = defaultdict(list)
    for r in runs:
        for k, ms in r.notices:
            notices[k].append(ms)
    for kind, bp in list(browsers.items()):
        ch: dict[str, Any] = {}
        backends = dict(bp.backends)
        for (k, be), rate in fitted_rates.items():
            if k == kind:
                backends[be] = rate
        ch["backends"] = backends
        if kind in over:
            ch["hop_overhead_ms"] = over[kind]
            ch["hop_extra_quantiles"] = tuple(residuals["hop"]["extra_quantiles"].get(kind, ()))
        if kind in load_lines:
            ch["load_ms"], ch["load_ms_per_mb"], ch["page_init_ms"] = load_lines[kind]
            ch["load_scale"] = 1.0
            ch["page_init_aged_ms"] = residuals["load"].get(kind, {}).get("page_init_aged_ms")
            ch["settle_load_ms"], ch["settle_ms"] = residuals["load"]["settle"].get(kind, (0.0, bp.settle_ms))
            ch["served_load_ms"] = served_load.get(kind, {}).get("served_load_ms", 0.0)
        if later.get(kind, {}).get("fitted"):       # it describes the served loads too (they are later loads)
            lf = later[kind]
            ch["later_load_ms"], ch["later_load_ms_per_mb"] = lf["fixed_ms"], lf["ms_per_mb"]
            ch["later_load_ms_per_unit"], ch["later_load_ms_per_grown_mb"] = lf["ms_per_unit"], lf["ms_per_grown_mb"]
            ch["served_load_ms"] = 0.0
        if kind in warm:
            ch["warmup_factor"], ch["warmup_extra_ms"], ch["warmup_after_factor"], ch["warmup_ms"] = warm[kind]
            ch["warmup_runs"] = 0.0
        if "session_first_run_ms" in residuals.get(f"warmup.{kind}", {}):
            ch["session_first_run_ms"] = residuals[f"warmup.{kind}"]["session_first_run_ms"]
        if kind in weight:
            ch["cpu_weight"] = weight[kind]
        ch["post_load_ms"], ch["post_load_factor"] = post_load.get(kind, (0.0, 1.0))
        if main_thread and kind in launch_cpu:
            ch["launch_threads"], ch["launch_cpu_fraction"] = launch_cpu[kind]
        if main_thread and kind in launch_tail:
            ch["launch_tail_ms"], ch["launch_tail_threads"] = launch_tail[kind]
        if any(k == kind for k, _ in fitted_rates):
            q, residuals[f"noise.{kind}"] = noise_quantiles([s for s in samples_q if s.kind == kind
                                                             and (s.kind, s.backend) in fitted_rates], predicted)
            if q:
                ch["compute_noise_quantiles"] = q
                lq, residuals[f"launch_noise.{kind}"] = launch_noise_quantiles(
                    runs_q, kind, lambda s: with_warmup(s) if (s.kind, s.backend) in fitted_rates else s.compute_ms,
                    lambda r, s: launch_slowdown(r, s, launch_model, launch_tail, weight.get(kind, 1.0), cores))
                if lq:
                    ch["launch_noise_quantiles"] = lq
                eq, residuals[f"early_noise.{kind}"] = early_noise_quantiles(
                    [s for s in samples_q if s.kind == kind and (s.kind, s.backend) in fitted_rates], with_warmup)
                if eq:
                    ch["early_noise_quantiles"] = eq
        own_cv = [r["log_ratio_sd"] for k, r in residuals.items() if k.startswith(f"compute.{kind}.") and r.get("n", 0) > 2]
        if own_cv:
            ch["compute_cv"] = float(np.median(own_cv))
        if launches.get(kind):
            x = np.array(launches[kind])
            ch["launch_ms"], ch["launch_sd_ms"] = float(np.median(x)), _robust_sd(x)
            residuals[f"launch.{kind}"] = {"n": len(x), "median_ms": float(np.median(x)), "sd_ms": ch["launch_sd_ms"]}
        beats = [x for r in runs for k, x in r.load_beats if k == kind]
        if main_thread and beats:
            ch["heartbeat_blocked_by_load"] = float(np.median(beats)) < 0.25
            residuals[f"load_heartbeats.{kind}"] = {"n": len(beats), "beats_per_interval": float(np.median(beats))}
        if main_thread:
            ch["heartbeat_blocked_by_compute"] = True
        if notices.get(kind):
            n = float(np.median(notices[kind]))
            ch["close_notice_ms"] = ch["exit_notice_ms"] = n
            residuals[f"crash_notice.{kind}"] = {"n": len(notices[kind]), "median_ms": n}
        browsers[kind] = dataclasses.replace(bp, **ch)
    gaps = np.array([g for r in runs for _, g in r.gaps])   # idle: runs and loads are modelled apart
    if len(gaps) < 20:
        gaps = np.array([g for r in runs for _, g in [*r.gaps, *r.busy_gaps]])
    changes: dict[str, Any] = {}
    if len(gaps) >= 5:
        q = np.quantile(gaps, np.linspace(0, 1, QUANTILES))
        pos = gaps[gaps > 0.5]
        changes["heartbeat_extra_quantiles"] = tuple(float(v) for v in q)
        if len(pos) >= 3:
            changes["heartbeat_extra_ms"] = float(np.median(pos))
            changes["heartbeat_sigma"] = float(max(np.std(np.log(pos)), 0.05))
        residuals["heartbeat"] = {"n": int(len(gaps)), "fitted": True, "extra_p50_ms": float(np.median(gaps)),
                                  "extra_p99_ms": float(np.quantile(gaps, 0.99)), "extra_max_ms": float(gaps.max())}
    else:
        residuals["heartbeat"] = {"n": int(len(gaps)), "fitted": False}
    if pooled_load is not None:   # kinds without loads of their own (and without a line) use the pooled line
        changes.update(session_create_ms=pooled_load[0], session_create_ms_per_mb=pooled_load[1], fetch_ms_per_mb=0.0)
    if residuals["hop"].get("fitted"):
        changes["link_mb_per_s"] = mb_s
    if cv:
        changes["compute_cv"] = float(np.median(cv))
    run_ids = tuple(r.run_id for r in runs)
    if main_thread:
        changes["cpu_bound_startup"] = True
    return dataclasses.replace(
        base, name=name, version=version, calibrated=True, browsers=browsers,
        background_cores=float(np.median(known_bg)) if known_bg else base.background_cores,
        source_runs=run_ids, residuals=residuals,
        notes=f"fitted by shardtwin calibrate from {len(run_ids)} run(s), {len(samples)} shard runs; "
              "shard loads: a line per browser kind (load_ms + MB * load_ms_per_mb, page_init_ms on a page's first)", **changes)


# A compute fit whose median |error| over its own runs exceeds this was measured on a disturbed host:
# 16 collects on a quiet host fitted at 0.9-5.6%, one that predicted every held-out median 6-16% slow
# at 6.8/7.4%, two on a loaded host (load average 6-13) at 20-52%.
FIT_SUSPECT_PCT = 6.0


def fit_warnings(prof: Profile) -> list[str]:
    """One line per compute fit that disagrees with its own runs beyond FIT_SUSPECT_PCT."""
    out = []
    for key, r in sorted(prof.residuals.items()):
        if key.startswith("compute.") and r.get("fitted") and r.get("median_abs_pct", 0.0) > FIT_SUSPECT_PCT:
            out.append(f"{key[len('compute.'):]} compute fit misses its own runs by {r['median_abs_pct']:.1f}% "
                       f"(median; a quiet host gives <= {FIT_SUSPECT_PCT:g}%): the runs were likely disturbed "
                       "(host load, a slower host for part of the collect); predictions from this profile can be "
                       "off by as much; re-run `shardtwin calibrate --collect` on a quiet host")
    return out


def calibrate(store: Store, run_ids: list[str] | None = None, base: Profile = DEFAULT_PROFILE,
              name: str = "calibrated", source: str = "real") -> Profile:
    """Fit from the given runs (default: every finished run of `source`), store it versioned."""
    if not run_ids:
        run_ids = [r.run_id for r in store.runs(source=source, status="finished")]
    if not run_ids:
        raise InputError(f"no finished {source} runs in {store.path}; run `shardtwin calibrate --collect` first")
    version = store.next_profile_version(name)
    prof = fit_profile([extract(store, r) for r in run_ids], base, name, version, main_thread=source == "real")
    store.save_profile(name, prof.to_dict(), prof.residuals, version=prof.version)
    return prof


# --- host background load (processes outside the run) -----------------------------------

HOST_TABLE = """CREATE TABLE IF NOT EXISTS host_background (run_id VARCHAR PRIMARY KEY, background_cores DOUBLE,
  samples INTEGER)"""
# CPU the hypervisor gave to others while this VM's cores wanted it ("steal"): capacity lost that no
# process of this host shows. Recorded and reported, not yet told to the simulator (a fresh held-out
# session, g30, ran 10-15% slow while the background load stayed at 0.03-0.11 cores; steal was not
# sampled then).
STEAL_TABLE = "CREATE TABLE IF NOT EXISTS host_steal (run_id VARCHAR PRIMARY KEY, steal_cores DOUBLE, samples INTEGER)"


class BackgroundSampler:
    """Cores busy outside this process tree (other users, their browsers) while a real run goes on.

    Every `every_s`: busy CPU of the whole host (psutil.cpu_times) minus the CPU our process and
    its descendants (coordinator, Playwright, browsers) used in the same interval."""

    def __init__(self, every_s: float = 0.5) -> None:
        import threading
        self.every_s, self.values, self.steal = every_s, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _busy() -> float:
        import psutil
        t = psutil.cpu_times()
        return t.user + t.system + getattr(t, "nice", 0) + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    @staticmethod
    def _stolen() -> float:
        import psutil
        return getattr(psutil.cpu_times(), "steal", 0.0)     # Linux only; 0 elsewhere

    def _ours(self, seen: dict[int, float]) -> float:
        import psutil
        me = psutil.Process()
        used = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                tot = c.user + c.system
            except psutil.Error:
                continue
            prev = seen.get(p.pid)
            used += tot - (prev if prev is not None else 0.0)   # a new process: all of its CPU is new
            seen[p.pid] = tot
        return used

    def _loop(self) -> None:
        import time
        seen: dict[int, float] = {}
        self._ours(seen)
        busy0, stolen0, t0 = self._busy(), self._stolen(), time.monotonic()
        while not self._stop.wait(self.every_s):
            busy, stolen, t = self._busy(), self._stolen(), time.monotonic()
            ours = self._ours(seen)
            self.values.append(max(0.0, (busy - busy0) - ours) / max(t - t0, 1e-6))
            self.steal.append(max(0.0, stolen - stolen0) / max(t - t0, 1e-6))
            busy0, stolen0, t0 = busy, stolen, t

    def __enter__(self) -> "BackgroundSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def steal_mean(self) -> float | None:
        return float(np.mean(self.steal)) if self.steal else None


def save_background(store: Store, run_id: str, sampler: BackgroundSampler) -> None:
    store.con.execute(HOST_TABLE)
    store.con.execute(STEAL_TABLE)
    if sampler.mean is not None:
        store.con.execute("INSERT OR REPLACE INTO host_background VALUES (?, ?, ?)",
                          [run_id, sampler.mean, len(sampler.values)])
    if sampler.steal_mean is not None:
        store.con.execute("INSERT OR REPLACE INTO host_steal VALUES (?, ?, ?)",
                          [run_id, sampler.steal_mean, len(sampler.steal)])


def steal_of(store: Store, run_id: str) -> float | None:
    """Cores the hypervisor took from this host during the run (None: not sampled)."""
    store.con.execute(STEAL_TABLE)
    row = store.con.execute("SELECT steal_cores FROM host_steal WHERE run_id = ?", [run_id]).fetchone()
    return None if row is None else float(row[0])


def background_of(store: Store, run_id: str) -> float | None:
    store.con.execute(HOST_TABLE)
    row = store.con.execute("SELECT background_cores FROM host_background WHERE run_id = ?", [run_id]).fetchone()
    return None if row is None else float(row[0])


def real_with_background(scenario, db: str, timeout_s: float = 600.0, profile=None) -> tuple[dict, float | None]:
    """shardtwin real + the host's background load during it (stored in host_background); `profile`
    configures its coordinator (placement speeds) as the simulator's twin run will be."""
    from experiments.cmd_real import real_and_store
    with BackgroundSampler() as smp:
        res = real_and_store(scenario, db, timeout_s=timeout_s, profile=profile)
    with Store(db) as store:
        save_background(store, res["run_id"], smp)
    return res, smp.mean

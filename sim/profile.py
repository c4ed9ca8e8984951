"""Calibration profiles: every parameter of the simulated world, in one versioned file.

Rules: frozen dataclasses; unknown fields are rejected; `DEFAULT_PROFILE` is built
from the figures measured on this machine class (DESIGN.md "Real executor") and is
labelled `calibrated: false` until `shardtwin calibrate` replaces it.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from shardtwin.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BackendRate:
    matmul_gflops: float          # dense GEMM rate at full speed of `threads` cores
    attention_gflops: float       # QK^T / AV batched small matmuls + softmax
    elementwise_gflops: float     # norms, activations, adds (memory bound)
    conv_gflops: float
    threads: float = 1.0          # host cores one run occupies
    run_overhead_ms: float = 1.0  # per shard run: tensor creation, dispatch, session.run entry
    readback_ms: float = 0.0      # per run: GPU -> CPU readback (webgpu)


AGED_PAGE_MS = 1000.0   # a page ready this long before its first load counts as settled (page_init_aged_ms)
# A run that starts while another browser launches, or within this long after it said hello, draws
# its noise from launch_noise_quantiles (when calibrated): measured runs there are spiky.
LAUNCH_NOISE_WINDOW_MS = 1500.0
# The same after a page's first session create ends (its browser compiles the WASM module's optimising
# tier on background threads then: measured pages of the other browser ran 1.3-2.4x slow at p90 in the
# first second after it, 1.0-1.2x later).
WARM_NOISE_WINDOW_MS = 1000.0
# Runs in a page, and in a session, before its noise is steady (Chromium's WASM tier-up bumps runs 4-6):
# earlier runs (but a session's first) draw from early_noise_quantiles when calibrated.
STEADY_NOISE_RUNS = 8
# A new session's first run in a page past this many runs costs session_first_run_ms more; a younger
# page's first runs are the warm-up's (fitted on them, so both would count the same cost twice).
LATE_SESSION_RUNS = 4
# served_load_ms applies to a load onto a page whose last shard run ended less than this before (a
# page serving requests); a standby that ran one warm-up run and idled for seconds is another case
# (measured in Firefox: 929 ms for 69 MB, 4 s after its one run, against 404-470 on serving pages).
SERVED_IDLE_MS = 1000.0
# A session create holds the shard's model bytes and its initialisers at once: the page's heap (which
# never shrinks) rises to what it holds + this many times the new shard's MB. A later create that
# must grow it past its high-water pays for the new memory (later_load_ms_per_grown_mb): measured in
# Firefox, 14 MB onto a page holding one 14 MB shard created in 38-47 ms, onto pages holding 55-69 MB
# in 26-33 ms.
HEAP_NEED_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class BrowserProfile:
    launch_ms: float              # process start to first WebSocket message
    launch_sd_ms: float
    baseline_mb: float            # page with runtime loaded, no shards
    memory_budget_mb: float       # beyond this the page dies (OOM)
    close_notice_ms: float        # socket close observed after a crash / disconnect
    exit_notice_ms: float         # process exit observed after a crash
    backends: Mapping[str, BackendRate] = field(default_factory=dict)
    # Calibrated refinements (defaults leave the uncalibrated model unchanged):
    hop_overhead_ms: float = 0.0  # per shard run, round trip: coordinator feed build + encode, page decode
    # Measured round trip of a shard run minus its compute minus the fitted hop line (ms), at evenly spaced
    # probabilities 0..1: a right-skewed extra (median hop 2.5-2.8 ms vs the line's 2.2). The simulator
    # adds one draw per run. () : the line alone.
    hop_extra_quantiles: tuple[float, ...] = ()
    load_scale: float = 1.0       # this browser's shard load time relative to the profile's load model
    warmup_factor: float = 1.0    # first run of a shard in a page (JIT, allocation) vs later runs
    warmup_runs: float = 0.0      # > 0: the n-th run in a page (any shard) takes 1 + (warmup_factor - 1) *
                                  # exp(-n / warmup_runs) times longer (V8 WASM tier-up measured in Chromium)
    page_init_ms: float = 0.0     # extra cost of a page's first session create (ORT WASM runtime init)
    warmup_extra_ms: float = 0.0  # additive first-run cost of a page (decays like warmup_factor's excess)
    # > 0: the warm-up is over time instead (measured in Chromium: its optimising WASM tier compiles in
    # the background after the first run; runs after it are ~2x slow and settle within ~0.3-0.5 s
    # whatever their size, i.e. after 2 runs of a 70 ms shard but 5 of a 15 ms one). The page's first
    # run takes ms * warmup_factor + warmup_extra_ms; a run t ms after it ended ms * (1 +
    # (warmup_after_factor - 1) * exp(-t / warmup_ms)). warmup_runs is then unused.
    warmup_ms: float = 0.0
    warmup_after_factor: float = 1.0
    session_first_run_ms: float = 0.0   # extra ms of a shard's first run in a page (a new session's first run)
    # Per-kind load line (calibrated): a session create costs load_ms + MB * load_ms_per_mb in this
    # browser (+ page_init_ms for the page's first); None: the profile's pooled model times load_scale.
    load_ms: float | None = None
    load_ms_per_mb: float | None = None
    # The first session of a page that has been up for AGED_PAGE_MS or more (a standby): measured
    # cheaper than right after launch, when the page still compiles its runtime in the background.
    # None: page_init_ms whatever the page's age.
    page_init_aged_ms: float | None = None
    # A page keeps working after its first session create (runtime compile, JIT): a later session
    # create costs settle_load_ms * exp(-t / settle_ms) more, t = ms since the first one ended
    # (measured in Chromium: 14 MB took 320-466 ms right after the first, 59-122 ms on a page
    # serving for seconds). 0: none.
    settle_load_ms: float = 0.0
    settle_ms: float = 1000.0
    # A later session create on a serving page (its last run ended < SERVED_IDLE_MS before: a failover
    # onto it) costs this much more (measured in Firefox: +47-68 ms for 69 MB, +4-57 ms for 15 MB over
    # its line; a page that had not run yet follows the line). 0: none.
    served_load_ms: float = 0.0
    # A later session create (the page holds a session already), fitted on those alone (calibrated):
    # later_load_ms + MB * later_load_ms_per_mb + graph units * later_load_ms_per_unit + the MB its
    # heap grows past its high-water (HEAP_NEED_FACTOR) * later_load_ms_per_grown_mb. It replaces the
    # load line, settle and served terms for such loads. None: those apply.
    later_load_ms: float | None = None
    later_load_ms_per_mb: float = 0.0
    later_load_ms_per_unit: float = 0.0
    later_load_ms_per_grown_mb: float = 0.0
    # After a later session create in a page that has served (a failover onto it), the page's runs
    # that start within post_load_ms take post_load_factor times longer, whichever session they run
    # (measured in Chromium: 3.4x in the first 250 ms, 2.9x to 500 ms, 1.0x after 750 ms; Firefox
    # 1.0x). 0 ms: none.
    post_load_ms: float = 0.0
    post_load_factor: float = 1.0
    # The page's main thread sends heartbeats. Measured: Chromium's session create (a shard load)
    # blocks it, Firefox's does not; a shard run (ORT Web WASM) blocks it in both. True: a heartbeat
    # due while blocked leaves when the block ends (setInterval runs once, late).
    heartbeat_blocked_by_load: bool = False
    heartbeat_blocked_by_compute: bool = False
    compute_cv: float | None = None   # this browser's run-to-run compute noise (None: the profile's)
    # Empirical run-to-run noise of a warm run: factors on the predicted compute time at evenly
    # spaced probabilities 0..1 (calibrated from steady runs; measured: a tight core a few % below
    # the fit plus a right tail). When given it replaces the lognormal compute_cv model.
    compute_noise_quantiles: tuple[float, ...] = ()
    # The same for a run beside another browser's launch (LAUNCH_NOISE_WINDOW_MS) or another page's
    # first session create (WARM_NOISE_WINDOW_MS), relative to the slowdown the launch's own CPU model
    # (launch_threads, launch_tail_ms) gives it: measured mostly unslowed with spikes of 2-6x.
    # () : compute_noise_quantiles there too.
    launch_noise_quantiles: tuple[float, ...] = ()
    # The same for a page's (or a session's) runs 1..STEADY_NOISE_RUNS-1, relative to the warm-up model.
    early_noise_quantiles: tuple[float, ...] = ()
    cpu_weight: float = 1.0       # CFS weight of its renderer vs a nice-0 process (Chromium renders at nice 5: ~0.33)
    # A launch's CPU (cpu_bound_startup): a burst of `launch_threads` cores at nice 0 over the first
    # `launch_cpu_fraction` of launch_ms, then waiting (measured: Firefox starts its processes up front
    # and slows a page beside it ~3x early in its launch, not at the end).
    launch_threads: float = 1.0
    launch_cpu_fraction: float = 1.0
    # After it says hello, a launched browser keeps working (runtime compile, first GC, its other
    # processes settling): `launch_tail_threads` cores at nice 0 for `launch_tail_ms`, beside
    # whatever runs (measured: pages beside a relaunch run 1.2-1.9x slower in the first 0.5-1 s
    # after its BROWSER_READY). 0 ms: none.
    launch_tail_ms: float = 0.0
    launch_tail_threads: float = 1.0


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    version: int
    calibrated: bool
    notes: str
    host_cores: float
    link_latency_ms: float        # one hop, coordinator <-> page
    link_mb_per_s: float          # WebSocket binary frames on loopback
    fetch_ms_per_mb: float        # shard file fetch into the page
    session_create_ms: float      # ORT InferenceSession, fixed part
    session_create_ms_per_mb: float
    heartbeat_extra_ms: float     # median extra delay of a heartbeat beyond its interval
    heartbeat_sigma: float        # lognormal sigma of that extra delay
    compute_cv: float             # coefficient of variation of one shard run's compute time
    pressure_fraction: Mapping[str, float]   # memory_pressure level -> fraction of the budget allocated
    pressure_slowdown: Mapping[str, float]   # level -> compute slowdown while under pressure
    browsers: Mapping[str, BrowserProfile]
    # Empirical heartbeat extra delay (gap - interval, ms) at evenly spaced probabilities 0..1;
    # when given it replaces the lognormal (heartbeat_extra_ms, heartbeat_sigma) model.
    heartbeat_extra_quantiles: tuple[float, ...] = ()
    # Cores kept busy by processes outside the run (nice 0), e.g. other users of a shared host;
    # a page's compute slows by SimWorld.background_factor (CFS shares with cpu_weight).
    background_cores: float = 0.0
    # True: browser launches and shard loads are one-thread CPU work on the host (they slow each
    # other and compute down, as measured at startup); False: pure delays.
    cpu_bound_startup: bool = False
    source_runs: tuple[str, ...] = ()          # real runs a calibrated profile was fitted from
    residuals: Mapping[str, Any] = field(default_factory=dict)   # fit residuals per parameter group

    def rate(self, kind: str, backend: str) -> BackendRate:
        try:
            bp = self.browsers[kind]
        except KeyError:
            raise ConfigError(f"profile {self.name!r} has no browser {kind!r}; it has {', '.join(sorted(self.browsers))}") from None
        if backend not in bp.backends:
            backend = "wasm"   # the worker falls back to wasm when a backend is unavailable
        return bp.backends[backend]

    def gflops(self, kind: str, backend: str) -> float:
        return self.rate(str(kind), str(backend)).matmul_gflops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))


def warm_ms(ms: float, runs: float, factor: float, tau: float, extra_ms: float) -> float:
    """A page's run after `runs` earlier runs under the decaying warm-up (tau = warmup_runs > 0):
    ms * (1 + (factor - 1) * d) + extra_ms * d, d = exp(-runs / tau). Shared by the simulator and
    the fit of the early-run noise."""
    d = math.exp(-runs / tau)
    return ms * (1.0 + (factor - 1.0) * d) + extra_ms * d


def warm_time(ms: float, since_first_run_ms: float | None, factor: float, extra_ms: float, after_factor: float,
              tau_ms: float) -> float:
    """A run of steady time `ms` under the time warm-up (warmup_ms = tau_ms > 0): the page's first run
    (since_first_run_ms None) takes ms * factor + extra_ms, a run t ms after it ended
    ms * (1 + (after_factor - 1) * exp(-t / tau_ms)). Shared by the simulator and the fits around it."""
    if since_first_run_ms is None:
        return ms * factor + extra_ms
    return ms * (1.0 + (after_factor - 1.0) * math.exp(-max(since_first_run_ms, 0.0) / tau_ms))


def heap_growth(held_mb: float, shard_mb: float, high_water_mb: float) -> tuple[float, float]:
    """A session create of a shard_mb shard in a page holding held_mb whose heap high-water is
    high_water_mb (HEAP_NEED_FACTOR): (MB its heap grows past that, the new high-water). The one
    definition the simulator and the fit (experiments.calibrate.extract) share."""
    need = held_mb + HEAP_NEED_FACTOR * shard_mb
    return max(0.0, need - high_water_mb), max(high_water_mb, need)


def background_factor(host_cores: float, weight: float, background: float) -> float:
    """Slowdown of a one-thread page by `background` cores of outside nice-0 work under CFS:
    the page gets host_cores * weight / (weight + background) of a core, at most one."""
    if background <= 0:
        return 1.0
    share = min(1.0, host_cores * weight / (weight + background))
    return 1.0 / max(share, 1e-3)


def _strict(cls, data: Mapping[str, Any], where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"profile {where}: expected an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    extra = sorted(set(data) - names)
    if extra:
        raise ConfigError(f"profile {where}: unknown field(s) {', '.join(extra)}; accepted: {', '.join(sorted(names))}")
    missing = sorted(f.name for f in fields(cls) if f.name not in data
                     and f.default is MISSING and f.default_factory is MISSING)
    if missing:
        raise ConfigError(f"profile {where}: missing field(s) {', '.join(missing)}")
    return data


def profile_from_dict(d: Mapping[str, Any]) -> Profile:
    d = dict(_strict(Profile, d, "top level"))
    browsers = {}
    for k, bd in dict(d["browsers"]).items():
        bd = dict(_strict(BrowserProfile, bd, f"browsers.{k}"))
        bd["backends"] = {bk: BackendRate(**_strict(BackendRate, bv, f"browsers.{k}.backends.{bk}"))
                          for bk, bv in dict(bd.get("backends", {})).items()}
        for q in ("compute_noise_quantiles", "launch_noise_quantiles", "early_noise_quantiles", "hop_extra_quantiles"):
            if q in bd:
                bd[q] = tuple(bd[q])
        browsers[k] = BrowserProfile(**bd)
    d["browsers"] = browsers
    for k in ("heartbeat_extra_quantiles", "source_runs"):
        if k in d:
            d[k] = tuple(d[k])
    try:
        return Profile(**d)
    except TypeError as exc:
        raise ConfigError(f"profile: {exc}") from None


def load_profile(path: str | Path | None) -> Profile:
    if path is None:
        return DEFAULT_PROFILE
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"profile {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    return profile_from_dict(data)


def _wasm(gf: float) -> BackendRate:
    return BackendRate(matmul_gflops=gf, attention_gflops=gf * 0.45, elementwise_gflops=2.0,
                       conv_gflops=gf * 0.6, threads=1.0, run_overhead_ms=1.5)


def _browser(launch_ms: float, webgpu: BackendRate, webnn: BackendRate | None = None) -> BrowserProfile:
    backends = {"wasm": _wasm(35.0), "webgpu": webgpu}
    if webnn is not None:
        backends["webnn"] = webnn
    return BrowserProfile(launch_ms=launch_ms, launch_sd_ms=launch_ms * 0.1, baseline_mb=200.0,
                          memory_budget_mb=4096.0, close_notice_ms=20.0, exit_notice_ms=20.0, backends=backends)


# Figures from DESIGN.md (measured on a 2-core, no-GPU machine): WASM 1 thread ~35 GFLOPS on a
# 128x768 @ 768x3072 matmul; WebGPU ~0.9 GFLOPS Chromium/SwiftShader, ~6 Firefox/lavapipe with
# ~100 ms readback; launch to first message Chromium ~0.3 s, Firefox ~1.1 s; ~200 MiB per browser;
# SIGKILL observed in ~20 ms; 128x384 fp32 WebSocket round trip 1-3 ms. The rest are estimates.
DEFAULT_PROFILE = Profile(
    name="default-uncalibrated", version=1, calibrated=False,
    notes="from DESIGN.md measured figures; attention/elementwise rates, session-create and heartbeat "
          "jitter are estimates until `shardtwin calibrate` fits them",
    host_cores=2.0, link_latency_ms=0.5, link_mb_per_s=200.0, fetch_ms_per_mb=1.5,
    session_create_ms=40.0, session_create_ms_per_mb=2.0,
    heartbeat_extra_ms=2.0, heartbeat_sigma=1.0, compute_cv=0.03,
    pressure_fraction={"low": 0.25, "medium": 0.5, "high": 0.97},
    pressure_slowdown={"low": 1.05, "medium": 1.2, "high": 1.5},
    browsers={
        "chromium": _browser(300.0, BackendRate(0.9, 0.5, 0.5, 0.6, threads=2.0, run_overhead_ms=3.0)),
        "firefox": _browser(1100.0, BackendRate(6.0, 3.0, 2.0, 4.0, threads=2.0, run_overhead_ms=3.0,
                                                readback_ms=100.0)),
        "edge": _browser(350.0, BackendRate(0.9, 0.5, 0.5, 0.6, threads=2.0, run_overhead_ms=3.0),
                         webnn=BackendRate(40.0, 18.0, 3.0, 25.0, threads=1.0, run_overhead_ms=1.0)),
        "safari": _browser(500.0, BackendRate(5.0, 2.5, 2.0, 3.0, threads=2.0, run_overhead_ms=3.0)),
    },
)

"""Running one `shardtwin test` scenario: engine choice, sim/real execution into the store,
performance history from DuckDB, progress on stderr, result files under ./test_results/.

Rules:
- Default mode is real only when chromium AND firefox-esr are installed, every browser of
  the scenario is one of those two, the model's family exports real ONNX shards
  (real/shards.py REAL_FAMILIES) and the shards fit this machine; otherwise sim, and the
  reason is one line (`mode_note`). An explicit `--mode real` that cannot run is InputError.
- Each run is stored in DuckDB (one transaction, or aborted) before its result file is
  written; result files are written atomically and never overwrite each other.
"""

from __future__ import annotations

import inspect
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from events.scenario import Scenario
from events.schema import EventKind as K
from events.store import Store
from experiments.runner import StoredRun, run_real_stored, run_sim_stored, write_json_atomic
from shardtwin.errors import InputError

REAL_BROWSERS = ("chromium", "firefox")
REAL_EXECUTABLES = ("chromium", "firefox-esr")
BROWSER_OVERHEAD_MB = 250.0        # measured ~200 MiB PSS per idle browser, plus headroom
WASM_SHARD_LIMIT_MB = 1800.0       # one page's wasm32 heap is 4 GiB; weights + session copies


# --- engine choice ---------------------------------------------------------------------

def real_blocker(s: Scenario) -> str | None:
    """Why this scenario cannot run in real browsers here (one line), or None."""
    from models.catalogue import get_model
    from real.shards import REAL_FAMILIES
    from sim.run import plan_for
    missing = [x for x in REAL_EXECUTABLES if shutil.which(x) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    others = sorted({str(b) for b in s.browser_list()} - set(REAL_BROWSERS))
    if others:
        return f"browser(s) {', '.join(others)} exist as sim profiles only (real: chromium, firefox)"
    fam = get_model(s.model).family
    if fam not in REAL_FAMILIES:
        return f"{s.model} ({fam}) has no real ONNX export here (real families: {', '.join(REAL_FAMILIES)})"
    plan = plan_for(s)
    biggest = max(x.weight_mb for x in plan.shards)
    if biggest > WASM_SHARD_LIMIT_MB:
        return f"its largest shard ({biggest:,.0f} MB) exceeds a browser page's wasm heap; use more shards"
    import psutil
    need = sum(x.weight_mb for x in plan.shards) * 2 + BROWSER_OVERHEAD_MB * len(s.browser_list())
    avail = psutil.virtual_memory().available / 2**20
    if need > 0.8 * avail:
        return f"needs ~{need:,.0f} MB but {avail:,.0f} MB are available"
    return None


def choose_mode(requested: str | None, s: Scenario) -> tuple[list[str], str]:
    """Engines to run ('sim', 'real') and the one-line note saying why."""
    blocker = real_blocker(s)
    if requested in ("real", "both"):
        if blocker:
            raise InputError(f"--mode {requested}: cannot run {s.model} for real: {blocker}")
        return (["real"] if requested == "real" else ["sim", "real"]), f"{requested}: requested"
    if requested == "sim":
        return ["sim"], "sim: requested (--mode sim); results are predictions of the simulator"
    if blocker:
        return ["sim"], f"sim (predicted, not run in browsers): {blocker}"
    return ["real"], "real: chromium and firefox-esr installed, model exports real ONNX shards and fits"


# --- performance history ---------------------------------------------------------------

_HISTORY_SQL = """
SELECT e.browser, e.shard, e.value AS ms, r.scenario_hash, r.source
FROM events e JOIN runs r USING (run_id)
WHERE e.kind = 'shard_completed' AND e.value > 0 AND r.status = 'finished'"""


def history_speeds(store: Store, backend: str) -> dict[str, Any]:
    """Measured GFLOPS per browser kind from the finished runs in `store`: plan GFLOPs of each
    completed shard / its compute time, summed per kind (total GFLOP / total seconds). Real
    runs are preferred (sim runs only when there is no real one), and runs of the same
    backend when there are any."""
    from sim.run import plan_for
    out: dict[str, Any] = {"db": str(store.path), "speeds": {}, "samples": 0, "source": None, "runs": 0}
    rows = store.query(_HISTORY_SQL)
    scen = {h: store.load_scenario(h) for h in {r["scenario_hash"] for r in rows}}
    rows = [r for r in rows if r["source"] == "real"] or rows
    rows = [r for r in rows if str(scen[r["scenario_hash"]].backend) == backend] or rows
    gf: dict[str, float] = {}
    secs: dict[str, float] = {}
    plans = {h: plan_for(s) for h, s in scen.items()}
    for r in rows:
        plan = plans[r["scenario_hash"]]
        if r["browser"] is None or r["shard"] is None or r["shard"] >= len(plan.shards):
            continue
        kind = r["browser"].rsplit("-", 1)[0]
        gf[kind] = gf.get(kind, 0.0) + plan.shards[r["shard"]].gflops
        secs[kind] = secs.get(kind, 0.0) + r["ms"] / 1000.0
    out.update(speeds={k: gf[k] / secs[k] for k in sorted(gf) if secs[k] > 0}, samples=len(rows),
               source=rows[0]["source"] if rows else None,
               runs=len({(r["scenario_hash"], r["source"]) for r in rows}),
               backends=sorted({str(scen[r["scenario_hash"]].backend) for r in rows}))
    if not out["speeds"]:
        out["note"] = f"no completed shards in {store.path}: placement falls back to the profile's speeds"
    return out


# --- progress --------------------------------------------------------------------------

class Progress:
    """Prints `label: N s[, k requests done]` on stderr every ~2 s while a run lasts."""

    def __init__(self, enabled: bool, label: str, every_s: float = 2.0) -> None:
        self.enabled, self.label, self.every_s = enabled, label, every_s
        self.coord: Any = None
        self._seen, self._done = 0, 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _requests_done(self) -> int | None:
        if self.coord is None:
            return None
        log = self.coord.log
        n = len(log)
        self._done += sum(1 for rec in log[self._seen:n] if rec.KIND in (K.REQUEST_COMPLETED, K.REQUEST_FAILED))
        self._seen = n
        return self._done

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            done = self._requests_done()
            more = "" if done is None else f", {done} requests done"
            sys.stderr.write(f"shardtwin test: {self.label}: {time.monotonic() - self._t0:.0f} s{more}\n")
            sys.stderr.flush()


def note(enabled: bool, line: str) -> None:
    if enabled:
        sys.stderr.write(f"shardtwin test: {line}\n")
        sys.stderr.flush()


# --- running ---------------------------------------------------------------------------

def run_sim(store: Store, s: Scenario, profile, history_speed: dict | None, progress: bool, label: str
            ) -> dict[str, Any]:
    return _outcome(run_sim_stored(store, s, profile, history_speed=history_speed or None,
                                   around=Progress(progress, label)))


def _outcome(stored: StoredRun) -> dict[str, Any]:
    """What Session.run needs of a run; `store_run(result)` writes it (finished or aborted)."""
    return {"result": stored.result, "log": stored.run.log, "plan": stored.run.plan, "run_id": stored.run_id,
            "store_run": stored.finish}


def real_takes_history() -> bool:
    from real.run import run_real
    return "history_speed" in inspect.signature(run_real).parameters


def run_real_browsers(store: Store, s: Scenario, history_speed: dict | None, progress: bool, label: str,
                      timeout_s: float, launcher: str = "auto", headed: bool = False) -> dict[str, Any]:
    from sim.profile import DEFAULT_PROFILE
    kwargs: dict[str, Any] = {}
    if history_speed:
        kwargs["history_speed"] = history_speed      # cmd_test checked real_takes_history()
    prog = Progress(progress, label)
    return _outcome(run_real_stored(store, s, around=prog, headed=headed, launcher=launcher, timeout_s=timeout_s,
                                    on_coordinator=lambda c: setattr(prog, "coord", c), profile=DEFAULT_PROFILE,
                                    **kwargs))


# --- result files ----------------------------------------------------------------------

def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in str(text))


def result_path(results_dir: str | Path, res: dict[str, Any], suffix: str = "") -> Path:
    """<model>_<shards>_<type>_<source>[_suffix]_<timestamp>.json, never an existing file's name."""
    ts = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    parts = [_safe(res.get("model_name", "run")), str(res.get("shard_count", "")), _safe(res.get("shard_type", "")),
             _safe(res.get("source", ""))] + ([_safe(suffix)] if suffix else []) + [ts]
    base = Path(results_dir) / "_".join(parts)
    p, i = base.with_suffix(".json"), 1
    while p.exists():
        p, i = Path(f"{base}-{i}.json"), i + 1
    return p


def write_result(results_dir: str | Path, res: dict[str, Any], suffix: str = "") -> Path:
    return write_json_atomic(result_path(results_dir, res, suffix), res)


"""PNG plots of the analysis (matplotlib, Agg backend): latency CDF, recovery bars, run timeline, memory.

Rules: every plot draws numbers that experiments.analysis / experiments.trace computed
from the events; nothing is invented here. Each figure has a title, axis labels with
units and a legend; an empty data set gives a figure that says so instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MARK_STYLE = {  # kind: (marker, colour, label, height above the lane centre)
    "fault_injected": ("X", "red", "fault injected", 0.62),
    "browser_crashed": ("x", "darkred", "browser exited", 0.62),
    "failure_suspected": ("v", "orange", "failure suspected", 0.5),
    "failure_detected": ("D", "darkorange", "failure detected", 0.5),
    "recovery_started": (">", "royalblue", "recovery started", 0.38),
    "recovery_completed": ("*", "green", "recovery completed", 0.38),
    "recovery_failed": ("P", "black", "recovery failed", 0.38),
}
SOURCE_STYLE = {"sim": "-", "real": "--"}


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG at 110 dpi, close; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the selected runs", ha="center", va="center", transform=ax.transAxes)


def latency_cdf(lat: list[dict[str, Any]], model: str, path: Path) -> Path:
    """Empirical CDF of completed-request latency per recovery strategy (line style per source)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    groups: dict[tuple[str, str], list[float]] = {}
    for r in lat:
        groups.setdefault((r["source"], r["recovery_strategy"]), []).append(r["latency_ms"])
    both = len({s for s, _ in groups}) > 1
    colours = {st: f"C{i}" for i, st in enumerate(sorted({st for _, st in groups}))}
    for (src, strat), xs in sorted(groups.items()):
        xs = np.sort(xs)
        ys = np.arange(1, len(xs) + 1) / len(xs)
        label = f"{strat} ({src}, n={len(xs)})" if both else f"{strat} (n={len(xs)})"
        ax.step(xs, ys, where="post", color=colours[strat], linestyle=SOURCE_STYLE.get(src, ":"), label=label)
    if groups:
        ax.legend(title="recovery strategy" + (" (solid: sim, dashed: real)" if both else ""), fontsize=8)
        if max(max(v) for v in groups.values()) / max(min(min(v) for v in groups.values()), 1e-9) > 20:
            ax.set_xscale("log")
    else:
        _empty(ax, "completed requests")
    ax.set_title(f"{model}: request latency CDF per recovery strategy")
    ax.set_xlabel("request latency (ms)")
    ax.set_ylabel("fraction of completed requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def recovery_bars(by: list[dict[str, Any]], model: str, path: Path) -> Path:
    """Detection and recovery time per failure type x strategy: mean with std error bars."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    types = sorted({r["failure_type"] for r in by})
    strategies = sorted({r["recovery_strategy"] for r in by})
    cell = {(r["failure_type"], r["recovery_strategy"]): r for r in by}
    width = 0.8 / max(len(strategies), 1)
    x = np.arange(len(types))
    for ax, metric, what in ((axes[0], "detection_ms", "detection time"), (axes[1], "recovery_ms", "recovery time")):
        for i, st in enumerate(strategies):
            means = [(cell.get((t, st)) or {}).get(f"{metric}_mean") for t in types]
            stds = [(cell.get((t, st)) or {}).get(f"{metric}_std") or 0.0 for t in types]
            h = [np.nan if m is None else m for m in means]
            ax.bar(x + (i - (len(strategies) - 1) / 2) * width, h, width, yerr=stds, capsize=3,
                   label=st, color=f"C{i}")
        ax.set_xticks(x, types, rotation=20, ha="right")
        ax.set_xlabel("failure type")
        ax.set_ylabel(f"{what} (ms, mean ± std)")
        ax.set_title(f"{what} per failure type and strategy")
        ax.grid(axis="y", alpha=0.3)
        if strategies:
            ax.legend(title="recovery strategy", fontsize=8)
        else:
            _empty(ax, "injected faults")
    fig.suptitle(f"{model}: fault detection and recovery (successful recoveries only on the right)")
    return save_figure(fig, path)


def timeline(tl: dict[str, Any], title: str, path: Path) -> Path:
    """Lanes per browser: launches, loads and shard runs as bars, faults/detections/recoveries as markers."""
    browsers = tl["browsers"]
    fig, ax = plt.subplots(figsize=(13, 1.2 + 0.9 * max(len(browsers), 1)))
    lane = {b: i for i, b in enumerate(browsers)}
    shards = sorted({s["shard"] for s in tl["spans"] if s["kind"] == "shard_run"})
    seen: set[str] = set()

    def lab(key: str) -> str | None:
        if key in seen:
            return None
        seen.add(key)
        return key
    for s in tl["spans"]:
        y = lane.get(s["browser"])
        if y is None:
            continue
        dur = s["end_ms"] - s["start_ms"]
        if s["kind"] == "shard_run":
            failed = s["status"] != "shard_completed"
            ax.broken_barh([(s["start_ms"], dur)], (y - 0.3, 0.6), facecolors=f"C{shards.index(s['shard']) % 10}",
                           edgecolor="red" if failed else "none", linewidth=1.5,
                           label=lab(f"shard {s['shard']} run"))
            if failed:
                ax.broken_barh([(s["start_ms"], dur)], (y - 0.3, 0.6), facecolors="none", edgecolor="red",
                               linewidth=1.5, label=lab("shard run failed / cut (red outline)"))
        elif s["kind"] == "shard_load":
            ax.broken_barh([(s["start_ms"], dur)], (y - 0.42, 0.12), facecolors="grey", label=lab("shard load"))
        else:
            ax.broken_barh([(s["start_ms"], dur)], (y + 0.3, 0.12), facecolors="lightsteelblue",
                           label=lab("browser launch"))
    for m in tl["marks"]:
        if m["kind"] not in MARK_STYLE or m["browser"] not in lane:
            continue
        marker, colour, name, dy = MARK_STYLE[m["kind"]]
        ax.scatter([m["t_ms"]], [lane[m["browser"]] + dy], marker=marker, color=colour, s=60,
                   zorder=6 if m["kind"] == "fault_injected" else 5, label=lab(name))
    ax.set_yticks(range(len(browsers)), browsers)
    ax.set_ylim(-0.7, len(browsers) - 0.2 + 0.6)
    ax.set_xlim(0, max(tl["end_ms"], 1.0) * 1.01)
    ax.set_xlabel("time since run start (ms)")
    ax.set_ylabel("browser")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        _empty(ax, "browser activity")
    return save_figure(fig, path)


def memory(series: dict[str, Any], ends: dict[str, float], end_ms: float, title: str, path: Path) -> Path:
    """Memory per browser over time (step plot; held until the browser exits, else the run's end)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (b, pts) in enumerate(sorted(series["per_browser"].items())):
        last = ends[b] if ends.get(b, -1.0) >= pts[-1][0] else max(end_ms, pts[-1][0])
        ts = [p[0] for p in pts] + [last]
        ms = [p[1] for p in pts] + [pts[-1][1]]
        ax.step(ts, ms, where="post", label=b, color=f"C{i}", marker="." if len(pts) < 40 else None)
    if series["per_browser"]:
        ax.legend(title="browser", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _empty(ax, "memory data")
    ax.set_title(f"{title}\n{series['basis']}", fontsize=10)
    ax.set_xlabel("time since run start (ms)")
    ax.set_ylabel("memory (MB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)

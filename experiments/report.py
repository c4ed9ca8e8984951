"""Validation report: PNG plots and an index.html with the side-by-side table.

Rules: figures come from the same SQL as the table (experiments.validate) over stored
events; matplotlib with the Agg backend (no display); files are overwritten in DIR:
latency_scatter.png (per-request sim vs real with y = x), latency_cdf.png (both CDFs),
recovery_timeline.png (per fault: injection -> detection -> recovery, real above sim),
index.html.
"""

from __future__ import annotations

import html
from pathlib import Path

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.plots import save_figure  # noqa: E402
from experiments.validate import Comparison, column_labels, paired_requests, table_rows  # noqa: E402
from shardtwin.errors import InputError  # noqa: E402

REAL, SIM = "#1f77b4", "#ff7f0e"


def _scatter(pairs: list[dict], path: Path) -> None:
    xs = [p["real_ms"] for p in pairs if p["real_outcome"] == "completed" == p["sim_outcome"]]
    ys = [p["sim_ms"] for p in pairs if p["real_outcome"] == "completed" == p["sim_outcome"]]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    if xs:
        ax.scatter(xs, ys, s=22, color=REAL, alpha=0.8, label="request")
        lo, hi = min(xs + ys) * 0.9, max(xs + ys) * 1.1
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        if hi / max(lo, 1e-9) > 20:      # heavy tails (requests caught in a recovery): log axes
            ax.set_xscale("log")
            ax.set_yscale("log")
    ax.set_xlabel("observed latency, real (ms)")
    ax.set_ylabel("predicted latency, sim (ms)")
    ax.set_title("Per-request latency: predicted vs observed")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    save_figure(fig, path)


def _cdf(pairs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for key, outcome, color, label in (("real_ms", "real_outcome", REAL, "real (measured)"),
                                       ("sim_ms", "sim_outcome", SIM, "sim (predicted)")):
        v = np.sort([p[key] for p in pairs if p[outcome] == "completed" and p[key] is not None])
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=color, lw=2, label=f"{label}, n={len(v)}")
    vals = [p[k] for p in pairs for k in ("real_ms", "sim_ms") if p[k]]
    if vals and max(vals) / max(min(vals), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("request latency (ms), REQUEST_SUBMITTED -> REQUEST_COMPLETED")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_title("Latency CDF")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def _timeline(c: Comparison, path: Path) -> None:
    n = max(len(c.faults), 1)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.8), dpi=110, squeeze=False)
    for ax, f in zip(axes[:, 0], c.faults or [None]):
        if f is None:
            ax.text(0.5, 0.5, "no faults in this scenario", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for y, (det, rec, color, label) in enumerate(((f.sim_detection_ms, f.sim_recovery_ms, SIM, "sim"),
                                                      (f.real_detection_ms, f.real_recovery_ms, REAL, "real"))):
            d = det or 0.0
            ax.barh(y, d, left=0, color=color, alpha=0.45, edgecolor=color, height=0.6)
            if rec is not None:
                ax.barh(y, rec, left=d, color=color, alpha=0.95, height=0.6)
                ax.text(d + rec, y, f"  detected {d:.0f} ms, recovered after {rec:.0f} ms more", va="center",
                        fontsize=8)
            else:
                ax.text(d, y, "  not recovered", va="center", fontsize=8)
        ax.set_yticks([0, 1], ["sim", "real"])
        ax.set_title(f"fault {f.ordinal}: {f.type} on {f.browser}  (light: detection, dark: recovery)", fontsize=9)
        ax.set_xlabel("ms since injection")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, max(((f.real_detection_ms or 0) + (f.real_recovery_ms or 0)),
                           ((f.sim_detection_ms or 0) + (f.sim_recovery_ms or 0)), 1.0) * 1.6)
    save_figure(fig, path)


def write_report(con: duckdb.DuckDBPyConnection, c: Comparison, directory: str | Path) -> Path:
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create report directory {d}: {exc.strerror}") from None
    pairs = paired_requests(con, c.real_run, c.sim_run)
    _scatter(pairs, d / "latency_scatter.png")
    _cdf(pairs, d / "latency_cdf.png")
    _timeline(c, d / "recovery_timeline.png")
    head = ("figure", *column_labels(c), "error", "verdict")
    rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in table_rows(c))
    t = c.tolerance
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>shardtwin validation</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd;
text-align:right}}td:first-child{{text-align:left}}.ok{{color:green}}.miss{{color:#b00}}img{{max-width:100%}}</style>
</head><body><h1>Validation: <span class="{'ok' if c.passed else 'miss'}">{'PASSED' if c.passed else 'FAILED'}</span></h1>
<p>Tolerance (stated before running): {html.escape(t.describe())}.</p>
<p>real run <code>{c.real_run}</code> vs sim run <code>{c.sim_run}</code> (same scenario hash).</p>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>
{rows}</table>
<h2>Per-request latency</h2><img src="latency_scatter.png" alt="scatter"><img src="latency_cdf.png" alt="cdf">
<h2>Faults</h2><img src="recovery_timeline.png" alt="recovery timelines">
</body></html>
"""
    (d / "index.html").write_text(doc)
    return d / "index.html"

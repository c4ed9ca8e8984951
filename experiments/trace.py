"""One run's timeline from its events (SQL), and its Chrome trace-event JSON (Perfetto, chrome://tracing).

Rules:
- Spans pair a start event with its end by SQL ASOF joins on seq: shard runs
  (SHARD_STARTED -> SHARD_COMPLETED/FAILED, same request, shard, browser, attempt), shard
  loads (SHARD_LOAD_STARTED -> SHARD_LOADED/LOAD_FAILED, same shard and browser), launches
  (BROWSER_LAUNCH_REQUESTED -> BROWSER_READY). An end that comes after the next start of the
  same key does not belong to this start: the span is cut at that next start (or at the
  browser's exit, or the end of the run) and marked `unfinished`.
- Trace: one process per run, a track (thread) per browser, 'requests' tracks; times are
  microseconds since run start. Slices on one track never partly overlap: a browser or
  the requests get as many tracks as overlapping spans need ("chromium-0 #2").
- Flows link the shard runs of one request in start order (s inside the earlier slice,
  f with bp=e at the start of the later one); every flow id has exactly one s and one f.
"""

from __future__ import annotations

from typing import Any

from events.store import query_rows

_PAIR = """
WITH s AS (SELECT seq, t_ms, {keys}, lead(seq) OVER (PARTITION BY {keys} ORDER BY seq) AS next_seq
           FROM events WHERE run_id = $run AND kind = '{start}'),
e AS (SELECT seq AS end_seq, t_ms AS end_ms, kind AS end_kind, value, detail, {keys}
      FROM events WHERE run_id = $run AND kind IN ({ends})),
x AS (SELECT seq AS exit_seq, t_ms AS exit_ms, browser FROM events
      WHERE run_id = $run AND kind IN ('browser_crashed', 'browser_closed')),
m AS (SELECT s.*, e.end_seq, e.end_ms, e.end_kind, e.value, e.detail
      FROM s ASOF LEFT JOIN e ON {join} AND e.end_seq >= s.seq)
SELECT m.*, x.exit_ms, (SELECT t_ms FROM events WHERE run_id = $run AND seq = m.next_seq) AS next_ms,
  (SELECT max(t_ms) FROM events WHERE run_id = $run) AS run_end_ms
FROM m ASOF LEFT JOIN x ON x.browser = m.browser AND x.exit_seq >= m.seq
ORDER BY m.seq
"""

SPAN_KINDS = {  # name: (start kind, end kinds, key columns)
    "shard_run": ("shard_started", ("shard_completed", "shard_failed"), ("request_id", "shard", "browser", "attempt")),
    "shard_load": ("shard_load_started", ("shard_loaded", "shard_load_failed"), ("shard", "browser")),
    "launch": ("browser_launch_requested", ("browser_ready",), ("browser",)),
}

MARK_KINDS = ("fault_injected", "failure_suspected", "failure_detected", "recovery_started", "recovery_completed",
              "recovery_failed", "browser_crashed", "connection_closed", "connection_restored", "shard_lost")


def _spans(con, run_id: str, name: str) -> list[dict[str, Any]]:
    start, ends, keys = SPAN_KINDS[name]
    sql = _PAIR.format(keys=", ".join(keys), start=start, ends=", ".join(f"'{k}'" for k in ends),
                       join=" AND ".join(f"e.{k} IS NOT DISTINCT FROM s.{k}" for k in keys))
    out = []
    for r in query_rows(con, sql, {"run": run_id}):
        ended = r["end_seq"] is not None and (r["next_seq"] is None or r["end_seq"] < r["next_seq"])
        if ended:
            end, status = r["end_ms"], r["end_kind"]
        else:
            cands = [t for t in (r["next_ms"], r["exit_ms"]) if t is not None]
            end, status = min(cands) if cands else r["run_end_ms"], "unfinished"
        out.append({"kind": name, "start_ms": r["t_ms"], "end_ms": max(end, r["t_ms"]), "status": status,
                    **{k: r[k] for k in keys}, "value": r["value"] if ended else None,
                    "detail": r["detail"] if ended else None, "seq": r["seq"]})
    return out


def run_timeline(con, run_id: str) -> dict[str, Any]:
    """Spans (shard runs, loads, launches), marks (faults, detections, recoveries...) and requests of a run."""
    spans = [s for name in SPAN_KINDS for s in _spans(con, run_id, name)]
    marks = query_rows(con, f"""SELECT seq, t_ms, kind, browser, shard, request_id, value, detail FROM events
        WHERE run_id = $run AND kind IN ({', '.join(f"'{k}'" for k in MARK_KINDS)})
          AND NOT (kind = 'recovery_started' AND json_extract_string(detail, '$.action') = 'detect')
        ORDER BY seq""", {"run": run_id})
    requests = query_rows(con, "SELECT request_id, submitted_ms, finished_ms, latency_ms, outcome, reason"
                               " FROM request_latency WHERE run_id = $run ORDER BY request_id", {"run": run_id})
    end = query_rows(con, "SELECT max(t_ms) AS t FROM events WHERE run_id = $run", {"run": run_id})[0]["t"] or 0.0
    browsers = sorted({s["browser"] for s in spans if s["browser"]} | {m["browser"] for m in marks if m["browser"]})
    return {"run_id": run_id, "end_ms": end, "browsers": browsers, "spans": spans, "marks": marks,
            "requests": requests}


# --- Chrome trace -------------------------------------------------------------

def _us(ms: float) -> int:
    """Whole microseconds: a slice's end is ts + dur exactly, so touching slices never overlap."""
    return round(ms * 1000.0)


class _Lanes:
    """Tracks of one kind: a span goes to the first track whose last slice ended by its start."""

    def __init__(self, base: str, first_tid: int) -> None:
        self.base, self.first_tid, self.ends = base, first_tid, []

    def place(self, start: float, end: float) -> int:
        for i, last in enumerate(self.ends):
            if last <= start:
                self.ends[i] = end
                return i
        self.ends.append(end)
        return len(self.ends) - 1

    def name(self, i: int) -> str:
        return self.base if i == 0 else f"{self.base} #{i + 1}"


def _span_name(s: dict[str, Any]) -> str:
    match s["kind"]:
        case "shard_run":
            return f"shard {s['shard']} (req {s['request_id']})"
        case "shard_load":
            return f"load shard {s['shard']}"
        case _:
            return "launch"


def chrome_trace(tl: dict[str, Any], title: str) -> dict[str, Any]:
    """The timeline as {"traceEvents": [...], "displayTimeUnit": "ms"} (see module rules)."""
    pid, events, tids = 1, [], {}
    lanes = {b: _Lanes(b, 0) for b in tl["browsers"]}
    lanes["requests"] = _Lanes("requests", 0)

    def tid_of(track: str, i: int) -> int:
        key = (track, i)
        if key not in tids:
            tids[key] = len(tids) + 1
        return tids[key]

    # requests first so that their tracks sort on top
    for r in tl["requests"]:
        start = r["submitted_ms"] if r["submitted_ms"] is not None else r["finished_ms"]
        end = r["finished_ms"] if r["finished_ms"] is not None else tl["end_ms"]
        if start is None:
            continue
        i = lanes["requests"].place(start, end)
        events.append({"ph": "X", "name": f"request {r['request_id']}", "cat": "request", "pid": pid,
                       "tid": tid_of("requests", i), "ts": _us(start), "dur": _us(end) - _us(start),
                       "args": {"outcome": r["outcome"] or "lost", "latency_ms": r["latency_ms"], "reason": r["reason"]}})
    runs: dict[int, list[dict[str, Any]]] = {}
    for s in sorted(tl["spans"], key=lambda s: (s["start_ms"], s["seq"])):
        if not s["browser"]:
            continue
        i = lanes[s["browser"]].place(s["start_ms"], s["end_ms"])
        ev = {"ph": "X", "name": _span_name(s), "cat": s["kind"], "pid": pid, "tid": tid_of(s["browser"], i),
              "ts": _us(s["start_ms"]), "dur": _us(s["end_ms"]) - _us(s["start_ms"]),
              "args": {k: s[k] for k in ("status", "value", "shard", "request_id", "attempt") if s.get(k) is not None}}
        events.append(ev)
        if s["kind"] == "shard_run":
            runs.setdefault(s["request_id"], []).append(ev)
    events += _flows(runs, pid)
    for m in tl["marks"]:
        track = m["browser"] if m["browser"] in lanes else "requests"
        events.append({"ph": "i", "s": "t", "name": m["kind"], "cat": "fault", "pid": pid,
                       "tid": tid_of(track, 0), "ts": _us(m["t_ms"]),
                       "args": {k: m[k] for k in ("shard", "request_id", "value", "detail") if m[k] is not None}})
    meta = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0, "args": {"name": title}}]
    for (track, i), tid in sorted(tids.items(), key=lambda kv: kv[1]):
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0,
                     "args": {"name": lanes[track].name(i)}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "ts": 0,
                     "args": {"sort_index": tid}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "otherData": {"run_id": tl["run_id"], "time_origin": "run start"}}


def _flows(runs: dict[int, list[dict[str, Any]]], pid: int) -> list[dict[str, Any]]:
    out, fid = [], 0
    for req, evs in sorted(runs.items()):
        for a, b in zip(evs, evs[1:]):
            fid += 1
            inside = a["ts"] + max(a["dur"] - 1, 0)  # within slice a, so the flow binds to it
            common = {"name": f"request {req}", "cat": "request_flow", "id": fid, "pid": pid}
            out.append({**common, "ph": "s", "tid": a["tid"], "ts": inside})
            out.append({**common, "ph": "f", "bp": "e", "tid": b["tid"], "ts": b["ts"]})
    return out

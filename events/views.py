"""SQL views over the `events` table: per-request latency and per-fault recovery.

Rules:
- Views are computed from events only (no counters kept elsewhere), so sim and real
  runs are measured by the same SQL.
- request_latency: one row per (run, request) seen submitted or finished. submitted_ms
  is the first REQUEST_SUBMITTED, finished_ms the first REQUEST_COMPLETED/FAILED;
  latency_ms = finished - submitted (the finishing event's value when no submission was
  logged). outcome is NULL for a request that never finished (a lost request).
- fault_recovery: one row per FAULT_INJECTED, matched by browser and order (any
  request id): its window runs until the next FAULT_INJECTED on the same browser.
  detected = the first FAILURE_DETECTED in the window; the outcome is the first
  RECOVERY_COMPLETED after detection (or after the injection when nothing was
  detected; success) or else the last RECOVERY_FAILED there (failure), else NULL (none).
  detection_ms = detected - injected; recovery_ms = recovered - detected (or - injected
  when nothing was detected); outage_ms = recovered - injected. Drivers must put the
  resolved browser id in the `browser` column of these four kinds. The same rule in
  Python, over one run's log, is events.metrics.fault_timeline (the result JSON's
  `faults`; it leaves out faults with no browser): tests/events/test_fault_timeline.py
  checks that both give the same rows.
"""

from __future__ import annotations

import duckdb

REQUEST_LATENCY = """
CREATE OR REPLACE VIEW request_latency AS
WITH sub AS (
  SELECT run_id, any_value(source) AS source, request_id, min(t_ms) AS submitted_ms
  FROM events WHERE kind = 'request_submitted' GROUP BY run_id, request_id
), fin AS (
  SELECT run_id, source, request_id, t_ms AS finished_ms, value,
         CASE kind WHEN 'request_completed' THEN 'completed' ELSE 'failed' END AS outcome,
         json_extract_string(detail, '$.reason') AS reason,
         row_number() OVER (PARTITION BY run_id, request_id ORDER BY seq) AS rn
  FROM events WHERE kind IN ('request_completed', 'request_failed')
)
SELECT coalesce(s.run_id, f.run_id) AS run_id, coalesce(s.source, f.source) AS source,
       coalesce(s.request_id, f.request_id) AS request_id, s.submitted_ms, f.finished_ms,
       coalesce(f.finished_ms - s.submitted_ms, f.value) AS latency_ms, f.outcome, f.reason
FROM sub s FULL OUTER JOIN (SELECT * FROM fin WHERE rn = 1) f
  ON s.run_id = f.run_id AND s.request_id = f.request_id
"""

FAULT_RECOVERY = """
CREATE OR REPLACE VIEW fault_recovery AS
WITH f AS (
  SELECT run_id, source, seq, t_ms AS injected_ms, browser,
         coalesce(json_extract_string(detail, '$.type'), json_extract_string(detail, '$.fault')) AS type,
         lead(seq) OVER (PARTITION BY run_id, browser ORDER BY seq) AS next_seq
  FROM events WHERE kind = 'fault_injected'
), win AS (
  SELECT f.*, (SELECT min(e.seq) FROM events e
               WHERE e.run_id = f.run_id AND e.kind = 'failure_detected'
                 AND e.browser IS NOT DISTINCT FROM f.browser
                 AND e.seq > f.seq AND (f.next_seq IS NULL OR e.seq < f.next_seq)) AS det_seq
  FROM f
), outcome AS (
  SELECT w.*,
    (SELECT min(e.seq) FROM events e
     WHERE e.run_id = w.run_id AND e.kind = 'recovery_completed' AND e.browser IS NOT DISTINCT FROM w.browser
       AND e.seq > coalesce(w.det_seq, w.seq) AND (w.next_seq IS NULL OR e.seq < w.next_seq)) AS ok_seq,
    (SELECT max(e.seq) FROM events e
     WHERE e.run_id = w.run_id AND e.kind = 'recovery_failed' AND e.browser IS NOT DISTINCT FROM w.browser
       AND e.seq > coalesce(w.det_seq, w.seq) AND (w.next_seq IS NULL OR e.seq < w.next_seq)) AS bad_seq
  FROM win w
)
SELECT o.run_id, o.source, o.seq AS fault_seq, o.type, o.browser, o.injected_ms,
       d.t_ms AS detected_ms, d.t_ms - o.injected_ms AS detection_ms,
       r.t_ms AS recovered_ms, r.t_ms - coalesce(d.t_ms, o.injected_ms) AS recovery_ms,
       r.t_ms - o.injected_ms AS outage_ms,
       json_extract_string(r.detail, '$.strategy') AS strategy,
       CASE WHEN r.kind IS NULL THEN NULL ELSE r.kind = 'recovery_completed' END AS success
FROM outcome o
LEFT JOIN events d ON d.run_id = o.run_id AND d.seq = o.det_seq
LEFT JOIN events r ON r.run_id = o.run_id AND r.seq = coalesce(o.ok_seq, o.bad_seq)
"""

VIEWS = {"request_latency": REQUEST_LATENCY, "fault_recovery": FAULT_RECOVERY}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for sql in VIEWS.values():
        con.execute(sql)

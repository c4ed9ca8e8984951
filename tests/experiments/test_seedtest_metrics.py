"""seedtest_metrics.throughput: the same figure as the run's throughput_rps (events.metrics)."""

from __future__ import annotations

import pytest

from events.metrics import latency_summary
from events.schema import Event, EventKind as K, EventLog
from experiments.seedtest_metrics import throughput
from shardtwin.vocab import Source


def _log() -> EventLog:
    # workload starts at 0; two requests complete by 1000 ms, a third fails at 3000 ms
    ev = [Event(K.WORKLOAD_STARTED, 0.0),
          *(Event(K.REQUEST_SUBMITTED, 0.0, request_id=q) for q in (1, 2, 3)),
          Event(K.REQUEST_COMPLETED, 500.0, request_id=1, value=500.0),
          Event(K.REQUEST_COMPLETED, 1000.0, request_id=2, value=1000.0),
          Event(K.REQUEST_FAILED, 3000.0, request_id=3, value=3000.0, detail='{"reason": "timeout"}')]
    return EventLog("run-t", Source.SIM, tuple(e._replace(seq=i) for i, e in enumerate(ev)))


def test_window_ends_at_the_last_finished_request_failed_ones_included():
    log = _log()
    tp = throughput(log, batch_size=4)
    # 2 completed over 3 s (not over the 1 s to the last completed request)
    assert tp["window_ms"] == 3000.0 and tp["completed_requests"] == 2 and tp["items"] == 8
    assert tp["requests_per_s"] == pytest.approx(2 / 3.0) and tp["items_per_s"] == pytest.approx(8 / 3.0)
    assert tp["requests_per_s"] == latency_summary(log)["throughput_rps"]


def test_no_finished_request_no_rate():
    log = EventLog("run-e", Source.SIM, (Event(K.WORKLOAD_STARTED, 0.0),))
    assert throughput(log, 1) == {"batch_size": 1, "completed_requests": 0, "items": 0, "window_ms": None,
                                  "requests_per_s": None, "items_per_s": None}

"""Failure detectors over heartbeat arrival times: fixed timeout and phi-accrual.

Rules: pure functions of (browser heartbeat history, settings). A detector answers
one question — at what time will this browser be suspected if no heartbeat arrives
first? — so the coordinator arms exactly one timer per browser and never polls.

phi-accrual (Hayashibara et al. 2004): phi(t) = -log10(P(gap > t - last)), the gap
modelled as normal(mean, std) of the recent window; suspect when phi >= threshold.
For phi values of a window of fewer than `MIN_SAMPLES` gaps, the heartbeat interval stands in
for the mean. The fixed detector timeout is always an upper bound on phi's suspicion time,
and it is the suspicion time of a page that has not beaten MIN_SAMPLES times since it became
ready or since its last shard load ended: its window says nothing about a page that is
starting or running a new session's first runs. Measured at the high level (phi 8, 250 ms heartbeats):
12 false suspicions in 24 real runs, every one within a second of ready (silence 601-926 ms,
0-2 gaps known) or right after a failover load (silence ~390 ms against a window of idle
gaps).
"""

from __future__ import annotations

import math
from statistics import NormalDist

from coordinator.settings import Settings

MIN_SAMPLES = 3
_STD = NormalDist()


def gap_stats(gaps: list[float], interval_ms: float) -> tuple[float, float]:
    if len(gaps) < MIN_SAMPLES:
        return interval_ms, interval_ms / 4.0
    n = len(gaps)
    mean = sum(gaps) / n
    var = sum((g - mean) ** 2 for g in gaps) / (n - 1)
    # Floor the std so a perfectly regular history does not make phi explode.
    return mean, max(math.sqrt(var), mean / 10.0, 1.0)


def phi(silence_ms: float, gaps: list[float], interval_ms: float) -> float:
    mean, std = gap_stats(gaps, interval_ms)
    p_later = 1.0 - _STD.cdf((silence_ms - mean) / std)
    return float("inf") if p_later <= 0 else -math.log10(p_later)


def suspicion_delay(gaps: list[float], s: Settings, settled_gaps: int | None = None) -> float:
    """Silence after the last heartbeat at which the browser becomes suspected. `settled_gaps`:
    the gaps known since the page became ready or its last load ended (None: all of `gaps`)."""
    if s.detector == "fixed" or (settled_gaps if settled_gaps is not None else len(gaps)) < MIN_SAMPLES:
        return s.detector_timeout_ms
    mean, std = gap_stats(gaps, s.heartbeat_interval_ms)
    p = 10.0 ** (-s.phi_threshold)
    z = _STD.inv_cdf(1.0 - p) if p > 1e-15 else 8.0
    return min(s.detector_timeout_ms, max(mean + z * std, s.heartbeat_interval_ms))

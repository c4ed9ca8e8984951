"""The simulated fault injector: each failure type with its real consequence.

Rules: a fault is logged (FaultInjected) at the moment it takes effect, aimed at the
browser the scenario names or the one holding the target shard's primary at that moment.
A fault with no live target is logged with `browser: null` and has no effect.
"""

from __future__ import annotations

from events import records as r
from events.schema import Event
from sim.world import Page, SimWorld


def inject(w: SimWorld, ev: Event) -> None:
    d = ev.details()
    kind = d.get("type")
    page = w.target(ev)
    params = r.fault_params(d)
    b = page.id if page is not None and page.alive else None
    w.observe(lambda now: r.FaultInjected(now, fault=str(kind), browser=b, shard=ev.shard, params=params))
    if b is None:
        return
    match kind:
        case "browser_crash":
            w._crash(page, "crash")
        case "disconnect":
            _disconnect(w, page, d.get("reconnect_delay_ms"))
        case "hang":
            _hang(w, page, d.get("duration_ms"))
        case "slow":
            _slow(w, page, float(d.get("factor") or 4.0), d.get("duration_ms"))
        case "memory_pressure":
            _pressure(w, page, str(d.get("level") or "medium"), d.get("duration_ms"))
        case "shard_error":
            page.errors.append(ev.shard)
        case _:
            pass  # cascade is compiled into browser_crash steps


def _clear(w: SimWorld, page: Page, kind: str, incarnation: int) -> None:
    if page.alive and page.incarnation == incarnation:
        w.observe(lambda now: r.FaultCleared(now, fault=kind, browser=page.id))


def _disconnect(w: SimWorld, page: Page, delay_ms: float | None) -> None:
    page.connected = False
    page.link_epoch += 1
    page.queue.clear()
    bp = w.p.browsers[page.kind]
    w.at(bp.close_notice_ms, lambda: w.pages.get(page.id) is page and w.observe(
        lambda now: r.ConnectionClosed(now, browser=page.id, incarnation=page.incarnation)))
    if delay_ms is None:
        return
    inc = page.incarnation

    def back() -> None:
        if page.alive and page.incarnation == inc and w.pages.get(page.id) is page:
            page.connected = True
            page.link_epoch += 1
            loaded = tuple(sorted(page.loaded))
            w.observe(lambda now: r.ConnectionRestored(now, browser=page.id, loaded=loaded))
    w.at(float(delay_ms) + w.p.link_latency_ms, back)


def _hang(w: SimWorld, page: Page, duration_ms: float | None) -> None:
    """The page's main thread spins (the real fault is a busy loop): no heartbeats, no progress,
    and one core of the host busy at the page's weight until it wakes or dies. A page in the middle
    of a shard run or a load finishes it and answers first (its main thread takes the hang message
    after the task in progress), as the real page does."""
    if page.job is not None or page.creating:
        inc = page.incarnation
        page.after_task.append(lambda: _hang(w, page, duration_ms) if page.alive and page.incarnation == inc else None)
        return
    page.hung = True
    if page.job is not None:
        w.host.pause(page.job, True)
    if page.spin is None:
        page.spin = w.host.start(float("inf"), 1.0, lambda: None, w.p.browsers[page.kind].cpu_weight)
    if duration_ms is None:
        return
    inc = page.incarnation

    def wake() -> None:
        if page.alive and page.incarnation == inc:
            page.hung = False
            if page.spin is not None:
                w.host.cancel(page.spin)
                page.spin = None
            if page.job is not None:
                w.host.pause(page.job, False)
            _clear(w, page, "hang", inc)
    w.at(float(duration_ms), wake)


def _slow(w: SimWorld, page: Page, factor: float, duration_ms: float | None) -> None:
    page.slow = factor
    if page.job is not None:
        w.host.scale(page.job, factor)
    if duration_ms is None:
        return
    inc = page.incarnation

    def restore() -> None:
        if page.alive and page.incarnation == inc:
            page.slow = 1.0
            _clear(w, page, "slow", inc)
    w.at(float(duration_ms), restore)


def _pressure(w: SimWorld, page: Page, level: str, duration_ms: float | None) -> None:
    page.pressure = level
    if w.memory_mb(page) > w.p.browsers[page.kind].memory_budget_mb:
        w._crash(page, "oom")
        return
    if page.job is not None:
        w.host.scale(page.job, w.p.pressure_slowdown[level])
    if duration_ms is None:
        return
    inc = page.incarnation

    def release() -> None:
        if page.alive and page.incarnation == inc:
            page.pressure = None
            _clear(w, page, "memory_pressure", inc)
    w.at(float(duration_ms), release)

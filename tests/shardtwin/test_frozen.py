import dataclasses
from dataclasses import dataclass

import pytest

from coordinator import commands as c
from events import records as r
from shardtwin.frozen import fast_init


def test_records_keep_their_constructor_contract():
    rec = r.ShardCompleted(5.0, request_id=3, shard=1, browser="chromium-0", attempt=2, compute_ms=7.5)
    assert (rec.t_ms, rec.request_id, rec.shard, rec.browser, rec.attempt, rec.compute_ms) == (5.0, 3, 1, "chromium-0", 2, 7.5)
    assert r.ShardCompleted(5.0, request_id=3, shard=1, browser="chromium-0", attempt=2, compute_ms=7.5) == rec
    assert r.HeartbeatReceived(1.0).browser == r.HeartbeatReceived(1.0, "").browser   # defaults kept
    assert dataclasses.replace(rec, t_ms=9.0).t_ms == 9.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.t_ms = 1.0       # type: ignore[misc]
    with pytest.raises(TypeError):
        r.HeartbeatReceived()   # type: ignore[call-arg]  # t_ms is required
    with pytest.raises(TypeError):
        r.HeartbeatReceived(1.0, nope=1)   # type: ignore[call-arg]
    assert c.RunShard.__init__.__qualname__ == "RunShard.__init__"


def test_fast_init_refuses_what_it_cannot_keep():
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True, slots=True)
    class WithFactory:
        a: list = dataclasses.field(default_factory=list)

    for cls in (Mutable, WithFactory):
        with pytest.raises(TypeError, match=cls.__name__):
            fast_init(cls)

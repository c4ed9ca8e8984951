"""Worker protocol: binary tensor frames and JSON control frames round-trip; malformed ones are refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from real.protocol import (HEADER, FrameKind, Heartbeat, Hello, Inject, LoadShard, ProtocolError,
                           ShardLoaded, TensorFrame, Welcome, decode_control, decode_tensors,
                           encode_control, encode_tensors)
from shardtwin.errors import RealRunError


def sample() -> TensorFrame:
    rng = np.random.default_rng(3)
    return TensorFrame(FrameKind.RESULT, 2**40 + 7, 3, 2, {
        "hidden": rng.standard_normal((2, 5, 7)).astype(np.float32),
        "ids": rng.integers(-(2**40), 2**40, size=(3,), dtype=np.int64),
        "mask": np.ones((1, 5), np.int32),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }, ms=12.25)


def test_tensor_frame_round_trip_is_exact():
    frame = sample()
    buf = encode_tensors(frame)
    assert len(buf) % 8 == 0
    back = decode_tensors(buf)
    assert (back.kind, back.req, back.shard, back.attempt, back.ms) == (frame.kind, frame.req, 3, 2, 12.25)
    assert list(back.tensors) == list(frame.tensors)
    for name, arr in frame.tensors.items():
        assert back.tensors[name].dtype == arr.dtype and back.tensors[name].shape == arr.shape
        np.testing.assert_array_equal(back.tensors[name], arr)


def test_non_contiguous_and_big_endian_inputs_are_normalized():
    a = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    back = decode_tensors(encode_tensors(TensorFrame(FrameKind.RUN, 1, 0, 0, {"a": a})))
    np.testing.assert_array_equal(back.tensors["a"], a.astype("<f4"))


@pytest.mark.parametrize("arr", [np.zeros(2, np.float64), np.zeros(2, np.uint8), np.zeros(2, bool)])
def test_unsendable_dtypes_are_refused(arr):
    with pytest.raises(ProtocolError, match="not sendable"):
        encode_tensors(TensorFrame(FrameKind.RUN, 1, 0, 0, {"x": arr}))


def _corrupt(buf: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(buf)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def malformed() -> dict[str, bytes]:
    good = encode_tensors(TensorFrame(FrameKind.RUN, 5, 1, 0, {"x": np.ones((2, 3), np.float32)}))
    d0 = HEADER.size  # first descriptor
    return {
        "empty": b"",
        "short header": good[:20],
        "bad magic": b"XXXX" + good[4:],
        "bad version": _corrupt(good, 4, "<B", 9),
        "bad kind": _corrupt(good, 5, "<B", 7),
        "count too big": _corrupt(good, 6, "<H", 1000),
        "count past end": _corrupt(good, 6, "<H", 2),
        "negative req": _corrupt(good, 8, "<q", -1),
        "negative shard": _corrupt(good, 16, "<i", -1),
        "nan ms": _corrupt(good, 24, "<d", float("nan")),
        "zero name": _corrupt(good, d0, "<H", 0),
        "bad dtype": _corrupt(good, d0 + 2, "<B", 9),
        "rank too big": _corrupt(good, d0 + 3, "<B", 200),
        "negative dim": _corrupt(good, d0 + 5, "<q", -2),
        "dim too big": _corrupt(good, d0 + 5, "<q", 1000),
        "truncated data": good[:-8],
        "trailing bytes": good + bytes(8),
    }


@pytest.mark.parametrize("case", list(malformed()))
def test_malformed_frames_raise_protocol_error(case):
    with pytest.raises(ProtocolError) as info:
        decode_tensors(malformed()[case])
    assert isinstance(info.value, RealRunError) and "\n" not in str(info.value)


def test_frame_over_the_size_limit_is_refused():
    buf = encode_tensors(TensorFrame(FrameKind.RUN, 1, 0, 0, {"x": np.ones(1024, np.float32)}))
    with pytest.raises(ProtocolError, match="exceeds limit"):
        decode_tensors(buf, max_bytes=1000)


def test_duplicate_tensor_names_are_refused():
    desc = struct.pack("<HBB", 1, 1, 1) + b"x" + struct.pack("<q", 2)  # float32 "x", shape (2,)
    head = HEADER.pack(b"STW1", 1, 1, 2, 1, 0, 0, 0.0) + desc + desc
    head += bytes((-len(head)) % 8)
    with pytest.raises(ProtocolError, match="duplicate"):
        decode_tensors(head + bytes(16))


@pytest.mark.parametrize("msg", [
    Hello("c0", "s", {"browser": "chromium"}), Welcome(250.0, 1.0),
    LoadShard(0, "/shards/a.onnx", "wasm", ["x"], []), Heartbeat(3, 10.5),
    Inject("hang", {"ms": 100}),
    ShardLoaded(1, 10.0, 2.0, 8.0, 100, "webgpu", "wasm", "no adapter", ["x"], ["y"], 2),
])
def test_control_round_trip(msg):
    assert decode_control(encode_control(msg), (type(msg),)) == msg


@pytest.mark.parametrize("text,match", [
    ("not json", "not JSON"),
    ('[1, 2]', "object"),
    ('{"type": "heartbeat", "seq": 1, "t": 0}', "v=1"),
    ('{"v": 1, "type": "eval", "code": "x"}', "unexpected control type"),
    ('{"v": 1, "type": "heartbeat", "seq": 1}', "missing field"),
    ('{"v": 1, "type": "heartbeat", "seq": "1", "t": 0}', "expected int"),
    ('{"v": 1, "type": "heartbeat", "seq": true, "t": 0}', "expected int"),
    ('{"v": 1, "type": "heartbeat", "seq": 1, "t": 0, "extra": 1}', "unknown fields"),
])
def test_malformed_control_frames_raise(text, match):
    with pytest.raises(ProtocolError, match=match):
        decode_control(text)


def test_server_only_types_are_refused_from_a_worker():
    with pytest.raises(ProtocolError, match="unexpected control type"):
        decode_control(encode_control(Inject("hang", {"ms": 1})))

"""The hand-rolled wire codec agrees with the protobuf library, message for message."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from kvferry.server.wire import FAST_PATH_BYTES, decode_push, encode_read_response
from kvferry.v1 import transfer_pb2 as pb

# Rows past the fast-path size (padded, so hypothesis draws few bytes), or small ones.
ROWS = st.tuples(st.booleans(), st.binary(max_size=100)).map(
    lambda t: (bytes(FAST_PATH_BYTES) if t[0] else b"") + t[1])


def as_tuple(m: object) -> tuple:
    return (m.transfer_id, m.total_tokens, bytes(m.metadata), m.start_token, bytes(m.rows))  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(tid=st.text(max_size=40), total=st.integers(0, 2**64 - 1), meta=st.binary(max_size=50),
       start=st.integers(0, 2**64 - 1), rows=ROWS,
       extra=st.sampled_from([b"", b"\x30\x05", b"\x3a\x02hi", b"\x41" + bytes(8), b"\x4d" + bytes(4),
                              b"\x12\x01x"]))
def test_decode_push_matches_protobuf(tid: str, total: int, meta: bytes, start: int, rows: bytes,
                                      extra: bytes) -> None:
    # ``extra``: unknown fields of every wire type, and a known field with the wrong wire type.
    raw = pb.PushRequest(transfer_id=tid, total_tokens=total, metadata=meta, start_token=start,
                         rows=rows).SerializeToString() + extra
    assert as_tuple(decode_push(raw)) == as_tuple(pb.PushRequest.FromString(raw))


@settings(max_examples=1000, deadline=None)
@given(prefix=st.binary(max_size=20), junk=st.binary(max_size=40), cut=st.integers(0, 30))
def test_decode_push_refuses_exactly_what_protobuf_refuses(prefix: bytes, junk: bytes, cut: int) -> None:
    body = pb.PushRequest(transfer_id="t", rows=bytes(FAST_PATH_BYTES)).SerializeToString()
    raw = prefix + body[: len(body) - cut] + junk
    try:
        expected = as_tuple(pb.PushRequest.FromString(raw))
    except DecodeError:
        expected = None
    try:
        got = as_tuple(decode_push(raw))
    except DecodeError:
        got = None
    assert got == expected


def test_bad_utf8_in_the_id_is_refused() -> None:
    raw = b"\x0a\x02\xff\xfe" + pb.PushRequest(rows=bytes(FAST_PATH_BYTES)).SerializeToString()
    try:
        decode_push(raw)
    except DecodeError as e:
        assert "UTF-8" in str(e)
    else:
        raise AssertionError("accepted bad UTF-8")


def test_rows_are_a_view_not_a_copy() -> None:
    raw = pb.PushRequest(transfer_id="t", rows=bytes(FAST_PATH_BYTES)).SerializeToString()
    m = decode_push(raw)
    assert isinstance(m.rows, memoryview) and m.rows.obj is raw


@given(start=st.integers(0, 2**64 - 1), parts=st.lists(st.binary(max_size=200), max_size=5))
def test_encode_read_response_parses_back(start: int, parts: list[bytes]) -> None:
    data = b"".join(parts)
    msg = pb.ReadResponse.FromString(encode_read_response(start, [memoryview(p) for p in parts], len(data)))
    assert (msg.start_token, msg.rows) == (start, data)

"""The hand-rolled wire codec agrees with the protobuf library, message for message. The decoder is
called directly, so every example exercises it whatever its size (``decode_push`` hands small
messages to protobuf)."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from kvferry.server.wire import FAST_PATH_BYTES, decode_push, decode_push_by_hand, encode_read_response
from kvferry.v1 import transfer_pb2 as pb

from support.budget import examples

# Small rows, or rows past the fast-path size (padded, so hypothesis draws few bytes).
ROWS = st.tuples(st.booleans(), st.binary(max_size=100)).map(
    lambda t: (bytes(FAST_PATH_BYTES) if t[0] else b"") + t[1])


def as_tuple(m: object) -> tuple:
    return (m.transfer_id, m.total_tokens, bytes(m.metadata), m.start_token, bytes(m.rows),  # type: ignore[attr-defined]
            m.incarnation)  # type: ignore[attr-defined]


def decoded(raw: bytes) -> tuple | None:
    """What protobuf makes of ``raw`` (None: refused), checked against the hand decoder."""
    try:
        expected = as_tuple(pb.PushRequest.FromString(raw))
    except DecodeError:
        expected = None
    try:
        got = as_tuple(decode_push_by_hand(raw))
    except DecodeError:
        got = None
    assert got == expected
    return got


@settings(max_examples=examples(200, 5000), deadline=None)
@given(tid=st.text(max_size=40), total=st.integers(0, 2**64 - 1), meta=st.binary(max_size=50),
       start=st.integers(0, 2**64 - 1), rows=ROWS, incarnation=st.integers(0, 2**64 - 1),
       extra=st.sampled_from([b"", b"\x30\x05", b"\x38\x05", b"\x3a\x02hi", b"\x41" + bytes(8), b"\x4d" + bytes(4),
                              b"\x12\x01x"]))
def test_decode_push_matches_protobuf(tid: str, total: int, meta: bytes, start: int, rows: bytes,
                                      incarnation: int, extra: bytes) -> None:
    # ``extra``: unknown fields of every wire type, a known field repeated (the last one wins),
    # and a known field with the wrong wire type.
    raw = pb.PushRequest(transfer_id=tid, total_tokens=total, metadata=meta, start_token=start,
                         rows=rows, incarnation=incarnation).SerializeToString() + extra
    assert decoded(raw) is not None


@settings(max_examples=examples(1000, 20000), deadline=None)
@given(prefix=st.binary(max_size=20), junk=st.binary(max_size=40), cut=st.integers(0, 30))
def test_decode_push_refuses_exactly_what_protobuf_refuses(prefix: bytes, junk: bytes, cut: int) -> None:
    body = pb.PushRequest(transfer_id="t", rows=bytes(64)).SerializeToString()
    decoded(prefix + body[: len(body) - cut] + junk)


def test_decode_push_takes_the_hand_decoder_from_the_threshold() -> None:
    small = pb.PushRequest(transfer_id="t", rows=bytes(64)).SerializeToString()
    large = pb.PushRequest(transfer_id="t", rows=bytes(FAST_PATH_BYTES)).SerializeToString()
    assert isinstance(decode_push(small), pb.PushRequest)
    assert not isinstance(decode_push(large), pb.PushRequest)
    assert as_tuple(decode_push(large)) == as_tuple(pb.PushRequest.FromString(large))


def test_bad_utf8_in_the_id_is_refused() -> None:
    raw = b"\x0a\x02\xff\xfe" + pb.PushRequest(rows=bytes(64)).SerializeToString()
    try:
        decode_push_by_hand(raw)
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

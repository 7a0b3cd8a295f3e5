"""The frames of kvferry's same-host calls (``kvferry.client.local_calls`` and
``kvferry.server.local_calls``): the contract's own RPCs, carried over a Unix socket instead of
HTTP/2, with gRPC's meaning (a call, its metadata, its messages, its status and trailers).

Each frame is a header ``<length u32, call u32, kind u8>`` then ``length`` bytes. A client
numbers its calls; many run at once on one connection.

- ``CALL`` (client): the method's full name, the call's metadata, the serialized request.
- ``CANCEL`` (client): the call is cancelled (its handler is, as gRPC's would be).
- ``MESSAGE`` (server): one serialized response.
- ``END`` (server): the call's status code, details and trailing metadata; the call is over.

Metadata travels as ``count u16`` then per entry ``key (u16 length) value (u32 length)``; a key
ending in ``-bin`` has a bytes value, any other a UTF-8 one, as in gRPC.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

HEADER = struct.Struct("<IIB")
CALL, CANCEL, MESSAGE, END = 1, 2, 3, 4
# Larger than any message a kvferry server sends or takes (a Read chunk is 4 MiB, a status
# under that): a frame claiming more is garbage, and the connection is dropped.
MAX_FRAME = 64 * 1024 * 1024

Metadata = Sequence[tuple[str, str | bytes]]


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(call: int, kind: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return HEADER.pack(len(body), call, kind) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(call, kind, payload); IncompleteReadError at the end of the stream."""
    length, call, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME or kind not in (CALL, CANCEL, MESSAGE, END):
        raise FrameError(f"not a kvferry frame (kind {kind}, {length} bytes)")
    return call, kind, await reader.readexactly(length) if length else b""


def _text(data: str) -> bytes:
    raw = data.encode()
    return struct.pack("<H", len(raw)) + raw


def encode_metadata(metadata: Metadata) -> bytes:
    out = [struct.pack("<H", len(metadata))]
    for key, value in metadata:
        raw = value if isinstance(value, bytes) else value.encode()
        out += [_text(key), struct.pack("<I", len(raw)), raw]
    return b"".join(out)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise FrameError("a frame ends mid-field")
        out = bytes(self.data[self.at:self.at + n])
        self.at += n
        return out

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def text(self) -> str:
        try:
            return self.take(self.u16()).decode()
        except UnicodeDecodeError as e:
            raise FrameError(f"a name is not UTF-8: {e}") from None

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        out: list[tuple[str, str | bytes]] = []
        for _ in range(self.u16()):
            key = self.text()
            raw = self.take(self.u32())
            try:
                out.append((key, raw if key.endswith("-bin") else raw.decode()))
            except UnicodeDecodeError as e:
                raise FrameError(f"metadata {key!r} is not UTF-8: {e}") from None
        return tuple(out)

    def rest(self) -> bytes:
        out = bytes(self.data[self.at:])
        self.at = len(self.data)
        return out


def encode_call(method: str, metadata: Metadata, request: bytes) -> bytes:
    return _text(method) + encode_metadata(metadata) + request


def decode_call(payload: bytes) -> tuple[str, tuple[tuple[str, str | bytes], ...], bytes]:
    c = _Cursor(payload)
    return c.text(), c.metadata(), c.rest()


def encode_end(code: int, details: str, trailers: Metadata) -> bytes:
    raw = details.encode()
    return struct.pack("<HI", code, len(raw)) + raw + encode_metadata(trailers)


def decode_end(payload: bytes) -> tuple[int, str, tuple[tuple[str, str | bytes], ...]]:
    c = _Cursor(payload)
    code = c.u16()
    details = c.take(c.u32()).decode(errors="replace")
    return code, details, c.metadata()

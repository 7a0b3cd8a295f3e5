"""Where the hand-rolled Push decoder starts to beat protobuf's (which copies ``rows``): the
measurement behind ``kvferry.server.wire.FAST_PATH_BYTES``."""

from __future__ import annotations

import functools
import timeit

from bench.report import Figure
from kvferry.server.wire import FAST_PATH_BYTES, decode_push_by_hand
from kvferry.v1 import transfer_pb2 as pb


def decode_crossover(sizes_kib: tuple[int, ...], number: int) -> list[Figure]:
    figures = []
    for kib in sizes_kib:
        raw = pb.PushRequest(transfer_id="req-1", start_token=123, rows=bytes(kib * 1024)).SerializeToString()
        ours = min(timeit.repeat(functools.partial(decode_push_by_hand, raw), number=number, repeat=5)) / number
        base = min(timeit.repeat(functools.partial(pb.PushRequest.FromString, raw), number=number,
                                 repeat=5)) / number
        on_path = kib * 1024 >= FAST_PATH_BYTES
        figures.append(Figure(
            f"Push decode of a {kib} KiB message, by hand vs protobuf", "us", ours * 1e6, base * 1e6,
            "faster where used" if on_path else "report (protobuf used)",
            ours <= base if on_path else True,
            f"{'hand decoder' if on_path else 'protobuf'} is used at this size "
            f"(FAST_PATH_BYTES = {FAST_PATH_BYTES // 1024} KiB)"))
    return figures

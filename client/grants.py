"""Where tokens sit in a pool, for clients that touch it themselves (one-sided writers, mapped
readers). Rows are addressed as the pool flattened to [num_blocks * block_tokens, row_bytes]:
token k of a window lives at flat row ``blocks[r // block_tokens] * block_tokens + r %
block_tokens`` with r = k - window_start_token. Runs of consecutive rows are merged, so a window
over adjacent blocks (the allocator's common case) is one copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from kvferry.v1 import transfer_pb2 as pb


class Run(NamedTuple):
    """``tokens`` consecutive tokens from ``token`` sit at flat pool rows ``row ...``."""

    row: int
    token: int
    tokens: int


def runs(blocks: Sequence[int], block_tokens: int, window_start: int, start: int, end: int) -> list[Run]:
    out: list[Run] = []
    token = start
    while token < end:
        r = token - window_start
        row = blocks[r // block_tokens] * block_tokens + r % block_tokens
        n = min(block_tokens - r % block_tokens, end - token)
        if out and out[-1].row + out[-1].tokens == row:
            last = out[-1]
            out[-1] = Run(last.row, last.token, last.tokens + n)
        else:
            out.append(Run(row, token, n))
        token += n
    return out


def grant_runs(grant: pb.Grant, end: int | None = None) -> list[Run]:
    """The granted tokens (up to ``end``, if the caller has fewer)."""
    stop = grant.start_token + grant.tokens if end is None else min(end, grant.start_token + grant.tokens)
    return runs(grant.block_indices, grant.block_tokens, grant.window_start_token, grant.start_token, stop)


def window_runs(status: pb.TransferStatus, block_tokens: int) -> list[Run]:
    """The filled rows of the current window."""
    return runs(status.block_indices, block_tokens, status.window_start_token,
                status.window_start_token, status.window_start_token + status.window_filled_tokens)

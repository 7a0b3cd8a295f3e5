"""The serialized TransferStatus of each transfer, memoized per change: Polls and Watches of an
unchanged transfer cost a lookup. Kept by the shell, keyed by the core's ``Transfer.version``;
an entry goes when its transfer is released."""

from __future__ import annotations

from typing import cast

from kvferry.statemachine import State, Transfer
from kvferry.v1 import transfer_pb2 as pb


def wire_state(s: State) -> pb.TransferState:
    return cast(pb.TransferState, s.value)  # the core's State values are the wire enum's


def status_of(t: Transfer) -> pb.TransferStatus:
    return pb.TransferStatus(
        transfer_id=t.transfer_id, state=wire_state(t.state), total_tokens=t.total_tokens,
        sent_tokens=t.sent_tokens, window_start_token=t.window_start_token,
        window_tokens=t.window_tokens, window_filled_tokens=t.window_filled_tokens,
        block_indices=t.blocks, resume_count=t.resume_count, failure_reason=t.failure_reason,
        metadata=t.metadata, last_resume_sent_tokens=t.last_resume_sent_tokens,
        waiting_for_blocks=t.waiting_for_blocks, window_epoch=t.window_epoch,
        incarnation=t.incarnation, readers=t.readers, readers_resumed=len(t.resumed_by),
    )


class StatusCache:
    def __init__(self) -> None:
        self._memo: dict[Transfer, tuple[int, bytes]] = {}

    def bytes_of(self, t: Transfer) -> bytes:
        memo = self._memo.get(t)
        if memo is not None and memo[0] == t.version:
            return memo[1]
        data = status_of(t).SerializeToString()
        if not t.released:  # a released transfer is never asked again: keep nothing for it
            self._memo[t] = (t.version, data)
        return data

    def forget(self, t: Transfer) -> None:
        self._memo.pop(t, None)

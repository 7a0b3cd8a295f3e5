"""Scenario drivers shared by tests: the seed transfer with a pluggable receiver guard."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

import grpc
import numpy as np

from kvferry.client import AsyncClient
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

from support.kvserver import ServerProcess

TOTAL = 200  # 64 + 64 + 64 + 8: four windows, three resumes
WINDOW = 64  # 8 blocks of 8 tokens
RANKS = 3


def rows(n: int, row_bytes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, row_bytes), dtype=np.uint8)


async def read_window(stub: pb_grpc.TransferServiceStub, tid: str) -> bytes:
    return b"".join([m.rows async for m in stub.Read(pb.ReadRequest(transfer_id=tid))])


async def receive_with_guard(stub: pb_grpc.TransferServiceStub, tid: str,
                             guard_key: Callable[[pb.TransferStatus], Hashable],
                             max_polls: int) -> tuple[bytes, list[list[int]], list[bool], str]:
    """The receiver loop of the original note, with its "did I already resume?" guard keyed on
    ``guard_key``. Returns (bytes read, block indices of each window read, duplicate flags of all
    resume answers, final state name); gives up after ``max_polls`` polls."""
    data: list[bytes] = []
    windows: list[list[int]] = []
    dup_flags: list[bool] = []
    last_key: Hashable = None
    for _ in range(max_polls):
        st = await stub.Poll(pb.PollRequest(transfer_id=tid))
        if st.state == pb.TRANSFER_STATE_SUCCESS:
            data.append(await read_window(stub, tid))
            windows.append(list(st.block_indices))
            return b"".join(data), windows, dup_flags, "TRANSFER_STATE_SUCCESS"
        full = st.window_tokens and st.window_filled_tokens == st.window_tokens
        if not full or guard_key(st) == last_key:
            await asyncio.sleep(0.005)  # "resume already triggered, waiting for it to complete"
            continue
        data.append(await read_window(stub, tid))
        windows.append(list(st.block_indices))
        # Every tensor-parallel rank sends the same resume, concurrently.
        replies = await asyncio.gather(*[
            stub.Resume(pb.ResumeRequest(transfer_id=tid, sent_tokens=st.sent_tokens))
            for _ in range(RANKS)])
        dup_flags += [r.duplicate for r in replies]
        # What the note's receiver remembered: the status right after its resume was applied
        # (sent_tokens at the resume; block indices of the freshly allocated window).
        applied = [r for r in replies if not r.duplicate]
        assert len(applied) == 1
        last_key = guard_key(applied[0].status)
    st = await stub.Poll(pb.PollRequest(transfer_id=tid))
    return b"".join(data), windows, dup_flags, pb.TransferState.Name(st.state)


async def run_scenario(srv: ServerProcess, tid: str, guard_key: Callable[[pb.TransferStatus], Hashable],
                       max_polls: int) -> tuple[bytes, bytes, list[list[int]], list[bool], str, pb.TransferStatus]:
    payload = rows(TOTAL, srv.flags["row_bytes"]).tobytes()
    async with grpc.aio.insecure_channel(srv.target) as ch, AsyncClient(srv.target) as sender:
        stub = pb_grpc.TransferServiceStub(ch)
        opened = await stub.Open(pb.OpenRequest(transfer_id=tid, window_tokens=WINDOW))
        assert opened.status.state == pb.TRANSFER_STATE_BOOTSTRAPPING
        send = asyncio.create_task(sender.send(tid, payload, metadata=b"seed"))
        got, windows, dups, state = await receive_with_guard(stub, tid, guard_key, max_polls)
        final = await stub.Poll(pb.PollRequest(transfer_id=tid))
        if state != "TRANSFER_STATE_SUCCESS":
            await stub.Abort(pb.AbortRequest(transfer_id=tid, reason="test gave up"))
        try:
            await send
        except Exception:
            pass
        await stub.Release(pb.ReleaseRequest(transfer_id=tid))
    return payload, got, windows, dups, state, final

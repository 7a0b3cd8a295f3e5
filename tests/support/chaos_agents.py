"""Client processes for the chaos test: a slow sender, a receiver, and a rank that repeats resumes.

    python chaos_agents.py sender ID SEED TOTAL
    python chaos_agents.py receiver ID WINDOW OUT.json
    python chaos_agents.py echo-ranks SECONDS ID [ID ...]

Each one imports everything, prints one JSON line ``{"ready": seconds it took}`` and then waits for
the server's target on stdin: the test starts the clock of every timeout only once all agents
are past their (slow, CPU-bound) start-up.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import asyncio
import hashlib
import json
import random
import sys

import grpc
import numpy as np

from kvferry.client import AsyncClient, KvferryError, TransferFailed
from kvferry.v1 import transfer_pb2 as pb

ROW = 64


def payload(seed: int, total: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (total, ROW), dtype=np.uint8)


async def sender(target: str, tid: str, seed: int, total: int) -> None:
    data = payload(seed, total)

    async def messages():  # type: ignore[no-untyped-def]
        for start in range(0, total, 10):  # small, slow messages: a kill lands mid-stream
            yield pb.PushRequest(transfer_id=tid, total_tokens=total, start_token=start,
                                 rows=data[start:start + 10].tobytes())
            await asyncio.sleep(0.03)

    async with AsyncClient(target) as c:
        await c.stub.Push(messages())


async def receiver(target: str, tid: str, window: int, out: str) -> None:
    digest, windows = hashlib.sha256(), 0
    result: dict[str, object]
    async with AsyncClient(target) as c:
        try:
            async for w in c.receive(tid, window, release=False):
                digest.update(w.data)
                windows += 1
            result = {"sha256": digest.hexdigest(), "windows": windows}
        except TransferFailed as e:
            result = {"failed": e.reason}
    with open(out, "w") as f:
        json.dump(result, f)


async def echo_ranks(target: str, seconds: float, tids: list[str]) -> None:
    """Other tensor-parallel ranks: once a resume was applied, send it again, late, and now and
    then an older one. Every answer must be a duplicate."""
    rng = random.Random(0)
    sent = dups = 0
    async with AsyncClient(target) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for tid in tids:
                try:
                    st = await c.poll(tid)
                except KvferryError:  # not opened yet, or released
                    continue
                if st.last_resume_sent_tokens < 0:
                    continue
                await asyncio.sleep(rng.uniform(0, 0.03))
                again = st.last_resume_sent_tokens - rng.choice([0, 0, 0, 32])
                try:
                    r = await c.stub.Resume(pb.ResumeRequest(transfer_id=tid, sent_tokens=max(0, again)))
                except grpc.aio.AioRpcError:
                    continue
                sent += 1
                if not r.duplicate:
                    raise SystemExit(f"a repeated resume of {tid} at {again} was applied")
                dups += 1
            await asyncio.sleep(0.01)
    print(json.dumps({"resumes_sent": sent, "duplicates": dups}))


def wait_for_target() -> str:
    print(json.dumps({"ready": time.monotonic() - STARTED}), flush=True)
    return sys.stdin.readline().strip()


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    target = wait_for_target()
    if role == "sender":
        asyncio.run(sender(target, rest[0], int(rest[1]), int(rest[2])))
    elif role == "receiver":
        asyncio.run(receiver(target, rest[0], int(rest[1]), rest[2]))
    else:
        asyncio.run(echo_ranks(target, float(rest[0]), rest[1:]))

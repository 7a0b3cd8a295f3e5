"""One process opens a transfer, another takes it in: open(), watch() and
receive(open=False, incarnation=...), as the vLLM connector's scheduler and worker use them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kvferry.client import AsyncClient, TransferFailed
from kvferry.client.errors import KvferryError
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess


def rows(total: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (total, 64), dtype=np.uint8)


def test_opened_here_received_there(seed: ServerProcess) -> None:
    data = rows(150, seed=1)  # three 64-token windows

    async def main() -> tuple[bytes, list[int]]:
        async with AsyncClient(seed.target) as opener, AsyncClient(seed.target) as reader, \
                AsyncClient(seed.target) as tx:
            st = await opener.open("split", 64)
            assert st.state == pb.TRANSFER_STATE_BOOTSTRAPPING and st.incarnation
            send = asyncio.create_task(tx.send("split", data))
            states = []
            async for now in opener.watch("split", incarnation=st.incarnation):
                states.append(now.state)
                if now.window_filled_tokens == now.window_tokens and now.total_tokens:
                    break
            got = [bytes(w.data) async for w in reader.receive("split", 64, open=False,
                                                                  incarnation=st.incarnation)]
            await send
            return b"".join(got), states

    got, states = asyncio.run(main())
    assert got == data.tobytes()
    assert states[0] == pb.TRANSFER_STATE_BOOTSTRAPPING and pb.TRANSFER_STATE_TRANSFERRING in states


def test_a_receiver_that_names_the_opening_aborts_it_when_it_stops(seed: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(seed.target) as opener, AsyncClient(seed.target) as reader, \
                AsyncClient(seed.target) as tx:
            st = await opener.open("quit", 64)
            send = asyncio.create_task(tx.send("quit", rows(150, seed=2)))
            windows = reader.receive("quit", 64, open=False, incarnation=st.incarnation)
            async for _ in windows:
                break  # the reader gives up after one window
            await windows.aclose()
            with pytest.raises(TransferFailed, match="receiver stopped"):
                await send

    asyncio.run(main())


def test_an_old_opening_is_not_taken_in(seed: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(seed.target) as c:
            old = await c.open("again", 64)
            await c.abort("again", "test", incarnation=old.incarnation)
            await c.release("again", incarnation=old.incarnation)
            new = await c.open("again", 64)
            with pytest.raises(KvferryError) as e:
                async for _ in c.watch("again", incarnation=old.incarnation):
                    pass
            assert e.value.error_reason == "STALE_INCARNATION"
            await c.abort("again", "test", incarnation=new.incarnation)
            await c.release("again", incarnation=new.incarnation)

    asyncio.run(main())

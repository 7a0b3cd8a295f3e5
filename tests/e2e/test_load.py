"""1,000 transfers held and moving at once through one server on this small machine: no loss, no
leak."""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np

from kvferry.client import AsyncClient
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import start_server

N, TOTAL, WINDOW, ROW, CHANNELS = 1000, 48, 16, 64, 8


def test_a_thousand_concurrent_transfers() -> None:
    srv = start_server(num_blocks=2048, block_tokens=8, default_window_tokens=WINDOW,
                       stall_timeout=120, lease_timeout=120, bootstrap_timeout=120)
    try:
        data = np.random.default_rng(9).integers(0, 256, (N, TOTAL, ROW), dtype=np.uint8)

        async def main() -> tuple[int, int, float]:
            rx = [AsyncClient(srv.target) for _ in range(CHANNELS)]
            tx = [AsyncClient(srv.target) for _ in range(CHANNELS)]
            try:
                ids = [f"load-{i}" for i in range(N)]
                await asyncio.gather(*[rx[i % CHANNELS].stub.Open(
                    pb.OpenRequest(transfer_id=t, window_tokens=WINDOW)) for i, t in enumerate(ids)])
                held = (await rx[0].pool_info(refresh=True)).transfers

                async def receive(i: int) -> bytes:
                    return b"".join([w.data async for w in
                                     rx[i % CHANNELS].receive(ids[i], WINDOW, open=False)])

                start = time.perf_counter()
                results = await asyncio.gather(
                    *[receive(i) for i in range(N)],
                    *[tx[i % CHANNELS].send(ids[i], data[i]) for i in range(N)])
                elapsed = time.perf_counter() - start
                got = results[:N]
                ok = sum(hashlib.sha256(g).digest() == hashlib.sha256(data[i].tobytes()).digest()
                         for i, g in enumerate(got))
                return held, ok, elapsed
            finally:
                for c in rx + tx:
                    await c.close()

        held, ok, elapsed = asyncio.run(main())
        assert held == N  # all open at once before any sender started
        assert ok == N  # every byte of every transfer arrived, in order
        print(f"load: {N} concurrent transfers x {TOTAL // WINDOW} windows in {elapsed:.1f}s")
        srv.assert_pool_free(timeout=30)
        assert srv.metric("kvferry_transfers_finished_total", 'outcome="success"') == N
    finally:
        assert srv.stop() == 0

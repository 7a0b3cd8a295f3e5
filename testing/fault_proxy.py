"""A TCP proxy a test controls (kvferry's own, and yours), for the faults a process kill does not
show (``tc netem`` does not exist in this kernel): placed between a client and a server on
loopback (or between network namespaces), it forwards bytes both ways until told otherwise.

- ``partition(direction)``: bytes stop crossing, one way ("up": client to server, "down") or both,
  and nothing says so: no RST, no FIN. The proxy stops reading, so the kernel's buffers fill as a
  partitioned link's retransmissions would; ``heal()`` lets them flow on, as TCP would after a
  partition shorter than its own give-up time.
- ``delay(seconds)``: each chunk is forwarded that long after it arrived, chunks in flight
  overlapping (a link with that latency, per way).
- ``reset()``: every connection is closed with an RST.
- ``half_close(direction)``: the proxy sends FIN one way and forwards nothing more that way.

It runs its own event loop on a thread (``kvferry.client.loop_thread``), so a test drives it from
plain code while clients of any kind talk through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from kvferry.client.loop_thread import LoopThread

WAYS = ("up", "down")


@dataclass
class _Way:
    open: asyncio.Event = field(default_factory=asyncio.Event)
    delay: float = 0.0
    shut: bool = False


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1",
                 host: str = "127.0.0.1") -> None:
        self._thread = LoopThread("fault-proxy")
        self._upstream = (upstream_host, upstream_port)
        self._conns: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

        async def start() -> asyncio.Server:
            self._ways = {w: _Way() for w in WAYS}
            for w in self._ways.values():
                w.open.set()
            return await asyncio.start_server(self._accept, host, 0)

        self._server = self._thread.run(start())
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        self.connections = 0  # accepted so far
        self.ended = 0  # of those, closed by either side

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def partition(self, direction: str = "both") -> None:
        self._set(direction, lambda w: w.open.clear())

    def heal(self) -> None:
        def mend(w: _Way) -> None:
            w.open.set()
            w.delay = 0.0

        self._set("both", mend)

    def delay(self, seconds: float, direction: str = "both") -> None:
        self._set(direction, lambda w: setattr(w, "delay", seconds))

    def half_close(self, direction: str) -> None:
        self._set(direction, lambda w: setattr(w, "shut", True))

    def reset(self) -> None:
        async def rst() -> None:
            for pair in self._conns:
                for writer in pair:
                    sock = writer.get_extra_info("socket")
                    with contextlib.suppress(OSError):  # linger 0: closing sends RST, not FIN
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
            self._conns.clear()

        self._thread.run(rst())

    def close(self) -> None:
        self.reset()

        async def stop() -> None:
            self._server.close()

        self._thread.run(stop())
        self._thread.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set(self, direction: str, change: Callable[[_Way], object]) -> None:
        ways = WAYS if direction == "both" else (direction,)
        if not set(ways) <= set(WAYS):
            raise ValueError(f"direction {direction!r}: up, down or both")

        async def apply() -> None:
            for w in ways:
                change(self._ways[w])

        self._thread.run(apply())

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_w.transport.abort()
            return
        self._conns.append((client_w, server_w))
        try:
            await asyncio.gather(self._pump(client_r, server_w, self._ways["up"]),
                                 self._pump(server_r, client_w, self._ways["down"]),
                                 return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy closes
        for w in (client_w, server_w):
            w.transport.abort()
        self.ended += 1

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: _Way) -> None:
        """Read one way and forward each chunk once ``way.delay`` has passed since it was read:
        chunks in flight overlap, as on a link with that latency (not one after another)."""
        loop = asyncio.get_running_loop()
        flight: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await flight.get()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await way.open.wait()  # read just before a partition: held until it heals
                dst.write(data)
                await dst.drain()

        sending = asyncio.ensure_future(forward())
        try:
            while True:
                await way.open.wait()  # partitioned: read nothing, so the sender's buffers fill
                data = await src.read(65536)
                if way.shut:
                    data = b""
                flight.put_nowait((loop.time() + way.delay, data))
                if not data:
                    break
            await sending
        finally:
            sending.cancel()

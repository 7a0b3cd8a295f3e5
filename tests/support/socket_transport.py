"""A transport kvferry does not ship, defined here alone, as a third party would write one:
"socket". Its server half listens on a Unix socket and copies what arrives into the pool's memory
(``storage.region()``); its client half sends a grant's rows down that socket and waits for the
acknowledgement, so they have landed when ``write`` returns. Grants, commits and every check stay
the server's core's: this moves bytes, nothing more.

Server: ``kvferry serve --transport-plugins support.socket_transport:server_half`` (with this
folder on PYTHONPATH). Client: ``TRANSPORTS.replaced(SocketTransport())``, or ``register``.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import tempfile
import threading
from typing import Any

import numpy as np

from kvferry.client.grants import grant_runs
from kvferry.client.rows import as_row_bytes
from kvferry.client.transports import offered
from kvferry.v1 import transfer_pb2 as pb

NAME = "socket"
_RUN = struct.Struct("<QQ")  # first flat pool row, byte count


class SocketServerHalf:
    name = NAME

    def __init__(self, base: int, nbytes: int, row_bytes: int) -> None:
        self.base, self.nbytes, self.row_bytes = base, nbytes, row_bytes
        self.path = os.path.join(tempfile.mkdtemp(prefix="kvferry-socket-"), "pool.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen()
        self.bytes_written = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def describe(self, info: pb.PoolInfo) -> None:
        info.transport_params[NAME].values["path"] = self.path

    def close(self) -> None:
        self.listener.close()
        os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = _recv(conn, _RUN.size)
                if head is None:
                    return
                row, size = _RUN.unpack(head)
                offset = row * self.row_bytes
                data = _recv(conn, size)
                if data is None or offset + size > self.nbytes:
                    return  # a writer outside the pool is cut off
                ctypes.memmove(self.base + offset, data, size)
                self.bytes_written += size
                conn.sendall(b"k")


def server_half(config: Any, storage: Any) -> SocketServerHalf:
    base, nbytes = storage.region()
    return SocketServerHalf(base, nbytes, config.row_bytes)


class SocketLink:
    def __init__(self, path: str, row_bytes: int) -> None:
        self.row_bytes = row_bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)

    def write(self, grant: pb.Grant, rows: np.ndarray, first_token: int, end: int) -> None:
        runs = grant_runs(grant, end)
        for r in runs:
            src = rows[r.token - first_token:r.token - first_token + r.tokens]
            self.sock.sendall(_RUN.pack(r.row, src.nbytes) + src.tobytes())
        for _ in runs:  # one acknowledgement per run: every byte has landed
            if _recv(self.sock, 1) != b"k":
                raise ConnectionError("the socket transport's server half hung up")

    def finish(self, rows: Any) -> None:
        """The connection stays for the next send."""


class SocketTransport:
    name = NAME
    one_sided = True
    maps_pool = False
    reads_windows = False

    def why_not(self, info: pb.PoolInfo) -> str | None:
        return offered(NAME, info)

    async def connect(self, client: Any, info: pb.PoolInfo) -> SocketLink:
        return SocketLink(info.transport_params[NAME].values["path"], info.row_bytes)

    def source_rows(self, rows: Any, row_bytes: int) -> np.ndarray:
        return np.frombuffer(as_row_bytes(rows, row_bytes), dtype=np.uint8).reshape(-1, row_bytes)


def _recv(sock: socket.socket, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)

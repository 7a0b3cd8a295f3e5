"""How rows travel from a sender to the pool, and the choice between the ways.

- ``cuda-ipc``: the pool is on a GPU of this host; the sender maps it (CUDA IPC) and copies its
  rows in on a stream of the pool's GPU (peer to peer from another GPU), then commits.
- ``shm``: the pool is in shared memory on this host; the sender maps it and copies rows in with
  numpy, then commits.
- ``mooncake``: the server registered its pool with a Mooncake Transfer Engine; the sender's own
  engine writes rows into it (tcp or rdma), from another host too, then commits.
- ``grpc``: rows travel in Push messages; works from anywhere, at gRPC's pace.

``auto`` takes the first of these that can work from this process. A transport named explicitly
that cannot work raises ``TransportUnavailable`` saying why, at once.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from kvferry.client.limits import TransportUnavailable
from kvferry.client.rows import as_row_bytes
from kvferry.v1 import transfer_pb2 as pb

TRANSPORTS = ("auto", "cuda-ipc", "shm", "mooncake", "grpc")
# The order ``auto`` tries them in: the same-host ones first.
ONE_SIDED = ("cuda-ipc", "shm", "mooncake")


class Writer(Protocol):
    """A mapped pool a one-sided sender writes granted rows into."""

    def write(self, grant: pb.Grant, rows: Any, first_token: int, end: int) -> None: ...

    def finish(self, rows: Any) -> None:
        """The send of ``rows`` is over (a transfer engine unregisters them)."""


def check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport={transport!r}: choose one of {', '.join(TRANSPORTS)}")


def source_rows(transport: str, rows: Any, row_bytes: int) -> Any:
    """``rows`` as the writer of ``transport`` copies from: a uint8 torch tensor [n, row_bytes]
    (where it already is: a GPU stays a GPU) for cuda-ipc, a uint8 numpy array for shm."""
    if transport == "cuda-ipc" and type(rows).__module__.startswith("torch"):
        import torch

        t = rows.detach().contiguous()
        if not t.numel():
            raise ValueError("there are no rows to send: give at least one row")
        per_token = t[0].numel() * t.element_size() if t.dim() >= 2 else row_bytes
        if per_token != row_bytes:
            raise ValueError(f"each token of the tensor is {per_token} bytes but the server's "
                             f"row_bytes is {row_bytes}")
        return t.reshape(-1).view(torch.uint8).reshape(-1, row_bytes)
    flat = np.frombuffer(as_row_bytes(rows, row_bytes), dtype=np.uint8).reshape(-1, row_bytes)
    if transport == "cuda-ipc":
        import torch

        return torch.from_numpy(flat)
    return flat


def why_not(transport: str, info: pb.PoolInfo) -> str | None:
    """Why ``transport`` cannot reach the pool ``info`` describes (None: it is offered)."""
    if transport == "grpc":
        return None
    if transport not in info.transports:
        return (f"the server's pool on {info.device} offers {list(info.transports)}, not "
                f"{transport!r}")
    if transport == "mooncake":
        return None
    from kvferry.client.host import host_id

    if info.host_id != host_id():
        return (f"the server runs on another host (boot id {info.host_id}, this one is "
                f"{host_id()}): {transport} works on one host only")
    return None


def unavailable(transport: str, reason: str) -> TransportUnavailable:
    return TransportUnavailable(f"transport {transport!r} cannot work from this process: {reason}")

"""Transport ``cuda-ipc``: a pool on a GPU of this host, mapped through CUDA IPC
(``kvferry.client.cuda_ipc``, needs torch with CUDA); senders copy rows in on a stream of the
pool's GPU. Windows come out as tensors through ``map_pool()``, not through ``receive``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvferry.client.transports import host_rows, same_host
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    from kvferry.client.aio import AsyncClient
    from kvferry.client.cuda_ipc import MappedPool


class CudaIpcTransport:
    name = "cuda-ipc"
    one_sided = True
    maps_pool = True
    reads_windows = False  # its windows are GPU tensors: map_pool().window_tensor()

    def why_not(self, info: pb.PoolInfo) -> str | None:
        return same_host(self.name, info)

    async def connect(self, client: AsyncClient, info: pb.PoolInfo) -> MappedPool:
        from kvferry.client.cuda_ipc import MappedPool

        return MappedPool(await client.export_pool())

    def source_rows(self, rows: Any, row_bytes: int) -> Any:
        """A uint8 torch tensor [n, row_bytes], where the rows already are (a GPU stays a GPU)."""
        import torch

        if type(rows).__module__.startswith("torch"):
            t = rows.detach().contiguous()
            if not t.numel():
                raise ValueError("there are no rows to send: give at least one row")
            per_token = t[0].numel() * t.element_size() if t.dim() >= 2 else row_bytes
            if per_token != row_bytes:
                raise ValueError(f"each token of the tensor is {per_token} bytes but the server's "
                                 f"row_bytes is {row_bytes}")
            return t.reshape(-1).view(torch.uint8).reshape(-1, row_bytes)
        flat = host_rows(rows, row_bytes)
        return torch.from_numpy(flat)


CUDA_IPC = CudaIpcTransport()

"""Same-host zero-copy reads of a CUDA pool through CUDA IPC.

    async with AsyncClient(target) as c:
        pool = await c.map_pool()               # once per process
        status = await c.poll(transfer_id)      # the window is full (or SUCCESS)
        rows = pool.window_tensor(status)       # [filled, row_bytes] uint8 on the GPU, no copy
                                                 # when the window's blocks are consecutive

The rules:
- Same host, same GPU: the client must run on the server's host (checked by boot id) and see the
  pool's GPU (checked by UUID; its index may differ under CUDA_VISIBLE_DEVICES).
- Keep PyTorch's default CUDA caching-allocator settings in the server: CUDA IPC cannot share
  memory from expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True).
- A view is valid until the Resume that frees its window: after it, the sender writes the next
  window into those blocks (usually the very same ones). Copy what you keep before resuming.
- Rows are visible once Poll/Watch counts them: the server counts a row delivered only after its
  copy into the pool has completed.
- A CPU pool cannot be mapped (ExportPool answers FAILED_PRECONDITION): use Read.
"""

from __future__ import annotations

from typing import Any

import torch

from kvferry.v1 import transfer_pb2 as pb


class IpcUnavailable(RuntimeError):
    """CUDA IPC cannot work from this process; the message says why."""


def local_host_id() -> str:
    from kvferry.server.pool import host_id

    return host_id()


def pick_device(export: pb.ExportPoolResponse, host: str, visible_uuids: list[str]) -> int:
    """The local CUDA device index holding the pool, or IpcUnavailable saying why not."""
    if export.host_id != host:
        raise IpcUnavailable(f"the server runs on another host (boot id {export.host_id}, this one "
                             f"is {host}): CUDA IPC works on one host only; use Read")
    for index, uuid in enumerate(visible_uuids):
        if uuid == export.gpu_uuid:
            return index
    raise IpcUnavailable(f"the pool's GPU {export.gpu_uuid} ({export.device} on the server) is not "
                         f"visible to this process (CUDA_VISIBLE_DEVICES?); it sees {visible_uuids}")


class MappedPool:
    """The server's pool tensor [num_blocks, block_tokens, row_bytes], mapped into this process."""

    def __init__(self, export: pb.ExportPoolResponse) -> None:
        if not torch.cuda.is_available():
            raise IpcUnavailable("CUDA is not available in this process")
        uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
        device = pick_device(export, local_host_id(), uuids)
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        shape = (export.num_blocks, export.block_tokens, export.row_bytes)
        stride = (export.block_tokens * export.row_bytes, export.row_bytes, 1)
        self.tensor: torch.Tensor = rebuild_cuda_tensor(
            torch.Tensor, torch.Size(shape), stride, 0, torch.UntypedStorage, torch.uint8, device,
            export.ipc_handle, export.storage_size_bytes, export.storage_offset_bytes, False,
            export.ref_counter_handle, export.ref_counter_offset, export.event_handle or None,
            export.event_sync_required)
        self.block_tokens = export.block_tokens
        self.row_bytes = export.row_bytes

    def window(self, status: Any) -> list[torch.Tensor]:
        """Views of the current window's filled rows, one per block, in token order."""
        out, left = [], status.window_filled_tokens
        for block in status.block_indices:
            if left <= 0:
                break
            n = min(left, self.block_tokens)
            out.append(self.tensor[block, :n])
            left -= n
        return out

    def window_tensor(self, status: Any) -> torch.Tensor:
        """The filled rows as one [n, row_bytes] tensor: a view when the blocks are consecutive
        (the allocator's common case), else a device-to-device gather into a new tensor."""
        blocks = list(status.block_indices)
        n = status.window_filled_tokens
        if blocks and blocks == list(range(blocks[0], blocks[0] + len(blocks))):
            flat = self.tensor[blocks[0]:blocks[0] + len(blocks)].reshape(-1, self.row_bytes)
            return flat[:n]
        parts = self.window(status)
        return torch.cat(parts) if parts else self.tensor.new_empty((0, self.row_bytes))

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

Torch's CUDA IPC tuple is read (by the server, ``kvferry.server.cuda_storage``) and rebuilt (here)
by parameter name only, as ``IPC_FIELDS`` lists them, and refused with a clear error if a torch
version lays it out differently from the one this was written for.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from kvferry.client.contract import TransportUnavailable
from kvferry.client.grants import grant_runs
from kvferry.client.host import host_id
from kvferry.v1 import transfer_pb2 as pb

if TYPE_CHECKING:
    import torch

# The parameters of torch.multiprocessing.reductions.rebuild_cuda_tensor, which reduce_tensor's
# tuple fills in this order (torch 2.4 through 2.13). Checked at use: a torch that changes them
# gets IpcUnavailable naming the difference, never a tensor rebuilt from misread fields.
IPC_FIELDS = (
    "tensor_cls", "tensor_size", "tensor_stride", "tensor_offset", "storage_cls", "dtype",
    "storage_device", "storage_handle", "storage_size_bytes", "storage_offset_bytes",
    "requires_grad", "ref_counter_handle", "ref_counter_offset", "event_handle",
    "event_sync_required",
)


class IpcUnavailable(TransportUnavailable):
    """CUDA IPC cannot work from this process; the message says why."""


def check_torch_layout() -> None:
    import torch
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    found = tuple(inspect.signature(rebuild_cuda_tensor).parameters)
    if found != IPC_FIELDS:
        raise IpcUnavailable(f"torch {torch.__version__} lays out CUDA IPC handles as {found}; "
                             f"kvferry was written for {IPC_FIELDS} (torch 2.4-2.13)")


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
        import torch
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        if not torch.cuda.is_available():
            raise IpcUnavailable("CUDA is not available in this process")
        check_torch_layout()
        uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
        device = pick_device(export, host_id(), uuids)
        shape = (export.num_blocks, export.block_tokens, export.row_bytes)
        self.tensor: torch.Tensor = rebuild_cuda_tensor(**{
            "tensor_cls": torch.Tensor, "tensor_size": torch.Size(shape),
            "tensor_stride": (export.block_tokens * export.row_bytes, export.row_bytes, 1),
            "tensor_offset": 0, "storage_cls": torch.UntypedStorage, "dtype": torch.uint8,
            "storage_device": device, "storage_handle": export.ipc_handle,
            "storage_size_bytes": export.storage_size_bytes,
            "storage_offset_bytes": export.storage_offset_bytes, "requires_grad": False,
            "ref_counter_handle": export.ref_counter_handle,
            "ref_counter_offset": export.ref_counter_offset,
            "event_handle": export.event_handle or None,
            "event_sync_required": export.event_sync_required,
        })
        self.block_tokens = export.block_tokens
        self.row_bytes = export.row_bytes
        self._stream: torch.cuda.Stream | None = None

    def write(self, grant: pb.Grant, rows: torch.Tensor, first_token: int, end: int) -> None:
        """Copy the granted tokens below ``end`` from ``rows`` (uint8 [n, row_bytes], on any GPU
        or the CPU, holding tokens ``first_token ...``) into the pool, on a stream of the pool's
        GPU with that GPU current, so a copy from another GPU goes peer to peer (torch enables
        peer access where the two GPUs can reach each other) rather than through the host.
        Returns once the rows have landed."""
        import torch

        dst = self.tensor.device
        flat = self.tensor.view(-1, self.row_bytes)
        with torch.cuda.device(dst):
            if self._stream is None:
                self._stream = torch.cuda.Stream(dst)
            stream = self._stream
            if rows.is_cuda:  # the rows may still be being produced on the caller's stream
                stream.wait_stream(torch.cuda.current_stream(rows.device))
            try:
                with torch.cuda.stream(stream):
                    for run in grant_runs(grant, end):
                        src = run.token - first_token
                        flat[run.row:run.row + run.tokens].copy_(rows[src:src + run.tokens],
                                                                 non_blocking=True)
            finally:  # also after an error: copies already issued land before this returns
                stream.synchronize()

    def finish(self, rows: torch.Tensor) -> None:
        """Nothing to undo after a send: the mapping stays for the next."""

    def still_window(self, status: Any) -> None:
        """A GPU pool keeps no epoch table a reader could check: ask the server (Poll)."""
        return None

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

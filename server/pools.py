"""Opening the pool: the storage kind ``--device`` asks for. Each kind is imported only when asked
for, so a CPU pool needs no torch."""

from __future__ import annotations

from kvferry.server.storage import BlockStorage


def open_storage(num_blocks: int, block_tokens: int, row_bytes: int, device: str,
                 max_message_bytes: int, shm_dir: str) -> BlockStorage:
    """The storage kind for ``device`` ("cpu" or "cuda:N")."""
    if device == "cpu":
        from kvferry.server.cpu_storage import CpuStorage

        return CpuStorage(num_blocks, block_tokens, row_bytes, shm_dir)
    from kvferry.server.cuda_storage import CudaStorage

    return CudaStorage(num_blocks, block_tokens, row_bytes, device, max_message_bytes)

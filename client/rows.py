"""Turn what a serving stack holds (bytes, numpy arrays, torch tensors) into whole rows of bytes."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_row_bytes(rows: Any, row_bytes: int) -> memoryview:
    """A flat byte view of ``rows`` (no copy where the input allows), checked against row_bytes.

    A 2-D array or tensor must be [tokens, ...] with each token's bytes == row_bytes.
    """
    if isinstance(rows, (bytes, bytearray, memoryview)):
        view = memoryview(rows).cast("B")
    elif _is_torch(rows):
        import torch

        t = rows.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.dim() >= 2 and len(t) and t[0].numel() * t.element_size() != row_bytes:
            raise ValueError(f"each token of the tensor is {t[0].numel() * t.element_size()} bytes "
                             f"but the server's row_bytes is {row_bytes}")
        view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    else:
        a = np.ascontiguousarray(rows)
        if a.ndim >= 2 and len(a) and a[0].nbytes != row_bytes:
            raise ValueError(f"each token of the array is {a[0].nbytes} bytes but the server's "
                             f"row_bytes is {row_bytes}")
        view = a.reshape(-1).view(np.uint8).data
    if not len(view):
        raise ValueError("there are no rows to send: give at least one row")
    if len(view) % row_bytes:
        raise ValueError(f"{len(view)} bytes is not a whole number of {row_bytes}-byte rows")
    return view


def _is_torch(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")

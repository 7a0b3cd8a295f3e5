"""The encode -> language (EPD) pattern: an encoder sends, per request, an embedding tensor
[tokens, hidden] with each token's id and M-RoPE positions, plus per-request aux ints; the language
worker receives the same tensors, window by window or assembled.

Row layout, version 1 (all little-endian), one row per token:

    | embedding: hidden x dtype bytes | token id: int32 | M-RoPE positions: 3 x int32 |

so ``row_bytes = hidden * dtype_bytes + 16``; start the server with that ``--row-bytes``. The
sender's first Push carries a header as the transfer's metadata:

    b"KVFE" | version: u16 | dtype code: u16 | hidden: u32 | n_aux: u32 | aux: n_aux x int64

with aux[0] = the request's total length and aux[1] = its M-RoPE position delta. A receiver
refuses a transfer whose header is not its layout (other version, dtype or hidden size) as soon
as the sender attaches, and aborts it so the sender learns why; a sender refuses a server whose
row_bytes is not the layout's before sending anything.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kvferry.client.sync import Client
from kvferry.v1 import transfer_pb2 as pb

MAGIC = b"KVFE"
VERSION = 1
_HEADER = struct.Struct("<4sHHII")
_DTYPES = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
_EXTRA = 16  # token id + 3 M-RoPE positions, int32 each


class LayoutMismatch(ValueError):
    """The other side (or the server) speaks another row layout: nothing would decode."""


@dataclass(frozen=True)
class EpdTensors:
    embeddings: torch.Tensor  # [tokens, hidden], the layout's dtype
    token_ids: torch.Tensor  # [tokens] int32
    mrope_positions: torch.Tensor  # [3, tokens] int32


@dataclass(frozen=True)
class EpdLayout:
    hidden_size: int
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype {self.dtype} is not one of {list(_DTYPES)}")

    @property
    def embedding_bytes(self) -> int:
        return self.hidden_size * torch.empty((), dtype=self.dtype).element_size()

    @property
    def row_bytes(self) -> int:
        return self.embedding_bytes + _EXTRA

    def header(self, aux: Sequence[int]) -> bytes:
        return (_HEADER.pack(MAGIC, VERSION, _DTYPES[self.dtype], self.hidden_size, len(aux))
                + struct.pack(f"<{len(aux)}q", *aux))

    def read_header(self, data: bytes) -> list[int]:
        """The aux ints of a header written by this same layout; LayoutMismatch otherwise."""
        if len(data) < _HEADER.size:
            raise LayoutMismatch("the transfer carries no EPD header: its sender is not an "
                                 "EpdSender (or an older one)")
        magic, version, dtype, hidden, n_aux = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise LayoutMismatch(f"metadata starts {magic!r}, not an EPD header")
        if version != VERSION:
            raise LayoutMismatch(f"EPD row layout version {version}; this receiver reads {VERSION}")
        ours = (_DTYPES[self.dtype], self.hidden_size)
        if (dtype, hidden) != ours:
            names = {v: k for k, v in _DTYPES.items()}
            raise LayoutMismatch(f"sender's rows are {names.get(dtype, dtype)} x {hidden}; this "
                                 f"receiver expects {self.dtype} x {self.hidden_size}")
        if len(data) != _HEADER.size + 8 * n_aux:
            raise LayoutMismatch("EPD header length does not match its aux count")
        return list(struct.unpack_from(f"<{n_aux}q", data, _HEADER.size))

    def pack(self, embeddings: torch.Tensor, token_ids: torch.Tensor,
             mrope_positions: torch.Tensor) -> torch.Tensor:
        """[tokens, row_bytes] uint8 rows on the CPU."""
        n = embeddings.shape[0]
        if embeddings.shape != (n, self.hidden_size) or embeddings.dtype != self.dtype:
            raise LayoutMismatch(f"embeddings are {tuple(embeddings.shape)} {embeddings.dtype}; the "
                                 f"layout is [tokens, {self.hidden_size}] {self.dtype}")
        if token_ids.shape != (n,) or mrope_positions.shape != (3, n):
            raise ValueError(f"token_ids must be [{n}] and mrope_positions [3, {n}]")
        emb = embeddings.detach().cpu().contiguous().view(torch.uint8).reshape(n, -1)
        ids = token_ids.detach().cpu().to(torch.int32).reshape(n, 1)
        pos = mrope_positions.detach().cpu().to(torch.int32).t().contiguous()
        extra = torch.cat([ids, pos], dim=1).view(torch.uint8).reshape(n, _EXTRA)
        return torch.cat([emb, extra], dim=1)

    def unpack(self, rows: np.ndarray | torch.Tensor) -> EpdTensors:
        """The tensors of [tokens, row_bytes] uint8 rows (each field copied out once)."""
        r = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        if r.ndim != 2 or r.shape[1] != self.row_bytes:
            raise LayoutMismatch(f"rows of {r.shape[-1]} bytes; the layout's are {self.row_bytes}")
        n, eb = r.shape[0], self.embedding_bytes
        emb = torch.from_numpy(r[:, :eb].copy()).view(self.dtype)
        extra = torch.from_numpy(r[:, eb:].copy().view(np.int32))
        return EpdTensors(emb.reshape(n, self.hidden_size), extra[:, 0].contiguous(),
                          extra[:, 1:].t().contiguous())


@dataclass(frozen=True)
class EpdWindow:
    start_token: int
    tensors: EpdTensors
    aux: list[int]
    last: bool


class EpdSender:
    def __init__(self, client: Client, layout: EpdLayout) -> None:
        self.client, self.layout = client, layout

    def send(self, request_id: str, embeddings: torch.Tensor, token_ids: torch.Tensor,
             mrope_positions: torch.Tensor, mrope_position_delta: int = 0,
             extra_aux: Sequence[int] = (), secret: str | None = None) -> pb.TransferStatus:
        """``secret``: the request's transfer secret (kvferry.client.secrets), as the receiver's."""
        row_bytes = self.client.pool_info().row_bytes
        if row_bytes != self.layout.row_bytes:
            raise LayoutMismatch(f"the server's rows are {row_bytes} bytes; this layout needs "
                                 f"{self.layout.row_bytes} (start it with --row-bytes "
                                 f"{self.layout.row_bytes})")
        rows = self.layout.pack(embeddings, token_ids, mrope_positions)
        aux = [rows.shape[0], mrope_position_delta, *extra_aux]
        return self.client.send(request_id, rows, metadata=self.layout.header(aux), secret=secret)


class EpdReceiver:
    def __init__(self, client: Client, layout: EpdLayout) -> None:
        self.client, self.layout = client, layout

    def windows(self, request_id: str, window_tokens: int = 0, **receive: Any) -> Iterator[EpdWindow]:
        """Each window decoded. Extra arguments go to ``Client.receive`` (open, release,
        secret, ...)."""
        for w in self.client.receive(request_id, window_tokens,
                                     check_metadata=self.layout.read_header, **receive):
            yield EpdWindow(w.start_token, self.layout.unpack(w.rows()),
                            self.layout.read_header(w.metadata), w.last)

    def receive(self, request_id: str, window_tokens: int = 0, **receive: Any) -> tuple[EpdTensors, list[int]]:
        """The whole request, assembled: (tensors, aux)."""
        parts: list[EpdTensors] = []
        aux: list[int] = []
        for w in self.windows(request_id, window_tokens, **receive):
            parts.append(w.tensors)
            aux = w.aux
        return EpdTensors(torch.cat([p.embeddings for p in parts]),
                          torch.cat([p.token_ids for p in parts]),
                          torch.cat([p.mrope_positions for p in parts], dim=1)), aux

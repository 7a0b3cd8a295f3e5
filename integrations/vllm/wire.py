"""What both engines agree on without talking: a transfer's id, its secret, and its header.

The header is the transfer's metadata (the sender's first Push carries it): the embedding's
dtype and shape, so a consumer can check the rows are what its model expects before using them.

Why this is not ``kvferry.client.epd``'s header: the two describe different rows. An EPD row is
a layout of its own (the embedding, then the token id and three M-RoPE positions as int32), its
header carries per-request aux ints, and its width is fixed by the server's --row-bytes, which
the layout must match. Here a row is exactly one row of vLLM's encoder output, nothing added,
of whatever width and dtype the encoder emits, and the header is what the language engine's
scheduler checks against the request (placeholder count, dtype) before it schedules anything.
Folding one into the other would put fields into each that the other never reads. The JSON
form stays as version 1 was written, so engines of the previous release interoperate (a test
reads version 1's exact bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from kvferry.client.secrets import derived_secret

HEADER_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HeaderError(ValueError):
    """The transfer's metadata is not an embedding header this connector can use."""


def transfer_id(prefix: str, mm_hash: str) -> str:
    return f"{prefix}{mm_hash}"


def transfer_secret(shared: str | None, tid: str) -> str | None:
    """One transfer's secret, derived from the engines' shared secret (``kvferry.client.secrets.
    derived_secret``): it opens that transfer only."""
    return None if shared is None else derived_secret(shared, "vllm ec", tid)


@dataclass(frozen=True)
class Header:
    dtype: str
    tokens: int
    width: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def row_bytes(self) -> int:
        return self.width * self.torch_dtype.itemsize

    def encode(self) -> bytes:
        return json.dumps({"kvferry_vllm_ec": HEADER_VERSION, "dtype": self.dtype,
                           "shape": [self.tokens, self.width]}).encode()

    @classmethod
    def of(cls, embedding: torch.Tensor) -> Header:
        name = str(embedding.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise HeaderError(f"an embedding of dtype {embedding.dtype} cannot be sent: "
                              f"the connector moves {', '.join(DTYPES)}")
        if embedding.dim() != 2:
            raise HeaderError(f"an embedding must be [tokens, hidden]; this one is "
                              f"{list(embedding.shape)}")
        return cls(name, int(embedding.shape[0]), int(embedding.shape[1]))

    @classmethod
    def decode(cls, data: bytes) -> Header:
        try:
            d = json.loads(data)
            if d.get("kvferry_vllm_ec") != HEADER_VERSION:
                raise HeaderError(f"header version {d.get('kvferry_vllm_ec')!r}, this connector "
                                  f"reads {HEADER_VERSION}: upgrade both engines' kvferry alike")
            header = cls(str(d["dtype"]), int(d["shape"][0]), int(d["shape"][1]))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            if isinstance(e, HeaderError):
                raise
            raise HeaderError(f"the transfer's metadata is not a kvferry vLLM embedding header "
                              f"({data[:64]!r}): was it sent by another program?") from e
        if header.dtype not in DTYPES or header.tokens <= 0 or header.width <= 0:
            raise HeaderError(f"the embedding header {d} names no usable dtype and shape")
        return header


def check_header(header: Header, tokens: int, dtype: torch.dtype | None) -> None:
    """Refuse an embedding that is not what the request takes: another number of rows (another
    model or processor settings), or another dtype. The width is not checked: an encoder may emit
    rows wider than the model's hidden size (DeepStack), which only the model knows."""
    if header.tokens != tokens:
        raise HeaderError(f"the encoder sent {header.tokens} embedding rows but the request has "
                          f"{tokens} placeholders: do both engines run the same model and "
                          "processor settings?")
    if dtype is not None and header.torch_dtype != dtype:
        raise HeaderError(f"the encoder sent {header.dtype} rows but this model runs in {dtype}: "
                          "do both engines run the same --dtype?")

"""What two engines of different releases must still agree on without talking: the embedding
header (version 1's exact bytes) and each transfer's secret derived from the shared one."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import torch

from kvferry.client.secrets import derived_secret
from kvferry.integrations.vllm.wire import Header, HeaderError, transfer_secret

# What an encoder of the previous release puts in a transfer's metadata, byte for byte.
V1_HEADER = b'{"kvferry_vllm_ec": 1, "dtype": "bfloat16", "shape": [32, 128]}'


def test_version_1_headers_still_read_and_are_still_written() -> None:
    header = Header.decode(V1_HEADER)
    assert (header.dtype, header.tokens, header.width, header.torch_dtype) == \
        ("bfloat16", 32, 128, torch.bfloat16)
    assert Header.of(torch.zeros(32, 128, dtype=torch.bfloat16)).encode() == V1_HEADER
    with pytest.raises(HeaderError, match="header version 2"):
        Header.decode(V1_HEADER.replace(b": 1,", b": 2,"))


def test_transfer_secrets_are_derived_as_the_previous_release_derived_them() -> None:
    shared, tid = "s" * 32, "kvferry-ec-abc"
    before = hmac.new(shared.encode(), f"kvferry vllm ec v1 {tid}".encode(), hashlib.sha256).hexdigest()
    assert transfer_secret(shared, tid) == before == derived_secret(shared, "vllm ec", tid)
    assert transfer_secret(None, tid) is None
    assert derived_secret(shared, "vllm ec", tid + "x") != before

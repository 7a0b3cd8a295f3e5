"""The EPD adapter: its row layout, its refusals, a transfer through a real server, and the demo."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvferry.client import Client, TransferFailed
from kvferry.client.epd import EpdLayout, EpdReceiver, EpdSender, LayoutMismatch

from support.kvserver import start_server

ROOT = Path(__file__).resolve().parents[2]


def request(n: int, hidden: int, dtype: torch.dtype = torch.bfloat16, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, hidden, generator=g).to(dtype),
            torch.randint(-2**31, 2**31 - 1, (n,), generator=g, dtype=torch.int32),
            torch.randint(0, 2**20, (3, n), generator=g, dtype=torch.int32))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), hidden=st.integers(1, 64),
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
def test_pack_unpack_round_trip(n: int, hidden: int, dtype: torch.dtype) -> None:
    layout = EpdLayout(hidden, dtype)
    emb, ids, pos = request(n, hidden, dtype)
    rows = layout.pack(emb, ids, pos)
    assert rows.shape == (n, layout.row_bytes) and rows.dtype == torch.uint8
    back = layout.unpack(rows.numpy())
    assert torch.equal(back.embeddings, emb) and torch.equal(back.token_ids, ids)
    assert torch.equal(back.mrope_positions, pos)


def test_header_refusals() -> None:
    ours = EpdLayout(64)
    assert ours.read_header(ours.header([10, -7])) == [10, -7]
    with pytest.raises(LayoutMismatch, match=re.escape("expects torch.bfloat16 x 64")):
        ours.read_header(EpdLayout(32).header([1]))
    with pytest.raises(LayoutMismatch, match="float32"):
        ours.read_header(EpdLayout(64, torch.float32).header([1]))
    bumped = bytearray(ours.header([1]))
    bumped[4] = 2  # version 2
    with pytest.raises(LayoutMismatch, match="version 2"):
        ours.read_header(bytes(bumped))
    with pytest.raises(LayoutMismatch, match="no EPD header"):
        ours.read_header(b"")
    with pytest.raises(LayoutMismatch, match="not an EPD header"):
        ours.read_header(b"JUNK" + bytes(20))
    with pytest.raises(LayoutMismatch, match=r"\[tokens, 64\]"):
        ours.pack(*request(3, 32))


@pytest.fixture(scope="module")
def epd_server():  # type: ignore[no-untyped-def]
    layout = EpdLayout(64)  # 128 + 16 = 144-byte rows
    srv = start_server(row_bytes=layout.row_bytes, block_tokens=16, num_blocks=16,
                       default_window_tokens=64)
    yield srv
    assert srv.stop() == 0


def test_a_request_larger_than_the_window(epd_server) -> None:  # type: ignore[no-untyped-def]
    layout = EpdLayout(64)
    emb, ids, pos = request(300, 64)
    result = {}
    with Client(epd_server.target) as rx, Client(epd_server.target) as tx:
        th = threading.Thread(target=lambda: result.setdefault(
            "status", EpdSender(tx, layout).send("epd-1", emb, ids, pos, mrope_position_delta=-5)))
        th.start()
        got, aux = EpdReceiver(rx, layout).receive("epd-1", 64)
        th.join(30)
    assert torch.equal(got.embeddings, emb) and torch.equal(got.token_ids, ids)
    assert torch.equal(got.mrope_positions, pos) and aux == [300, -5]
    assert result["status"].resume_count == 4
    epd_server.assert_pool_free()


def test_a_mismatched_layout_is_refused_at_the_start(epd_server) -> None:  # type: ignore[no-untyped-def]
    sender_layout = EpdLayout(64)  # bf16 x 64: 144-byte rows
    receiver_layout = EpdLayout(32, torch.float32)  # f32 x 32: also 144-byte rows, other meaning
    assert sender_layout.row_bytes == receiver_layout.row_bytes
    emb, ids, pos = request(300, 64)
    errors: list[Exception] = []
    with Client(epd_server.target) as rx, Client(epd_server.target) as tx:
        def send() -> None:
            try:
                EpdSender(tx, sender_layout).send("epd-bad", emb, ids, pos)
            except Exception as e:
                errors.append(e)

        th = threading.Thread(target=send)
        th.start()
        with pytest.raises(LayoutMismatch, match=re.escape("expects torch.float32 x 32")):
            list(EpdReceiver(rx, receiver_layout).windows("epd-bad", 64))
        th.join(30)
    assert errors and isinstance(errors[0], TransferFailed)
    assert "expects torch.float32 x 32" in errors[0].reason  # the sender learns why
    epd_server.assert_pool_free()


def test_the_sender_refuses_a_server_with_other_rows(epd_server) -> None:  # type: ignore[no-untyped-def]
    with Client(epd_server.target) as tx, pytest.raises(LayoutMismatch, match="--row-bytes 272"):
        EpdSender(tx, EpdLayout(128)).send("epd-wrong", *request(5, 128))


def test_the_demo_runs_and_verifies() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples/epd_demo.py"), "--tokens", "5000",
                        "--hidden", "256", "--window", "1024", "--ranks", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "verified" in r.stdout and r.stdout.count("equal") == 3
    assert "resumes applied: 4" in r.stdout and "duplicates: 0" in r.stdout

"""The vLLM integration tests: they run in .venv-vllm (make test-vllm), never in the main suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_blip2 import HIDDEN, build

from support.kvserver import ServerProcess, start_server

WIDTH = HIDDEN  # the tiny model's embeddings: float32 rows of its decoder's width
ROW_BYTES = WIDTH * 4


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random BLIP-2, saved locally: no hub."""
    return build(tmp_path_factory.mktemp("tiny-blip2"))


@pytest.fixture
def ec_server() -> Iterator[ServerProcess]:
    """A kvferry server whose rows fit the tiny model's embedding, with 16-token windows: an
    embedding of more than 16 tokens is windowed."""
    srv = start_server(num_blocks=8, block_tokens=8, row_bytes=ROW_BYTES,
                       default_window_tokens=16)
    yield srv
    srv.stop()

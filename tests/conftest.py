from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator

import pytest

from support.kvserver import ServerProcess, start_server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The shared seed-geometry server: 32 blocks of 8 tokens, 64-byte rows, 64-token windows."""
    srv = start_server()
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def shm_dir() -> Iterator[str]:
    """A memory-backed directory of the test's own for a server's pool file and socket, checked
    to be left empty (a stopped server removes both; the next one sweeps a killed one's)."""
    d = tempfile.mkdtemp(prefix="kvferry-test-", dir="/dev/shm")
    yield d
    leftovers = os.listdir(d)
    os.rmdir(d) if not leftovers else None
    assert leftovers == [], f"the server left {leftovers} in {d}"


@pytest.fixture
def seed(server: ServerProcess) -> Iterator[ServerProcess]:
    """The shared server, checked to leak nothing: every block free and no transfer held after
    the test."""
    server.assert_pool_free()
    yield server
    server.assert_pool_free()


# tests/integrations/vllm_connector needs vLLM, which lives in its own environment (.venv-vllm, `make
# test-vllm`): the main suite does not collect it. (The folder is not named `vllm`: on the test
# path it would shadow the package.)
collect_ignore = [] if importlib.util.find_spec("vllm") else ["integrations/vllm_connector"]

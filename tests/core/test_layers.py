"""The layers hold: the client needs only the contract, the core does no I/O."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def imported_by(statement: str) -> list[str]:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("statement", ["import kvferry.client",
                                       "from kvferry.client import Client, AsyncClient",
                                       "import kvferry.client.cuda_ipc"])
def test_the_client_imports_neither_torch_nor_the_server(statement: str) -> None:
    modules = imported_by(statement)
    assert "torch" not in modules
    assert not [m for m in modules if m.startswith(("kvferry.server", "kvferry.statemachine"))]


def test_the_core_imports_no_io() -> None:
    modules = imported_by("import kvferry.statemachine")
    assert not [m for m in modules if m.split(".")[0] in ("grpc", "asyncio", "torch", "prometheus_client")]


def test_a_cpu_server_needs_no_torch() -> None:
    modules = imported_by("import kvferry.server.app, kvferry.server.cpu_storage")
    assert "torch" not in modules

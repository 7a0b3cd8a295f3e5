"""The committed protobuf stubs are exactly what protos/ generates today."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("transfer_pb2.py", "transfer_pb2.pyi", "transfer_pb2_grpc.py")


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    from grpc_tools import protoc

    rc = protoc.main(["protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}",
                      f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                      str(ROOT / "protos/kvferry/v1/transfer.proto")])
    assert rc == 0
    for name in GENERATED:
        fresh = (tmp_path / "kvferry/v1" / name).read_text()
        committed = (ROOT / "protos/kvferry/v1" / name).read_text()
        if fresh != committed:
            pytest.fail(f"protos/kvferry/v1/{name} is stale: run `make protos` and commit it")

"""Where CUDA IPC cannot work, kvferry says so (these run anywhere, GPU or not)."""

from __future__ import annotations

import grpc
import pytest

from kvferry.client.cuda_ipc import IpcUnavailable, pick_device
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess


def test_export_of_a_cpu_pool_is_failed_precondition(seed: ServerProcess) -> None:
    ch, stub = seed.stub()
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.ExportPool(pb.ExportPoolRequest())
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--device cuda:N" in e.value.details() and "Read" in e.value.details()


EXPORT = pb.ExportPoolResponse(host_id="host-a", gpu_uuid="GPU-2", device="cuda:1")


def test_another_host_is_refused() -> None:
    with pytest.raises(IpcUnavailable, match="another host"):
        pick_device(EXPORT, "host-b", ["GPU-1", "GPU-2"])


def test_the_pools_gpu_must_be_visible() -> None:
    with pytest.raises(IpcUnavailable, match="not visible"):
        pick_device(EXPORT, "host-a", ["GPU-1"])


def test_the_gpu_is_found_by_uuid_whatever_its_index() -> None:
    assert pick_device(EXPORT, "host-a", ["GPU-2", "GPU-1"]) == 0
    assert pick_device(EXPORT, "host-a", ["GPU-0", "GPU-1", "GPU-2"]) == 2


def test_the_installed_torch_lays_out_ipc_handles_as_kvferry_reads_them() -> None:
    from kvferry.client.cuda_ipc import check_torch_layout

    check_torch_layout()  # raises IpcUnavailable naming the difference on a torch that moved them


def test_a_torch_with_another_ipc_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.multiprocessing import reductions

    from kvferry.client import cuda_ipc

    def moved(tensor_cls, tensor_size, storage_handle):  # type: ignore[no-untyped-def]
        raise AssertionError("never called")

    monkeypatch.setattr(reductions, "rebuild_cuda_tensor", moved)
    with pytest.raises(IpcUnavailable, match="lays out CUDA IPC handles as"):
        cuda_ipc.check_torch_layout()

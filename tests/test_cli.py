"""The kvferry command: help, environment variables, bad configuration, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import fields

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvferry.server.config import ServerConfig, env_name
from kvferry.v1 import transfer_pb2 as pb

from kvserver import start_server, wait_until


def kvferry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvferry.server", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_help_explains_every_flag_and_its_variable() -> None:
    top = kvferry("--help")
    assert top.returncode == 0 and "serve" in top.stdout
    out = kvferry("serve", "--help").stdout
    for f in fields(ServerConfig):
        assert "--" + f.name.replace("_", "-") in out
        assert env_name(f.name) in out


def test_environment_variables_configure_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVFERRY_NUM_BLOCKS", "12")
    monkeypatch.setenv("KVFERRY_ROW_BYTES", "128")
    monkeypatch.setenv("KVFERRY_BLOCK_TOKENS", "4")
    # Flags win over variables: block_tokens comes from the flag, the rest from the environment.
    srv = start_server(base={}, block_tokens=8, default_window_tokens=32)
    try:
        info = srv.pool_info()
        assert (info.num_blocks, info.row_bytes, info.block_tokens) == (12, 128, 8)
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("args,needle", [
    (["--row-bytes", "0"], "row_bytes"),
    (["--num-blocks", "0"], "num_blocks"),
    (["--default-window-tokens", "999999"], "default_window_tokens"),
    (["--device", "tpu"], "device"),
    (["--stall-timeout", "0"], "stall_timeout"),
])
def test_bad_configuration_exits_2_with_a_message(args: list[str], needle: str) -> None:
    r = kvferry("serve", "--port", "0", "--metrics-port", "0", *args)
    assert r.returncode == 2 and needle in r.stderr


def test_missing_cuda_device_fails_fast() -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = kvferry("serve", "--port", "0", "--metrics-port", "0", "--device", "cuda:0")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr


def test_sigterm_drains_then_exits_0() -> None:
    srv = start_server(shutdown_grace=1.5)
    ch, stub = srv.stub()
    health = health_pb2_grpc.HealthStub(ch)
    stub.Open(pb.OpenRequest(transfer_id="draining", window_tokens=16))
    # A sender blocked on a full window that nobody will resume.
    errors: list[grpc.RpcError] = []

    def sender() -> None:
        try:
            stub.Push(iter([pb.PushRequest(transfer_id="draining", total_tokens=64,
                                           rows=bytes(64 * 64))]), timeout=20)
        except grpc.RpcError as e:
            errors.append(e)

    th = threading.Thread(target=sender)
    th.start()
    wait_until(lambda: stub.Poll(pb.PollRequest(transfer_id="draining")).sent_tokens == 16,
               "the sender filling the window")
    srv.proc.send_signal(signal.SIGTERM)
    # Draining: not serving, no new transfers, but in-flight ones may still finish.
    wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status
               == health_pb2.HealthCheckResponse.NOT_SERVING, "readiness going NOT_SERVING")
    live = health.Check(health_pb2.HealthCheckRequest(service="liveness"))
    assert live.status == health_pb2.HealthCheckResponse.SERVING  # draining is not dead
    with pytest.raises(grpc.RpcError) as e:
        stub.Open(pb.OpenRequest(transfer_id="late"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert srv.proc.wait(30) == 0
    th.join(10)
    ch.close()
    assert errors and errors[0].code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)


def test_reflection_lists_the_services(seed) -> None:  # type: ignore[no-untyped-def]
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(seed.target) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
        assert {"kvferry.v1.TransferService", "grpc.health.v1.Health"} <= services
        desc = ProtoReflectionDescriptorDatabase(ch).FindFileContainingSymbol("kvferry.v1.TransferService")
        assert desc.name == "kvferry/v1/transfer.proto"

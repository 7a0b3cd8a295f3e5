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

from support.kvserver import start_server, wait_until


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


def one_line_failure(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The start-up failure: exit 2, one line ``kvferry serve: what: what to do``, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvferry serve: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--row-bytes", "0"], "--row-bytes"),
    (["--num-blocks", "0"], "--num-blocks must be positive"),
    (["--default-window-tokens", "999999"], "--default-window-tokens"),
    (["--device", "tpu"], "--device"),
    (["--stall-timeout", "0"], "--stall-timeout"),
    (["--num-blocks", "100000000"], "lower --max-metadata-bytes or --num-blocks"),
    (["--num-blocks", "200000"], "shared memory"),  # a pool larger than /dev/shm holds
    (["--host", "no.such.host.invalid"], "does not resolve"),
    (["--host", "192.0.2.1"], "is not an address of this host"),
    (["--auth-token-file", "/nonexistent/token"], "no such file"),
])
def test_bad_configuration_exits_2_with_one_line(args: list[str], needle: str) -> None:
    one_line_failure(kvferry("serve", "--port", "0", "--metrics-port", "0", *args), needle)


def test_a_taken_port_is_named() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        one_line_failure(kvferry("serve", "--port", port, "--metrics-port", "0"),
                         f"port {port}", "is taken", "--port")
        one_line_failure(kvferry("serve", "--port", "0", "--metrics-port", port),
                         f"port {port}", "is taken", "--metrics-port")


def test_a_bad_environment_value_names_its_variable_and_only_serve_cares() -> None:
    env = {"KVFERRY_NUM_BLOCKS": "zero"}
    one_line_failure(kvferry("serve", "--port", "0", env=env), "KVFERRY_NUM_BLOCKS='zero'",
                     "an integer")
    diagram = kvferry("diagram", env=env)  # other commands do not read serve's variables
    assert diagram.returncode == 0 and "stateDiagram" in diagram.stdout


def test_flags_are_not_abbreviated_and_errors_show_serves_usage() -> None:
    r = kvferry("serve", "--num-block", "3")
    assert r.returncode == 2 and "unrecognized arguments: --num-block" in r.stderr
    assert r.stderr.startswith("usage: kvferry serve ")
    r = kvferry("serve", "--num-blocks", "three")
    assert r.returncode == 2 and r.stderr.startswith("usage: kvferry serve ")


def test_version_and_bare_command() -> None:
    from kvferry.server.app import version

    r = kvferry("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"kvferry {version()}"
    bare = kvferry()
    assert bare.returncode == 0 and "usage: kvferry" in bare.stdout and "serve" in bare.stdout


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
    assert http_status(srv, "/readyz") == 200 and http_status(srv, "/healthz") == 200
    srv.proc.send_signal(signal.SIGTERM)
    # Draining: not serving, no new transfers, but in-flight ones may still finish.
    wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status
               == health_pb2.HealthCheckResponse.NOT_SERVING, "readiness going NOT_SERVING")
    live = health.Check(health_pb2.HealthCheckRequest(service="liveness"))
    assert live.status == health_pb2.HealthCheckResponse.SERVING  # draining is not dead
    # The HTTP probes (used under TLS) say the same.
    assert http_status(srv, "/readyz") == 503 and http_status(srv, "/healthz") == 200
    with pytest.raises(grpc.RpcError) as e:
        stub.Open(pb.OpenRequest(transfer_id="late"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert srv.proc.wait(30) == 0
    th.join(10)
    ch.close()
    assert errors and errors[0].code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE)


def http_status(srv, path: str) -> int:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{srv.host}:{srv.metrics_port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_reflection_lists_the_services(seed) -> None:  # type: ignore[no-untyped-def]
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(seed.target) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
        assert {"kvferry.v1.TransferService", "grpc.health.v1.Health"} <= services
        desc = ProtoReflectionDescriptorDatabase(ch).FindFileContainingSymbol("kvferry.v1.TransferService")
        assert desc.name == "kvferry/v1/transfer.proto"


def test_reflection_v1_answers_a_client_that_speaks_only_v1(seed) -> None:  # type: ignore[no-untyped-def]
    """A generic client calls grpc.reflection.v1 by its method path, as grpcurl does."""
    from grpc_reflection.v1alpha import reflection_pb2  # the same fields as v1's messages

    with grpc.insecure_channel(seed.target) as ch:
        call = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        replies = list(call(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="kvferry.v1.TransferService"),
        ]), timeout=10))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"kvferry.v1.TransferService", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto


def test_the_http_port_serves_metrics_probes_and_404(seed) -> None:  # type: ignore[no-untyped-def]
    from kvferry.server.app import version

    text = seed.metrics_text()
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert f'kvferry_build_info{{grpc="{grpc.__version__}",python=' in text
    assert f'version="{version()}"' in text
    assert http_status(seed, "/healthz") == 200 and http_status(seed, "/readyz") == 200
    for other in ("/", "/foo", "/metricsx"):
        assert http_status(seed, other) == 404


def test_make_serve_installs_only_when_the_dependencies_changed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`make serve` is `make install` then the server; install is a no-op once done, until
    pyproject.toml changes (the install is editable: code changes need none)."""
    import shutil
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)

    def plan() -> str:
        return subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=root, capture_output=True,
                              text=True, check=True).stdout

    assert "pip" in plan()  # never installed into this venv
    stamp = venv / ".kvferry-installed"
    stamp.touch()
    os.utime(stamp, (root.joinpath("pyproject.toml").stat().st_mtime + 10,) * 2)
    assert "pip" not in plan()  # installed since pyproject.toml last changed
    os.utime(stamp, (root.joinpath("pyproject.toml").stat().st_mtime - 10,) * 2)
    assert "pip" in plan()  # the dependencies changed since

"""A real kvferry server process on loopback, for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

SEED_FLAGS = {
    "num_blocks": 32, "block_tokens": 8, "row_bytes": 64, "default_window_tokens": 64,
    "bootstrap_timeout": 20, "stall_timeout": 30, "retention": 60, "shutdown_grace": 2,
}


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    grpc_port: int
    metrics_port: int
    flags: dict[str, Any]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stub(self) -> tuple[grpc.Channel, pb_grpc.TransferServiceStub]:
        ch = grpc.insecure_channel(self.target)
        return ch, pb_grpc.TransferServiceStub(ch)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample, e.g. metric('kvferry_resumes_total')."""
        key = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics_text().splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        raise KeyError(key)

    def pool_info(self) -> pb.PoolInfo:
        ch, stub = self.stub()
        with ch:
            return stub.GetPoolInfo(pb.GetPoolInfoRequest(), timeout=5)

    def assert_pool_free(self, timeout: float = 5.0) -> None:
        """Every block free and no transfer held (releases may still be landing)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.pool_info()
            if info.free_blocks == info.num_blocks and info.transfers == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"pool not free: {info.free_blocks}/{info.num_blocks} blocks "
                                     f"free, {info.transfers} transfers held")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def start_server(base: dict[str, Any] | None = None,
                 credentials: grpc.ChannelCredentials | None = None, **flags: Any) -> ServerProcess:
    """A server with ``base`` flags (the seed geometry by default) overridden by ``flags``;
    ``credentials`` are what the start-up health check connects with (TLS servers)."""
    merged = {**(SEED_FLAGS if base is None else base), **flags}
    argv = [sys.executable, "-m", "kvferry.server", "serve", "--port", "0", "--metrics-port", "0"]
    for k, v in merged.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"server did not start: {err}")
    started = json.loads(line)
    srv = ServerProcess(proc, started["grpc_port"], started["metrics_port"], merged)
    ch = (grpc.insecure_channel(srv.target) if credentials is None
          else grpc.secure_channel(srv.target, credentials))
    with ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return srv

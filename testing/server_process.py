"""Start a kvferry server as a child process and wait until it serves: for demos, benchmarks and
tests that need a real server next to them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    grpc_port: int
    metrics_port: int
    flags: dict[str, Any] = field(default_factory=dict)
    # What this helper's own calls carry: the bearer token, when the server was given one.
    call_metadata: tuple[tuple[str, str], ...] = ()
    # Everything the server wrote (stdout: its log; stderr: what escaped it), line by line, read
    # as it comes so that a chatty server never blocks on a full pipe.
    output: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list, repr=False)

    def log_events(self) -> list[dict[str, Any]]:
        """The server's JSON log lines, parsed (other lines skipped)."""
        out = []
        for line in list(self.output):
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    @property
    def host(self) -> str:
        return str(self.flags.get("host", "127.0.0.1"))

    @property
    def target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def stub(self) -> tuple[grpc.Channel, pb_grpc.TransferServiceStub]:
        ch = grpc.insecure_channel(self.target)
        return ch, pb_grpc.TransferServiceStub(ch)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample, e.g. metric('kvferry_resumes_total')."""
        key = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics_text().splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        raise KeyError(key)

    def wait_metric(self, name: str, labels: str, at_least: float, timeout: float = 10.0) -> float:
        """The sample once it reaches AT_LEAST (or its value at TIMEOUT). gRPC sends a status
        before the server's interceptor has counted the call, so a client that has its answer
        can still scrape the count from before it."""
        deadline = time.monotonic() + timeout
        while (value := self.metric(name, labels)) < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        return value

    def pool_info(self) -> pb.PoolInfo:
        ch, stub = self.stub()
        with ch:
            return stub.GetPoolInfo(pb.GetPoolInfoRequest(), timeout=5, metadata=self.call_metadata)

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

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            for reader in self.readers:  # the last lines are in ``output`` once this returns
                reader.join(5)


def _drain(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def launch(flags: dict[str, Any], credentials: grpc.ChannelCredentials | None = None,
           env: dict[str, str] | None = None) -> ServerProcess:
    """``kvferry serve`` with ``flags`` (names as in ServerConfig) on free ports, once SERVING.
    ``credentials``: what the health check connects with, for a TLS server."""
    argv = [sys.executable, "-m", "kvferry.server", "serve", "--port", "0", "--metrics-port", "0"]
    for k, v in flags.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    assert proc.stdout is not None
    started: dict[str, Any] = {}
    before: list[str] = []  # log lines ahead of "serving" (a fault-injection warning, say)
    while started.get("event") != "serving":
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"server did not start: {''.join(before)}{err}")
        before.append(line)
        started = json.loads(line)
    token_file = flags.get("admin_token_file") or flags.get("auth_token_file")
    md = (("authorization", f"Bearer {Path(token_file).read_text().strip()}"),) if token_file else ()
    srv = ServerProcess(proc, started["grpc_port"], started["metrics_port"], dict(flags), md, before)
    for stream in (proc.stdout, proc.stderr):
        reader = threading.Thread(target=_drain, args=(stream, srv.output), daemon=True)
        reader.start()
        srv.readers.append(reader)
    ch = (grpc.insecure_channel(srv.target) if credentials is None
          else grpc.secure_channel(srv.target, credentials))
    with ch:
        deadline = time.monotonic() + 30
        while True:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("server never reported SERVING")
            time.sleep(0.05)
    return srv

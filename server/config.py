"""Server configuration: one dataclass, filled from flags, each flag also a KVFERRY_* variable."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from kvferry.client.contract import (
    KEEPALIVE_S,
    KEEPALIVE_TIMEOUT_S,
    MESSAGE_BUDGET,
    MIN_PING_INTERVAL_S,
)
from kvferry.statemachine import Limits

if TYPE_CHECKING:
    import grpc



@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9400
    device: str = "cpu"
    num_blocks: int = 256
    block_tokens: int = 256
    row_bytes: int = 8192
    default_window_tokens: int = 4096
    bootstrap_timeout: float = 30.0
    stall_timeout: float = 60.0
    retention: float = 300.0
    lease_timeout: float = 30.0
    reconnect_grace: float = 2.0
    fence_timeout: float = 60.0
    shutdown_grace: float = 10.0
    keepalive: float = KEEPALIVE_S
    keepalive_timeout: float = KEEPALIVE_TIMEOUT_S
    keepalive_min_ping: float = MIN_PING_INTERVAL_S
    max_message_bytes: int = 16 * 1024 * 1024
    max_transfers: int = 10_000
    max_streams: int = 4_096
    max_metadata_bytes: int = 64 * 1024
    shm_dir: str = "/dev/shm"
    local_calls: bool = True
    mooncake: str = ""
    mooncake_host: str = ""
    mooncake_device: str = ""
    transport_plugins: str = ""
    auth_token_file: str = ""
    admin_token_file: str = ""
    require_transfer_secrets: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    faults: str = ""
    fault_seed: int = 0
    log_format: str = "json"

    def __post_init__(self) -> None:
        if not 0 < self.row_bytes <= MESSAGE_BUDGET:
            raise ValueError(f"row_bytes must be between 1 and {MESSAGE_BUDGET} (one row must "
                             f"fit a 4 MiB Read message), got {self.row_bytes}")
        if self.max_message_bytes < self.row_bytes + 1024:
            raise ValueError(f"max_message_bytes={self.max_message_bytes} cannot hold one row of "
                             f"{self.row_bytes} bytes")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must be >= 0")
        for name in ("keepalive", "keepalive_timeout", "keepalive_min_ping"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda:N', got {self.device!r}")
        if self.max_streams <= 0:
            raise ValueError(f"max_streams must be positive, got {self.max_streams}")
        parse_faults(self.faults)
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be json or text, got {self.log_format!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both, or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key too")
        if self.mooncake:
            if self.mooncake not in ("tcp", "rdma"):
                raise ValueError(f"mooncake must be tcp or rdma (or empty: off), got {self.mooncake!r}")
            if not self.mooncake_host and self.host in ("0.0.0.0", "::", ""):
                raise ValueError("mooncake needs mooncake_host: the address senders reach this host "
                                 f"at (--host is {self.host!r}, which names no one address)")
            engine = mooncake_transfer_timeout()
            if self.fence_timeout < engine:
                raise ValueError(
                    f"fence_timeout={self.fence_timeout:g}s is shorter than the Mooncake engine's "
                    f"transfer timeout ({engine:g}s, MC_TRANSFER_TIMEOUT): a write that timed out can "
                    f"still land that long after, so fence for at least {engine:g}s")
        status = self.max_metadata_bytes + 5 * self.num_blocks + STATUS_OVERHEAD
        if status > MESSAGE_BUDGET:
            raise ValueError(f"a transfer status could reach {status} bytes (max_metadata_bytes="
                             f"{self.max_metadata_bytes} plus up to 5 bytes per block of "
                             f"{self.num_blocks}), more than a default client receives "
                             f"({MESSAGE_BUDGET}): lower max_metadata_bytes or num_blocks")
        self.limits()  # the core's own checks, at start-up rather than at first use

    def limits(self) -> Limits:
        return Limits(num_blocks=self.num_blocks, block_tokens=self.block_tokens,
                      default_window_tokens=self.default_window_tokens,
                      bootstrap_timeout=self.bootstrap_timeout, stall_timeout=self.stall_timeout,
                      retention=self.retention, lease_timeout=self.lease_timeout,
                      reconnect_grace=self.reconnect_grace,
                      max_transfers=self.max_transfers, fence_timeout=self.fence_timeout,
                      max_metadata_bytes=self.max_metadata_bytes)

    def read_auth_token(self) -> str | None:
        return _read_token("auth_token_file", self.auth_token_file)

    def read_admin_token(self) -> str | None:
        return _read_token("admin_token_file", self.admin_token_file)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        import grpc

        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        ca = read(self.tls_client_ca) if self.tls_client_ca else None
        return grpc.ssl_server_credentials([(read(self.tls_key), read(self.tls_cert))],
                                           root_certificates=ca, require_client_auth=ca is not None)


# A status besides its metadata and block indices: ids, reasons (bounded by the core) and numbers.
STATUS_OVERHEAD = 8 * 1024


def _read_token(name: str, path: str) -> str | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"{name} {path} is empty")
    return token


def mooncake_transfer_timeout() -> float:
    """How long the Mooncake engine lets a write run before it reports a failure (which does not
    cancel it): MC_TRANSFER_TIMEOUT seconds, 30 by default."""
    return float(os.environ.get("MC_TRANSFER_TIMEOUT", "30"))


_HELP: dict[str, str] = {
    "host": "address to bind gRPC on (0.0.0.0 in a container)",
    "port": "gRPC port; 0 picks a free one (printed at start)",
    "metrics_port": "HTTP port of /metrics for Prometheus; 0 picks a free one",
    "device": "where the block pool lives: cpu, or cuda:N for GPU N",
    "num_blocks": "blocks in the pool",
    "block_tokens": "rows (tokens) per block",
    "row_bytes": "bytes per row: hidden_size x dtype bytes plus any per-token extras",
    "default_window_tokens": "window used when Open asks for window_tokens=0",
    "bootstrap_timeout": "seconds a transfer may wait for its other side (sender or receiver)",
    "stall_timeout": "seconds a live transfer may go without progress before it FAILs",
    "retention": "seconds a finished transfer stays readable before it is released for you",
    "lease_timeout": "seconds a receiver may go without a call (Poll, Watch, Read, Resume; an open "
                     "Watch counts) before its transfer FAILs as lease_expired",
    "reconnect_grace": "seconds a side that left early has to call again before its transfer "
                       "FAILs: sender_gone when the sender's Push or Attach ended before the last "
                       "row, receiver_gone when a Watch opened until_done ended before the "
                       "transfer (cancelled, or its connection lost)",
    "fence_timeout": "seconds blocks lent to a one-sided writer stay fenced after their transfer "
                     "failed, unless the writer commits them or detaches first",
    "shm_dir": "memory-backed directory holding a CPU pool, shared with same-host senders "
               "(a Memory emptyDir shared by the pods in Kubernetes)",
    "local_calls": "offer clients on this host the service's calls over a Unix socket in "
                   "--shm-dir (mode 0600), cheaper than gRPC; they take it by themselves and fall "
                   "back to gRPC (off with mTLS: those calls carry no client certificate)",
    "mooncake": "offer one-sided writes from other hosts through the Mooncake Transfer Engine over "
                "tcp or rdma (needs kvferry[mooncake]); empty: off",
    "mooncake_host": "address senders reach this host's engine at (default: --host)",
    "mooncake_device": "NICs the engine may use, comma-separated (rdma; empty: all)",
    "transport_plugins": "server halves of transports of your own, comma-separated MODULE:FACTORY "
                         "(see kvferry.server.transports); empty: none",
    "keepalive": "seconds after which the server pings a client's connection (a partition is "
                 "known within keepalive + keepalive_timeout; clients ping at their own interval)",
    "keepalive_timeout": "seconds a ping may go unanswered before the connection is closed and "
                         "every call on it fails",
    "keepalive_min_ping": "the shortest interval at which clients may ping (more often: GOAWAY "
                          "too_many_pings); keep it below every client's keepalive",
    "shutdown_grace": "seconds in-flight calls get to finish after SIGTERM",
    "max_message_bytes": "largest Push message accepted (bigger: RESOURCE_EXHAUSTED)",
    "max_transfers": "transfers held at once (live or unreleased); Open beyond: RESOURCE_EXHAUSTED",
    "max_streams": "concurrent Push, Watch and Read streams; beyond: RESOURCE_EXHAUSTED",
    "max_metadata_bytes": "largest sender metadata accepted (bigger: INVALID_ARGUMENT); it is held "
                          "and echoed in every status of its transfer",
    "auth_token_file": "file holding a bearer token every call must carry as 'authorization: "
                       "Bearer <token>' (health checks exempt); empty: no auth",
    "admin_token_file": "file holding the token operator calls (List, Stats; kvferry status/top) "
                        "must carry instead; it passes wherever the service token does; empty: "
                        "operator calls need only the service token",
    "require_transfer_secrets": "refuse Open and senders that carry no per-transfer secret "
                                "(metadata kvferry-transfer-secret / kvferry-sender-secret); "
                                "transfers bound to a secret are protected either way",
    "tls_cert": "PEM certificate chain: serve gRPC over TLS",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mTLS)",
    "faults": "fault injection for tests and staging, off when empty: comma-separated "
              "METHOD:fail:RATE (answer UNAVAILABLE) or METHOD:delay=SECONDS:RATE, e.g. "
              "'Resume:fail:0.2,Push:delay=0.05:1'",
    "fault_seed": "seed of the fault injector's random choices (0: random)",
    "log_format": "json (one object per line, for log pipelines) or text (for people); both on "
                  "stdout",
}


def env_name(field: str) -> str:
    return "KVFERRY_" + field.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    for f in fields(ServerConfig):
        default = getattr(defaults, f.name)
        kind: Callable[[str], Any] = _flag_bool if isinstance(default, bool) else type(default)
        env = os.environ.get(env_name(f.name))
        if env is not None:
            try:
                default = kind(env)
            except ValueError:  # reported by ``from_namespace`` for serve, not by every command
                default = BadEnv(env_name(f.name), env, kind)
        extra: dict[str, Any] = {"nargs": "?", "const": True} if isinstance(default, bool) else {}
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=default,
            help=f"{_HELP[f.name]} (default: %(default)s; env {env_name(f.name)})", **extra,
        )


class BadEnv:
    """An environment variable whose value is not of its flag's type."""

    def __init__(self, name: str, value: str, kind: Callable[[str], Any]) -> None:
        self.name, self.value, self.kind = name, value, kind

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}"

    def error(self) -> str:
        want = {int: "an integer", float: "a number", _flag_bool: "true or false"}.get(self.kind, "text")
        return (f"environment variable {self.name}={self.value!r} is not {want}: set it to "
                f"{want}, or unset it")


def _flag_bool(text: str) -> bool:
    """A boolean flag's value: ``--flag`` alone, or ``--flag=true|false`` (also 1/0, yes/no)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean: use true or false")


def from_namespace(ns: argparse.Namespace) -> ServerConfig:
    """The configuration the parsed flags say; ValueError naming the flag (or the environment
    variable) and what to do when a value is wrong."""
    values = {f.name: getattr(ns, f.name) for f in fields(ServerConfig)}
    for value in values.values():
        if isinstance(value, BadEnv):
            raise ValueError(value.error())
    try:
        return ServerConfig(**values)
    except ValueError as e:
        raise ValueError(flag_names(str(e))) from None


def flag_names(message: str) -> str:
    """``message`` with the configuration's field names written as the flags people type."""
    for f in sorted(fields(ServerConfig), key=lambda f: -len(f.name)):
        message = re.sub(rf"(?<![\w-]){f.name}(?![\w-])", "--" + f.name.replace("_", "-"), message)
    return message


FAULT_ACTIONS = ("fail", "delay")


def parse_faults(spec: str) -> list[tuple[str, str, float, float]]:
    """``METHOD:fail:RATE`` / ``METHOD:delay=SECONDS:RATE`` items -> (method, action, seconds, rate)."""
    out = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"fault {item!r}: expected METHOD:fail:RATE or METHOD:delay=SECONDS:RATE")
        method, action, rate_s = parts
        seconds = 0.0
        if action.startswith("delay="):
            action, seconds = "delay", float(action.removeprefix("delay="))
        if action not in FAULT_ACTIONS:
            raise ValueError(f"fault {item!r}: action must be fail or delay=SECONDS")
        rate = float(rate_s)
        if not 0 <= rate <= 1:
            raise ValueError(f"fault {item!r}: rate must be between 0 and 1")
        out.append((method, action, seconds, rate))
    return out

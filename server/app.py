"""Assemble and run one kvferry server: pool, core, gRPC, health, reflection, metrics, timers."""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from kvferry.server import logs, reflection_v1
from kvferry.server.auth import BearerTokens
from kvferry.server.config import ServerConfig, flag_names, parse_faults
from kvferry.server.faults import FaultPlan
from kvferry.server.grpc_metrics import GrpcServerMetrics
from kvferry.server.http_endpoint import Health, HttpEndpoint
from kvferry.server.listener import ShellListener
from kvferry.server.local_calls import LocalCalls
from kvferry.server.metrics import CoordinatorCollector, TransferHistograms
from kvferry.server.mooncake_endpoint import MooncakeEndpoint
from kvferry.server.notifier import ChangeNotifier
from kvferry.server.pipeline import Pipeline
from kvferry.server.pools import open_storage
from kvferry.server.service import TransferService
from kvferry.server.status_cache import StatusCache
from kvferry.server.storage import BlockStorage
from kvferry.server.transfer_secrets import SecretBook
from kvferry.server.transports import ServerTransport, load_plugins
from kvferry.statemachine import Coordinator, Outcome
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TransferService"].full_name
READINESS_SERVICES = ("", SERVICE_NAME)
LIVENESS_SERVICE = "liveness"


@dataclass
class Server:
    config: ServerConfig
    coord: Coordinator
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    grpc_port: int
    metrics_port: int
    listener: ShellListener
    storage: BlockStorage
    transports: list[ServerTransport]
    local: LocalCalls | None
    http: HttpEndpoint = field(repr=False)
    probes: Health = field(repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def run_timers(self) -> None:
        """Apply timeouts as they fall due: sleep until the earliest deadline, or until the core
        schedules an earlier one (a transfer opened meanwhile, say)."""
        wakeup = self.listener.timer_wakeup
        while not self._stopping.is_set():
            wakeup.clear()
            now = time.monotonic()
            self.coord.expire(now)
            nxt = self.coord.next_deadline()
            delay = 60.0 if nxt is None else max(0.0, nxt - now)
            try:
                await asyncio.wait_for(wakeup.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        """Drain: NOT_SERVING, refuse new Opens, give in-flight calls the grace, fail the rest."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.listener.timer_wakeup.set()
        self.coord.drain()
        # Readiness ("" and the service) goes NOT_SERVING so no new work comes; liveness stays
        # SERVING so the kubelet does not restart a pod that is draining on purpose.
        self.probes.ready = False
        for name in READINESS_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = self.config.shutdown_grace
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.coord.live_count:
            await asyncio.sleep(0.05)
        left = self.coord.fail_all(Outcome.SHUTDOWN, "shutdown: the server stopped before the "
                                   "transfer finished", time.monotonic())
        if left:
            logs.event(logging.WARNING, "shutdown_failed_transfers", transfers=left, grace_seconds=grace)
        await self.grpc_server.stop(max(0.0, deadline - time.monotonic()) or 0.5)
        if self.local is not None:
            await self.local.close()
        self.http.shutdown()
        for transport in self.transports:
            transport.close()
        self.storage.close()


async def start(config: ServerConfig) -> Server:
    storage = open_storage(config.num_blocks, config.block_tokens, config.row_bytes, config.device,
                           config.max_message_bytes, config.shm_dir)
    transports: list[ServerTransport] = []
    try:
        if config.mooncake:
            transports.append(MooncakeEndpoint(config.mooncake, config.mooncake_host or config.host,
                                               config.mooncake_device, storage.region()))
        try:
            transports += load_plugins(config.transport_plugins, config, storage)
        except ValueError as e:
            raise StartupError(flag_names(str(e)), "fix --transport-plugins") from None
        return await _start(config, storage, transports)
    except BaseException:
        for transport in transports:
            transport.close()
        storage.close()  # a server that never served leaves no shared-memory file behind
        raise


async def _start(config: ServerConfig, storage: BlockStorage,
                 transports: list[ServerTransport]) -> Server:
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)  # process_*, python_info, python_gc_*: as a default registry has
    build = Gauge("kvferry_build_info", "The running kvferry (value is always 1).",
                  ["version", "python", "grpc"], registry=registry)
    build.labels(version(), platform.python_version(), grpc.__version__).set(1)
    notifier = ChangeNotifier()
    statuses = StatusCache()
    secrets = SecretBook(config.require_transfer_secrets)
    listener = ShellListener(notifier, TransferHistograms(registry), statuses, storage, secrets)
    # Incarnations count up from the start time in microseconds: apart across restarts.
    coord = Coordinator(config.limits(), listener, first_incarnation=time.time_ns() // 1000)
    service = TransferService(config, coord, storage, notifier, statuses, secrets, transports,
                              listener.endings.recent_failures)
    registry.register(CoordinatorCollector(coord, config.device, config.row_bytes,
                                           lambda: service.senders_waiting))

    token = config.read_auth_token()
    admin = config.read_admin_token()
    faults = parse_faults(config.faults)
    if faults:
        logs.event(logging.WARNING, "fault_injection_on", faults=config.faults)
    pipeline = Pipeline(GrpcServerMetrics(registry),
                        BearerTokens(token, admin) if token is not None or admin is not None else None,
                        FaultPlan(faults, config.fault_seed) if faults else None)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # A client gone without a word (a partition, a dead host) is found by pinging it: its
        # connection closes within keepalive + keepalive_timeout and its streams end with it.
        # Clients' own pings are accepted down to keepalive_min_ping, never counted as strikes
        # above that, with or without calls in flight (see client.contract).
        ("grpc.keepalive_time_ms", int(config.keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout * 1000)),
        # gRPC 1.6x+ times a ping out with this (60 s by default), not the above.
        ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A stream on which the server sends nothing (a Push waiting for the sender's next rows)
        # is "without data": pings on it are throttled to this interval (5 min by default), so
        # a sender cut off mid-Push would go unnoticed. Ping at the keepalive interval anyway.
        ("grpc.http2.min_time_between_pings_ms", int(config.keepalive * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.keepalive_min_ping * 1000)),
        ("grpc.so_reuseport", 0),
        # gRPC core cancels calls that wait for the application beyond 1000 by default; a burst
        # of Opens from a large batch must queue instead.
        ("grpc.server.max_pending_requests", 4 * config.max_streams),
        ("grpc.server.max_pending_requests_hard_limit", 8 * config.max_streams),
    ])
    pipeline.install(server, pb_grpc.add_TransferServiceServicer_to_server,
                     service,
                     decoders=TransferService.DECODERS, raw_responses=TransferService.RAW_RESPONSES)
    health_servicer = health.aio.HealthServicer()
    pipeline.install(server, health_pb2_grpc.add_HealthServicer_to_server, health_servicer)
    reflector = reflection.aio.ReflectionServicer(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, reflection_v1.SERVICE_NAME))
    pipeline.install(server, reflection_pb2_grpc.add_ServerReflectionServicer_to_server, reflector)
    pipeline.install(server, reflection_v1.add_servicer_to_server, reflector)
    credentials = config.server_credentials()
    address = f"{config.host}:{config.port}"
    check_bindable(config.host, config.port, "--port")
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen for gRPC on {address}",
                           "the port is taken, or the address is not one of this host's: pick a "
                           "free --port (0: any) or this host's --host")
    probes = Health()
    check_bindable(config.host, config.metrics_port, "--metrics-port")
    try:
        http = HttpEndpoint(config.host, config.metrics_port, registry, probes)
    except OSError as e:
        raise StartupError(f"cannot listen for HTTP (/metrics) on {config.host}:{config.metrics_port} "
                           f"({e.strerror})", "pick a free --metrics-port (0: any)") from None
    # The socket first: a PoolInfo answered over gRPC must name it from the first call on.
    local = await _local_calls(config, pipeline, service)
    if local is not None:
        Gauge("kvferry_local_calls_connections", "Clients on this host connected to the "
              "same-host calls' socket (--local-calls).", registry=registry
              ).set_function(lambda: local.connections)
    try:
        await server.start()
    except BaseException:
        if local is not None:
            await local.close()
        raise
    for name in (*READINESS_SERVICES, LIVENESS_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    probes.ready = True
    return Server(config, coord, server, health_servicer, port, http.port, listener, storage,
                  transports, local, http, probes)


async def _local_calls(config: ServerConfig, pipeline: Pipeline,
                       service: TransferService) -> LocalCalls | None:
    """The same-host calls' socket, where offered. Not with mTLS: a call there carries no client
    certificate. A directory that takes no socket only loses clients the faster path."""
    if not config.local_calls or config.tls_client_ca:
        return None
    prefix = f"/{SERVICE_NAME}/"
    local = LocalCalls({k: h for k, h in pipeline.handlers.items() if k.startswith(prefix)})
    try:
        service.local_calls_path = await local.start(config.shm_dir)
    except OSError as e:
        logs.event(logging.WARNING, "local_calls_unavailable", directory=config.shm_dir,
                   error=str(e), todo="clients on this host use gRPC; give --shm-dir a "
                   "writable directory, or --local-calls=false to silence this")
        return None
    return local


async def serve(config: ServerConfig) -> None:
    srv = await start(config)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    # Scripts and tests learn the ports from this line (port 0 picks free ones).
    logs.event(logging.INFO, "serving", grpc_port=srv.grpc_port, metrics_port=srv.metrics_port,
               version=version(), config=asdict(config))
    timers = asyncio.create_task(srv.run_timers())
    await stop_requested.wait()
    logs.event(logging.INFO, "stopping", grace_seconds=config.shutdown_grace)
    await srv.stop()
    await timers
    logs.event(logging.INFO, "stopped")


def check_bindable(host: str, port: int, flag: str) -> None:
    """StartupError saying what to do if ``host``:``port`` cannot be listened on (asked of the
    kernel before gRPC is, whose own failure says only that it failed, on stderr)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError(f"--host {host!r} does not resolve ({e.strerror})",
                           "give an address or name of this host (0.0.0.0: all of them)") from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As gRPC binds: a port whose last server died with clients connected has their
        # connections in TIME_WAIT, and a restarted server must still get it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartupError(f"port {port} on {host} is taken",
                                   f"pick a free {flag} (0: any free one)") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise StartupError(f"--host {host!r} is not an address of this host",
                                   "give one of this host's addresses (0.0.0.0: all of them)") from None
            raise StartupError(f"cannot listen on {host}:{port} ({e.strerror})",
                               f"check --host and {flag}") from None


class StartupError(Exception):
    """The server cannot start: ``what`` went wrong, ``todo`` says what to do about it."""

    def __init__(self, what: str, todo: str) -> None:
        super().__init__(f"{what}: {todo}")
        self.what, self.todo = what, todo


def version() -> str:
    try:
        return importlib.metadata.version("kvferry")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "0+unknown"


def run(config: ServerConfig) -> int:
    logs.setup(config.log_format)
    run_loop(serve(config))
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (KVFERRY_EVENT_LOOP=asyncio to opt out), else asyncio's own loop."""
    if os.environ.get("KVFERRY_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)

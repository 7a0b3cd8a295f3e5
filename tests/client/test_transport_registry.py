"""Transports are plug-ins: a transport defined in one test module (tests/support/
socket_transport.py), its server half loaded by the real server process from a flag, moves a
windowed transfer's bytes; and the built-in choice (auto, refusals) comes from the registry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kvferry.client import AsyncClient, Client
from kvferry.client.contract import TransportUnavailable
from kvferry.client.transports import TRANSPORTS, Registry
from kvferry.client.transports.grpc import GRPC
from kvferry.client.transports.shm import SHM

from support.kvserver import ServerProcess, start_server
from support.socket_transport import SocketTransport

TESTS = str(Path(__file__).resolve().parents[1])
PLUGIN = "support.socket_transport:server_half"


@pytest.fixture(scope="module")
def plugged() -> Iterator[ServerProcess]:
    srv = start_server(transport_plugins=PLUGIN, env={"PYTHONPATH": TESTS})
    yield srv
    assert srv.stop() == 0


def test_a_transport_of_ones_own_moves_a_windowed_transfer(plugged: ServerProcess) -> None:
    info = plugged.pool_info()
    assert list(info.transports) == ["grpc", "shm", "socket"]
    assert info.transport_params["socket"].values["path"]
    rows = np.random.default_rng(7).integers(0, 256, (200, 64), dtype=np.uint8)  # 4 windows
    mine = TRANSPORTS.replaced(SocketTransport())
    with Client(plugged.target) as rx, Client(plugged.target, transports=mine) as tx:
        sent: list[object] = []
        th = threading.Thread(target=lambda: sent.append(tx.send("plug", rows, transport="socket")))
        th.start()
        got = b"".join(bytes(w.data) for w in rx.receive("plug", 64, transport="grpc"))
        th.join(30)
    assert got == rows.tobytes()
    assert sent and sent[0].sent_tokens == 200  # type: ignore[attr-defined]
    # The rows went through the socket: an Attach, a Commit per window, and no Push at all.
    assert plugged.wait_metric("grpc_server_handled_total", _labels("Attach", "server_stream"), 1) >= 1
    assert plugged.wait_metric("grpc_server_handled_total", _labels("Commit", "unary"), 4) >= 4
    assert plugged.metric("grpc_server_started_total", _labels("Push", "client_stream")) == 0
    plugged.assert_pool_free()


def _labels(method: str, kind: str) -> str:
    code = 'grpc_code="OK",' if kind != "client_stream" else ""
    return (f'{code}grpc_method="{method}",grpc_service="kvferry.v1.TransferService",'
            f'grpc_type="{kind}"')


def test_auto_takes_a_registered_transport_the_server_offers(plugged: ServerProcess) -> None:
    only_socket = Registry([SocketTransport()], fallback=GRPC)
    rows = np.arange(16 * 64, dtype=np.uint8).reshape(16, 64)
    with Client(plugged.target) as rx, Client(plugged.target, transports=only_socket) as tx:
        rx.open("auto-plug", 16)
        status = tx.send("auto-plug", rows)
        windows = list(rx.receive("auto-plug", open=False, incarnation=status.incarnation,
                                  transport="grpc"))
    assert b"".join(bytes(w.data) for w in windows) == rows.tobytes()


def test_a_server_without_the_plug_in_refuses_it_by_name(seed: ServerProcess) -> None:
    mine = TRANSPORTS.replaced(SocketTransport())
    with Client(seed.target, transports=mine) as tx:
        with pytest.raises(TransportUnavailable, match=r"offers .*'socket'"):
            tx.send("nowhere", b"\0" * 64, transport="socket")
        with pytest.raises(ValueError, match="choose one of auto, grpc, cuda-ipc, shm, mooncake, socket"):
            tx.send("nowhere", b"\0" * 64, transport="carrier-pigeon")


def test_a_bad_plug_in_stops_the_server_at_start_with_the_flag_named() -> None:
    with pytest.raises(RuntimeError, match=r"--transport-plugins item 'no_such_module:x': cannot import"):
        start_server(transport_plugins="no_such_module:x")


def test_the_registry_orders_auto_and_says_who_can_read() -> None:
    assert [t.name for t in TRANSPORTS.choices("auto")] == ["cuda-ipc", "shm", "mooncake", "grpc"]
    assert [t.name for t in TRANSPORTS.choices("auto", reads=True)] == ["shm", "grpc"]
    assert [t.name for t in TRANSPORTS.choices("auto", maps=True)] == ["cuda-ipc", "shm"]
    with pytest.raises(ValueError, match="'mooncake' cannot read windows; these can: grpc, shm"):
        TRANSPORTS.choices("mooncake", reads=True)
    copy = TRANSPORTS.replaced(SocketTransport())
    assert "socket" in copy.names() and "socket" not in TRANSPORTS.names()
    assert Registry([SHM], fallback=GRPC).names() == ("auto", "grpc", "shm")


def test_the_async_client_takes_a_registry_too(plugged: ServerProcess) -> None:
    rows = np.arange(24 * 64, dtype=np.uint8).reshape(24, 64)
    commits = plugged.metric("grpc_server_handled_total", _labels("Commit", "unary"))

    async def main() -> bytes:
        async with AsyncClient(plugged.target) as rx, \
                AsyncClient(plugged.target, transports=TRANSPORTS.replaced(SocketTransport())) as tx:
            send = asyncio.create_task(tx.send("async-plug", rows, transport="socket"))
            got = b"".join([bytes(w.data) async for w in rx.receive("async-plug", 8, transport="grpc")])
            await send
            return got

    assert asyncio.run(main()) == rows.tobytes()
    # Three 8-row windows, each committed through the plug-in's link.
    assert plugged.wait_metric("grpc_server_handled_total", _labels("Commit", "unary"),
                               commits + 3) >= commits + 3

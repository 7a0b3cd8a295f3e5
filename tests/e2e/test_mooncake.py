"""Transport "mooncake": one-sided writes through the real Mooncake Transfer Engine over tcp,
between processes on loopback and between two network namespaces (two "hosts"), and what happens
when a writer dies, the server dies, or the engine cannot reach its peer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kvferry.client import AsyncClient, TransferFailed
from kvferry.v1 import transfer_pb2 as pb

import support
from support.kvserver import ServerProcess, start_server, wait_sent, wait_until

pytest.importorskip("mooncake.engine", reason="needs kvferry[mooncake] and Debian's libibverbs1")

AGENTS = str(Path(support.__file__).with_name("mooncake_agents.py"))
ROW = 64
PUSH = 'grpc_method="Push",grpc_service="kvferry.v1.TransferService",grpc_type="client_stream"'
# The engine's own timeout, short here, so that the fence (which must outlast it) can be short too.
ENGINE = {"MC_TRANSFER_TIMEOUT": "2"}


def payload(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, ROW), dtype=np.uint8)


@pytest.fixture(scope="module")
def mc() -> Iterator[ServerProcess]:
    srv = start_server(mooncake="tcp", mooncake_host="127.0.0.1", fence_timeout=2, env=ENGINE)
    yield srv
    assert srv.stop() == 0


def test_pool_info_offers_mooncake(mc: ServerProcess) -> None:
    info = mc.pool_info()
    assert "mooncake" in info.transports and info.mooncake_protocol == "tcp"
    assert info.mooncake_session.startswith("127.0.0.1:") and info.mooncake_base_address


def test_rows_travel_through_the_engine_and_none_through_grpc(mc: ServerProcess) -> None:
    data = payload(300, seed=1)
    pushes = mc.metric("grpc_server_msg_received_total", PUSH)

    async def main() -> tuple[bytes, pb.TransferStatus]:
        async with AsyncClient(mc.target) as rx, AsyncClient(mc.target) as tx:
            send = asyncio.create_task(tx.send("mc", data, transport="mooncake"))
            got = [w.data async for w in rx.receive("mc", 64, transport="grpc")]
            return b"".join(got), await send

    got, status = asyncio.run(main())
    assert got == data.tobytes() and status.state == pb.TRANSFER_STATE_SUCCESS
    assert mc.metric("grpc_server_msg_received_total", PUSH) == pushes
    mc.assert_pool_free()


def test_a_fence_shorter_than_the_engine_timeout_is_refused_at_start() -> None:
    r = subprocess.run([sys.executable, "-m", "kvferry.server", "serve", "--port", "0",
                        "--metrics-port", "0", "--mooncake", "tcp", "--fence-timeout", "5"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MC_TRANSFER_TIMEOUT": "30"})
    assert r.returncode == 2
    assert "shorter than the Mooncake engine's transfer timeout (30s" in r.stderr


def test_an_engine_that_cannot_reach_its_peer_fails_the_transfer_naming_the_sender(
        mc: ServerProcess) -> None:
    """The sender's engine is pointed at a port nobody listens on: the write fails, the library
    fails the transfer saying so, and does not Detach (a failed write may still land): the fence
    holds until its timeout."""
    async def main() -> str:
        async with AsyncClient(mc.target) as rx, AsyncClient(mc.target) as tx:
            await rx.stub.Open(pb.OpenRequest(transfer_id="unreachable", window_tokens=64))
            info = await tx.pool_info()
            info.mooncake_session = "127.0.0.1:1"  # the engine there is unreachable
            with pytest.raises(TransferFailed) as e:
                await tx.send("unreachable", payload(128), transport="mooncake")
            return e.value.reason

    reason = asyncio.run(main())
    assert reason.startswith("sender: the Mooncake write") and "127.0.0.1:1" in reason
    ch, stub = mc.stub()
    with ch:
        st = stub.Poll(pb.PollRequest(transfer_id="unreachable"))
        assert st.state == pb.TRANSFER_STATE_FAILED and "sender: the Mooncake write" in st.failure_reason
        assert mc.pool_info().quarantined_blocks > 0  # not detached: fenced until the timeout
        before = mc.metric("kvferry_fences_lifted_total", 'by="timeout"')
        wait_until(lambda: mc.metric("kvferry_fences_lifted_total", 'by="timeout"') == before + 1,
                   "the fence timeout lifting the fence")
        stub.Release(pb.ReleaseRequest(transfer_id="unreachable"))
    mc.assert_pool_free()


def test_a_sender_killed_mid_write_fails_the_transfer_naming_the_sender() -> None:
    srv = start_server(mooncake="tcp", mooncake_host="127.0.0.1", fence_timeout=2, env=ENGINE,
                       row_bytes=256, stall_timeout=300, lease_timeout=300)
    try:
        ch, stub = srv.stub()
        with ch:
            stub.Open(pb.OpenRequest(transfer_id="killed", window_tokens=64))
            agent = subprocess.Popen([sys.executable, AGENTS, "stuck-writer", srv.target, "killed",
                                      "128"], stdout=subprocess.PIPE, text=True)
            assert agent.stdout is not None
            writing = json.loads(agent.stdout.readline())  # granted, the write under way
            assert "writing" in writing
            agent.send_signal(signal.SIGKILL)
            agent.wait(30)
            # Its Attach stream ends with it: after the reconnect grace, the transfer fails
            # naming the sender (the stall timeout is far away).
            wait_until(lambda: stub.Poll(pb.PollRequest(transfer_id="killed")).state
                       == pb.TRANSFER_STATE_FAILED, "the reconnect grace", within=60)
            st = stub.Poll(pb.PollRequest(transfer_id="killed"))
            assert "sender_gone" in st.failure_reason and "0 of 128 tokens" in st.failure_reason
            wait_until(lambda: srv.metric("kvferry_fences_lifted_total", 'by="timeout"') == 1,
                       "the fence timeout", within=60)
            stub.Release(pb.ReleaseRequest(transfer_id="killed"))
        srv.assert_pool_free()
    finally:
        assert srv.stop() == 0


def test_a_server_killed_mid_transfer_ends_the_send_with_a_clear_error() -> None:
    srv = start_server(mooncake="tcp", mooncake_host="127.0.0.1", fence_timeout=2, env=ENGINE)
    killed = False

    async def main() -> BaseException:
        nonlocal killed
        async with AsyncClient(srv.target) as rx, AsyncClient(srv.target) as tx:
            await rx.stub.Open(pb.OpenRequest(transfer_id="orphan", window_tokens=64))
            send = asyncio.create_task(tx.send("orphan", payload(640), transport="mooncake"))
            await wait_sent(rx, "orphan", 64, "the first window through the engine")
            srv.proc.send_signal(signal.SIGKILL)  # the receiver's server dies mid-transfer
            killed = True
            try:
                await asyncio.wait_for(send, 60)
            except BaseException as e:
                return e
            raise AssertionError("the send succeeded against a dead server")

    try:
        err = asyncio.run(main())
    finally:
        if not killed:
            srv.stop()
    assert isinstance(err, TransferFailed), repr(err)
    assert "server" in err.reason and "unreachable" in err.reason, err.reason


# -- two hosts: network namespaces joined by a veth pair --------------------------------------


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 100000}"
    a, b = f"kvfa{tag}", f"kvfb{tag}"
    subnet = 16 + os.getpid() % 200  # 10.213.N.0/24 exists only inside these two namespaces
    addr_a, addr_b = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    cmds = [["ip", "netns", "add", a], ["ip", "netns", "add", b],
            ["ip", "link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}"],
            ["ip", "link", "set", f"va{tag}", "netns", a], ["ip", "link", "set", f"vb{tag}", "netns", b],
            ["ip", "-n", a, "addr", "add", f"{addr_a}/24", "dev", f"va{tag}"],
            ["ip", "-n", b, "addr", "add", f"{addr_b}/24", "dev", f"vb{tag}"],
            ["ip", "-n", a, "link", "set", f"va{tag}", "up"], ["ip", "-n", b, "link", "set", f"vb{tag}", "up"],
            ["ip", "-n", a, "link", "set", "lo", "up"], ["ip", "-n", b, "link", "set", "lo", "up"]]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield a, b, addr_a
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_transfer_between_two_hosts_moves_through_mooncake_with_auto(
        two_hosts: tuple[str, str, str]) -> None:
    ns_a, ns_b, addr_a = two_hosts
    total, window = 2000, 256
    host_a = subprocess.Popen(["ip", "netns", "exec", ns_a, sys.executable, AGENTS, "host-a",
                               addr_a, str(total), str(window)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert host_a.stdout is not None
        line = host_a.stdout.readline()
        assert line, host_a.stderr.read() if host_a.stderr else ""
        target = json.loads(line)["target"]
        sent = subprocess.run(["ip", "netns", "exec", ns_b, sys.executable, AGENTS, "sender", target,
                               "cross", str(total)], capture_output=True, text=True, timeout=120)
        assert json.loads(sent.stdout.strip().splitlines()[-1]) == {"state": "TRANSFER_STATE_SUCCESS"}, \
            sent.stderr
        result = json.loads(host_a.stdout.readline())
    finally:
        host_a.wait(60) if host_a.poll() is None else None
    want = np.random.default_rng(total).integers(0, 256, (total, 256), dtype=np.uint8)
    assert result["sha"] == hashlib.sha256(want.tobytes()).hexdigest()
    assert result["transports"] == ["grpc", "shm", "mooncake"]
    # auto chose the engine: the other "host" cannot map shared memory, and no row came by Push.
    assert result["push_messages"] == 0 and result["attach_ok"] == 1


"""Same-host calls: the service's calls over the server's Unix socket (``--local-calls``), taken
by the client library by itself on the server's host. They must answer exactly as gRPC does,
refuse what gRPC refuses (a forged record changes nothing), and make a dead peer known as fast
as a reset gRPC stream."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from kvferry.client import AsyncClient, Client, KvferryError, TransferFailed
from kvferry.client.contract import TransportUnavailable
from kvferry.client.frames import CALL, END, MESSAGE, decode_end, encode_call, frame
from kvferry.client.secrets import new_secret, receiver_metadata, sender_metadata
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, start_server, wait_until

ROW = 64
CONTROLS = ["grpc", "local"]
SVC = "/kvferry.v1.TransferService/"


def payload(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, ROW), dtype=np.uint8)


@pytest.fixture
def graceful(shm_dir: str) -> Iterator[ServerProcess]:
    """A dead side is given 0.5 s to come back; the stall and lease timeouts are far longer, so
    a failure within seconds can only be the reconnect grace after a closed connection."""
    srv = start_server(shm_dir=shm_dir, reconnect_grace=0.5, stall_timeout=300,
                       lease_timeout=300, retention=1)
    yield srv
    srv.assert_pool_free(timeout=30)
    assert srv.stop() == 0


def connections(srv: ServerProcess) -> float:
    return srv.metric("kvferry_local_calls_connections")


def test_a_transfer_takes_the_socket_by_itself_and_grpc_when_told(seed: ServerProcess) -> None:
    info = seed.pool_info()
    assert info.local_calls_path, "the server offers its socket"
    mode = os.stat(info.local_calls_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    data = payload(200, seed=1)
    before = connections(seed)

    async def transfer(control: str) -> tuple[bytes, float]:
        async with AsyncClient(seed.target, control=control) as rx, \
                AsyncClient(seed.target, control=control) as tx:
            await rx.pool_info()
            await tx.pool_info()
            connected = connections(seed)
            send = asyncio.create_task(tx.send(f"lc-{control}", data))
            got = [bytes(w.data) async for w in rx.receive(f"lc-{control}", 64)]
            await send
        return b"".join(got), connected

    for control, more in (("grpc", 0), ("auto", 2), ("local", 2)):
        got, connected = asyncio.run(transfer(control))
        assert got == data.tobytes(), control
        assert connected == before + more, control
        wait_until(lambda: connections(seed) == before, "the clients' connections closed")
    # Calls over the socket are counted as gRPC's are, by the same pipeline.
    assert seed.metric("grpc_server_handled_total", 'grpc_code="OK",grpc_method="Commit",'
                       'grpc_service="kvferry.v1.TransferService",grpc_type="unary"') >= 12
    seed.assert_pool_free()


def refusals(target: str, control: str) -> list[tuple[str, str, str]]:
    """What each refused call raised: (type, reason, message)."""
    secret = new_secret()
    out: list[tuple[str, str, str]] = []

    async def main() -> None:
        async with AsyncClient(target, control=control) as c:
            await c.pool_info()
            await c.open(f"locked-{control}", 16, secret=secret)
            for call in (
                c.poll("never-opened"),
                c.poll("bad id\n"),
                c.abort(f"locked-{control}", "no secret"),
                c.poll(f"locked-{control}", secret=new_secret()),
                c.release(f"locked-{control}", secret=secret, incarnation=1),
            ):
                try:
                    await call
                    out.append(("no error", "", ""))
                except KvferryError as e:
                    # The transfer's name and incarnation differ between the two runs.
                    message = re.sub(r"\d{6,}", "N", e.message.replace(control, "C"))
                    out.append((type(e).__name__, e.error_reason, message))
            await c.abort(f"locked-{control}", "done", secret=secret)
            await c.release(f"locked-{control}", secret=secret)

    asyncio.run(main())
    return out


def test_refusals_over_the_socket_are_gRPCs_own(seed: ServerProcess) -> None:
    over_grpc, over_socket = (refusals(seed.target, c) for c in CONTROLS)
    assert [t for t, _, _ in over_grpc] == ["NotFound", "InvalidArgument", "PermissionDenied",
                                            "PermissionDenied", "FailedPrecondition"], over_grpc
    assert over_socket == over_grpc


class Forger:
    """Frames written by hand on the server's socket: what a local process could send."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(10)
        self.calls = 0

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            out += chunk
        return out

    def call(self, method: str, request: bytes,
             metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, str]:
        self.calls += 1
        self.sock.sendall(frame(self.calls, CALL, encode_call(SVC + method, metadata, request)))
        while True:
            length, call, kind = int.from_bytes(self._read(4), "little"), \
                int.from_bytes(self._read(4), "little"), self._read(1)[0]
            body = self._read(length)
            assert call == self.calls
            if kind == END:
                code, details, _ = decode_end(body)
                return next(c for c in grpc.StatusCode if c.value[0] == code), details
            assert kind == MESSAGE


def test_a_forged_control_record_is_refused_and_changes_nothing(seed: ServerProcess) -> None:
    """A sender holds a grant of transfer A (bound to its secret) and transfer B is open (bound
    to another). Records forged on the socket: A's commit with B's secret, with an old epoch,
    for another incarnation; B's resume with A's secret; then bytes that are no frame at all.
    Each is refused with gRPC's code, and neither transfer moved."""
    a_secret, b_secret = new_secret(), new_secret()
    path = seed.pool_info().local_calls_path
    with Client(seed.target) as c:
        a = c.open("forged-a", 16, secret=a_secret)
        b = c.open("forged-b", 16, secret=b_secret)
        ch, stub = seed.stub()
        with ch:
            grants = stub.Attach(pb.AttachRequest(transfer_id="forged-a", total_tokens=32,
                                                  transport="shm"),
                                 metadata=sender_metadata(a_secret))
            g = next(grants)
            before = [c.poll(t, secret=s) for t, s in (("forged-a", a_secret),
                                                       ("forged-b", b_secret))]
            forger = Forger(path)

            def commit(epoch: int, incarnation: int, secret: str) -> tuple[grpc.StatusCode, str]:
                return forger.call("Commit", pb.CommitRequest(
                    transfer_id="forged-a", epoch=epoch, start_token=0, tokens=16,
                    incarnation=incarnation).SerializeToString(), sender_metadata(secret))

            assert commit(g.epoch, a.incarnation, b_secret)[0] == grpc.StatusCode.PERMISSION_DENIED
            assert commit(g.epoch - 1, a.incarnation, a_secret)[0] == \
                grpc.StatusCode.FAILED_PRECONDITION
            code, why = commit(g.epoch, a.incarnation + 1, a_secret)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "incarnation" in why, why
            code, _ = forger.call("Resume", pb.ResumeRequest(
                transfer_id="forged-b", sent_tokens=16, incarnation=b.incarnation,
            ).SerializeToString(), receiver_metadata(a_secret))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            code, why = forger.call("Resume", b"\xff\xff garbage")
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in why
            code, why = forger.call("Push", b"")
            assert code == grpc.StatusCode.UNIMPLEMENTED and "over gRPC" in why
            forger.sock.sendall(b"\xff" * 64)  # no frame: the connection is dropped
            with pytest.raises(ConnectionError):
                forger._read(1)
            after = [c.poll(t, secret=s) for t, s in (("forged-a", a_secret),
                                                      ("forged-b", b_secret))]
            assert after == before
            grants.cancel()
            for t, s in (("forged-a", a_secret), ("forged-b", b_secret)):
                c.abort(t, "done", secret=s)
            # The writer says it stopped: its fenced grant goes back to the pool.
            stub.Detach(pb.DetachRequest(transfer_id="forged-a", epoch=g.epoch,
                                         incarnation=a.incarnation),
                        metadata=sender_metadata(a_secret))
        for t, s in (("forged-a", a_secret), ("forged-b", b_secret)):
            c.release(t, secret=s)
    seed.assert_pool_free()


SENDER = """
import sys
import numpy as np
from kvferry.client import Client
data = np.zeros((96, 64), dtype=np.uint8)
with Client(sys.argv[1], control=sys.argv[2]) as c:
    c.pool_info()
    print("ready", flush=True)
    c.send("killed-sender", data)
"""


@pytest.mark.parametrize("control", CONTROLS)
def test_a_sender_killed_mid_window_fails_the_transfer_within_the_grace(
        graceful: ServerProcess, control: str) -> None:
    """The one-sided sender's process is SIGKILLed while it waits for its next grant: the
    server sees its Attach end when the kernel closes the connection (socket or TCP alike) and
    fails the transfer sender_gone after the reconnect grace, not at the stall timeout."""
    with Client(graceful.target, control=control) as rx:
        rx.pool_info()
        proc = subprocess.Popen([sys.executable, "-c", SENDER, graceful.target, control],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            windows = rx.receive("killed-sender", 32, release=False)
            next(windows)  # the first window is full: the sender waits for the next grant
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            t0 = time.monotonic()
            with pytest.raises(TransferFailed) as failed:
                for _ in windows:
                    pass
            took = time.monotonic() - t0
        finally:
            proc.kill()
            proc.wait()
        assert "sender_gone" in failed.value.reason and "32 of 96 tokens" in failed.value.reason, \
            failed.value.reason
        assert took < 60, took  # the stall timeout is 300 s: only the closed connection says so
        rx.release("killed-sender")


def test_a_server_killed_under_a_socket_call_fails_it_at_once(shm_dir: str) -> None:
    """A receiver's Watch over the socket when the server is SIGKILLed: the call fails
    Unavailable as soon as the kernel closes the socket, with the client's target named."""
    srv = start_server(shm_dir=shm_dir, stall_timeout=300, lease_timeout=300)

    async def main() -> BaseException:
        async with AsyncClient(srv.target, control="local") as c:
            await c.pool_info()
            await c.open("orphan", 16)
            watching = c.watch("orphan")
            await anext(watching)
            srv.stop(signal.SIGKILL)
            with pytest.raises(KvferryError) as lost:
                await asyncio.wait_for(anext(watching), 60)
            return lost.value

    err = asyncio.run(main())
    assert err.code() == grpc.StatusCode.UNAVAILABLE and srv.target in str(err), str(err)
    # The killed server's socket and pool file are swept by the next server on the directory.
    nxt = start_server(shm_dir=shm_dir)
    try:
        assert sorted(os.listdir(shm_dir)) == sorted(
            os.path.basename(p) for p in (nxt.pool_info().shm_path,
                                          nxt.pool_info().local_calls_path))
    finally:
        assert nxt.stop() == 0


def test_control_local_says_why_it_cannot_work(shm_dir: str) -> None:
    srv = start_server(shm_dir=shm_dir, local_calls=False)
    try:
        assert srv.pool_info().local_calls_path == ""
        with Client(srv.target, control="local") as c, \
                pytest.raises(TransportUnavailable, match="offers no same-host socket"):
            c.pool_info()
        with pytest.raises(ValueError, match="control must be one of"):
            Client(srv.target, control="doorbell")
    finally:
        assert srv.stop() == 0


def test_a_client_goes_on_across_a_server_restart(shm_dir: str) -> None:
    """The server is SIGKILLed and started again on the same port (its clients' connections in
    TIME_WAIT): its socket has another name now. The client's next calls go through gRPC at
    once (none fails for the old socket), and once PoolInfo is asked again they take the new
    socket."""
    first = start_server(shm_dir=shm_dir)
    port = first.grpc_port

    async def main() -> tuple[float, float]:
        async with AsyncClient(f"127.0.0.1:{port}") as c:
            await c.pool_info()
            await c.open("before", 16)
            first.stop(signal.SIGKILL)
            # Started off the loop, which meanwhile sees the old connection close (as a client
            # does while a server restarts).
            nonlocal_server.append(await asyncio.to_thread(start_server, shm_dir=shm_dir,
                                                           port=port))
            st = await c.open("after", 16)  # over gRPC: the old socket is gone
            assert (await c.poll("after")).incarnation == st.incarnation
            over_grpc = connections(nonlocal_server[0])
            await c.pool_info(refresh=True)  # names the new socket
            await c.poll("after")
            return over_grpc, connections(nonlocal_server[0])

    nonlocal_server: list[ServerProcess] = []
    try:
        assert asyncio.run(main()) == (0, 1)
    finally:
        for srv in nonlocal_server:
            assert srv.stop() == 0

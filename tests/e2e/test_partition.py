"""Faults between hosts that a process kill does not show, through a proxy the test controls
(kvferry.testing.fault_proxy) in front of a real server: a partition (packets vanish, no RST),
a reset, a slow link. Every side learns within keepalive + keepalive timeout and raises a typed
error naming the server; nothing hangs.

The server and the clients here ping every KEEPALIVE seconds and give up after as long again (the
defaults are 4 s and 4 s: same logic, slower). Waits are bounded by a multiple of that bound only
to turn a hang into a failure: a passing test never waits for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from kvferry.client import Client, KvferryError
from kvferry.testing.fault_proxy import FaultProxy
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

from support.kvserver import ServerProcess, start_server, wait_until

KEEPALIVE = 0.5
# Partition known within KEEPALIVE + KEEPALIVE; a hang is anything far past that.
HANG = 20 * (2 * KEEPALIVE) + 5
ROWS = 64


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = start_server(keepalive=KEEPALIVE, keepalive_timeout=KEEPALIVE,
                       keepalive_min_ping=KEEPALIVE / 5, stall_timeout=3, lease_timeout=3,
                       bootstrap_timeout=3, retention=3)
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    with FaultProxy(server.grpc_port) as p:
        yield p
    server.assert_pool_free(timeout=HANG)  # the server's own timeouts clean up after the cut


def client(p: FaultProxy, **kw: Any) -> Client:
    """A client of the server through the proxy. control="grpc": on the server's host the
    client would otherwise take the server's same-host socket, around the proxy."""
    return Client(p.target, keepalive_s=KEEPALIVE, keepalive_timeout_s=KEEPALIVE,
                  call_timeout_s=4 * KEEPALIVE, control="grpc", **kw)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException], list[float]]:
    """Run ``fn``; note what it raised and when it ended."""
    errors: list[BaseException] = []
    ended: list[float] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)
        ended.append(time.monotonic())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, errors, ended


def watching(c: Client, tid: str, incarnation: int) -> tuple[threading.Thread, list[BaseException]]:
    """A Watch of ``tid`` on a thread, once the server has sent its first status (so a fault
    that follows hits an open stream, not a call still to be made)."""
    first = threading.Event()

    def watch() -> None:
        for _ in c.watch(tid, incarnation=incarnation):
            first.set()

    th, errors, _ = in_thread(watch)
    assert first.wait(HANG) or errors, "the Watch never started"
    return th, errors


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, ROWS), dtype=np.uint8)


def assert_learned(th: threading.Thread, errors: list[BaseException], proxy: FaultProxy) -> None:
    th.join(HANG)
    assert not th.is_alive(), "still blocked after the partition"
    assert len(errors) == 1 and isinstance(errors[0], KvferryError), errors
    assert proxy.target in str(errors[0]), str(errors[0])  # names the server it lost


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_a_partition_mid_window_reaches_sender_and_receiver(proxy: FaultProxy, transport: str) -> None:
    """The sender waits on a full window (a Push held by backpressure, or an Attach stream
    waiting for its next grant), the receiver has the first window and is about to resume."""
    data = rows(3 * 32)
    first_window = threading.Event()
    cut = threading.Event()
    with client(proxy) as rx, client(proxy) as tx:
        def receive() -> None:
            for _ in rx.receive(f"cut-{transport}", 32, transport="grpc"):
                first_window.set()
                cut.wait(HANG)

        rth, rerr, _ = in_thread(receive)
        wait_until(lambda: tx.poll(f"cut-{transport}"), "the receiver's Open")
        sth, serr, _ = in_thread(lambda: tx.send(f"cut-{transport}", data, transport=transport))
        assert first_window.wait(HANG)
        proxy.partition()
        cut.set()
        assert_learned(sth, serr, proxy)
        assert_learned(rth, rerr, proxy)
        # The link heals: once the clients reach the server again, they carry a new transfer.
        proxy.heal()
        wait_until(lambda: tx.pool_info(refresh=True) and rx.pool_info(refresh=True),
                   "the server reachable again", within=HANG)
        done = in_thread(lambda: tx.send(f"after-{transport}", data[:32], transport=transport))
        got = b"".join(bytes(w.data) for w in rx.receive(f"after-{transport}", 32, transport="grpc"))
        done[0].join(HANG)
        assert got == data[:32].tobytes() and not done[1], done[1]


def test_a_watch_with_nothing_to_say_learns_of_a_partition(proxy: FaultProxy) -> None:
    with client(proxy) as rx:
        status = rx.open("quiet", 32)
        th, errors = watching(rx, "quiet", status.incarnation)
        proxy.partition()
        assert_learned(th, errors, proxy)


def test_an_idle_clients_next_call_fails_within_its_deadline(proxy: FaultProxy) -> None:
    with client(proxy) as c:
        c.pool_info()
        proxy.partition()
        th, errors, _ = in_thread(lambda: c.stats())
        assert_learned(th, errors, proxy)
        assert errors[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_partition_one_way_only_is_learned_too(proxy: FaultProxy) -> None:
    """Requests reach the server; nothing comes back."""
    with client(proxy) as rx:
        status = rx.open("one-way", 32)
        th, errors = watching(rx, "one-way", status.incarnation)
        proxy.partition("down")
        assert_learned(th, errors, proxy)


def test_a_reset_mid_stream_fails_at_once_and_the_next_connection_works(proxy: FaultProxy) -> None:
    with client(proxy) as rx, client(proxy) as tx:
        status = rx.open("reset", 32)
        tx.pool_info()  # both connected (gRPC gives two channels to one target one connection)
        th, errors = watching(rx, "reset", status.incarnation)
        proxy.reset()
        assert_learned(th, errors, proxy)
        wait_until(lambda: tx.pool_info(refresh=True) and rx.pool_info(refresh=True),
                   "the server reachable again", within=HANG)
        data = rows(64, seed=3)
        sth, serr, _ = in_thread(lambda: tx.send("after-reset", data, transport="grpc"))
        got = b"".join(bytes(w.data) for w in rx.receive("after-reset", 32, transport="grpc"))
        sth.join(HANG)
        assert got == data.tobytes() and not serr


def test_a_slow_link_works_at_its_speed(proxy: FaultProxy) -> None:
    proxy.delay(0.01)  # 10 ms each way
    data = rows(4 * 32, seed=4)
    with client(proxy) as rx, client(proxy) as tx:
        sth, serr, _ = in_thread(lambda: tx.send("slow", data, transport="grpc"))
        got = b"".join(bytes(w.data) for w in rx.receive("slow", 32, transport="grpc"))
        sth.join(HANG)
    assert got == data.tobytes() and not serr


def _connections_after_idling(server: ServerProcess, keepalive: float, pings: int) -> int:
    """How many connections a client needed for one call, ``pings`` keepalive intervals of no
    call at all (only pings), and one call more: 1 when it was never sent away, more when the
    server's GOAWAY too_many_pings made it connect again."""
    with FaultProxy(server.grpc_port) as counted, \
            Client(counted.target, keepalive_s=keepalive, keepalive_timeout_s=1.0,
                   control="grpc") as c:
        c.pool_info()
        idle_until = time.monotonic() + pings * keepalive
        while time.monotonic() < idle_until:  # the pings' own clock: nothing to wait on
            time.sleep(keepalive)
        c.pool_info(refresh=True)
        return counted.connections


def test_a_healthy_idle_connection_is_never_sent_away(server: ServerProcess) -> None:
    """The client pings twice as often as its default's ratio to the server's floor (keepalive
    KEEPALIVE/2 against a floor of KEEPALIVE/5), with no call for many intervals: it keeps its one
    connection. The control, a server whose floor is above the client's interval, sends such a
    client away (GOAWAY too_many_pings, then the connection closes; the next call connects
    again): so the count can tell."""
    assert _connections_after_idling(server, KEEPALIVE / 2, pings=12) == 1
    strict = start_server(keepalive_min_ping=30)
    try:
        with FaultProxy(strict.grpc_port) as counted, \
                Client(counted.target, keepalive_s=KEEPALIVE / 2, keepalive_timeout_s=1.0,
                       control="grpc") as c:
            c.pool_info()
            # Pings alone, with no call, until the server gives the connection up.
            wait_until(lambda: counted.ended >= 1, "the strict server sending the client away")
            c.pool_info(refresh=True)
            assert counted.connections > 1
    finally:
        assert strict.stop() == 0


def test_a_slow_receiver_is_no_false_alarm() -> None:
    """The sender waits on a full window, and the receiver takes its time (four keepalive
    intervals and timeouts, well inside the stall timeout) before it resumes: the healthy, idle
    connections are kept, and the transfer completes."""
    data = rows(2 * 32, seed=5)
    srv = start_server(keepalive=KEEPALIVE, keepalive_timeout=KEEPALIVE,
                       keepalive_min_ping=KEEPALIVE / 5, stall_timeout=60)
    with FaultProxy(srv.grpc_port) as proxy, client(proxy) as rx, client(proxy) as tx:
        sth, serr, _ = in_thread(lambda: tx.send("patient", data, transport="grpc"))
        got = []
        for w in rx.receive("patient", 32, transport="grpc"):
            got.append(bytes(w.data))
            if len(got) == 1:
                # No call goes either way meanwhile: only the pings keep the connection.
                time.sleep(4 * 2 * KEEPALIVE)
        sth.join(HANG)
        assert proxy.connections == 1  # nobody gave the connection up
    srv.assert_pool_free()
    assert srv.stop() == 0
    assert b"".join(got) == data.tobytes() and not serr, serr


@pytest.fixture
def patient() -> Iterator[ServerProcess]:
    """Stall and lease far beyond the test: only the keepalive bound and the reconnect grace
    can end a transfer whose side vanished. One per test: a one-sided writer cut off leaves
    its window fenced for the fence timeout."""
    srv = start_server(keepalive=KEEPALIVE, keepalive_timeout=KEEPALIVE,
                       keepalive_min_ping=KEEPALIVE / 5, reconnect_grace=KEEPALIVE,
                       stall_timeout=300, lease_timeout=300, fence_timeout=300, retention=1)
    yield srv
    assert srv.stop() == 0


def _failed_naming(errors: list[BaseException], outcome: str) -> None:
    assert len(errors) == 1 and isinstance(errors[0], KvferryError), errors
    assert outcome in str(errors[0]), str(errors[0])


def _pushing_then_stalled(target: str, tid: str, data: np.ndarray, first: int,
                          gate: threading.Event) -> grpc.Future:
    """A sender producing rows as it goes (an encoder, say): it pushes ``first`` rows, then
    waits for more until ``gate``. Its own connection, so a cut can fall on it alone."""
    ch = grpc.insecure_channel(target)
    stub = pb_grpc.TransferServiceStub(ch)

    def messages() -> Iterator[pb.PushRequest]:
        yield pb.PushRequest(transfer_id=tid, total_tokens=len(data), rows=data[:first].tobytes())
        gate.wait(HANG)

    call = stub.Push.future(messages())
    call.add_done_callback(lambda _: ch.close())
    return call


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_the_server_fails_a_vanished_senders_transfer_naming_it(patient: ServerProcess,
                                                                 transport: str) -> None:
    """The sender (through the proxy) is cut off mid-transfer, the receiver (direct) is not:
    the server notices the sender's stream is gone within the keepalive bound, gives it the
    reconnect grace, and fails the transfer sender_gone; the receiver learns that at once.
    (grpc: a Push that has sent 40 of 96 rows, then waits for more; shm: a one-sided writer
    waiting for its next window, which the receiver resumes once the cut is made.)"""
    tid = f"sender-cut-{transport}"
    data = rows(3 * 32, seed=6)
    first_window = threading.Event()
    read_on = threading.Event()  # the receiver goes on past its first window
    produced = threading.Event()  # the stalled Push sender has its next rows (never, here)
    with FaultProxy(patient.grpc_port) as proxy, client(proxy) as tx, \
            Client(patient.target) as rx:
        def receive() -> None:
            for _ in rx.receive(tid, 32, transport="grpc"):
                first_window.set()
                read_on.wait(HANG)

        rth, rerr, _ = in_thread(receive)
        wait_until(lambda: rx.poll(tid), "the receiver's Open")
        if transport == "grpc":
            push = _pushing_then_stalled(proxy.target, tid, data, 40, produced)
        else:
            sth, serr, _ = in_thread(lambda: tx.send(tid, data, transport=transport))
        assert first_window.wait(HANG)
        if transport == "grpc":
            read_on.set()  # the receiver takes in the Push's next rows, and waits for more
            wait_until(lambda: rx.poll(tid).sent_tokens >= 40, "the second window's first rows",
                       within=HANG)
        proxy.partition()
        read_on.set()
        rth.join(HANG)
        assert not rth.is_alive(), "the receiver still waits for a sender that is gone"
        _failed_naming(rerr, "sender_gone")
        if transport == "grpc":
            assert not push.done()  # the sender's stream was cut, not ended by the sender
            produced.set()
            push.cancel()
            # The Push's blocks are free at once; a one-sided writer's window stays fenced
            # (it could still write) until its fence timeout or its Detach.
            patient.assert_pool_free(timeout=HANG)
        else:
            assert_learned(sth, serr, proxy)


def test_the_server_fails_a_vanished_receivers_transfer_naming_it(patient: ServerProcess) -> None:
    """The receiver (through the proxy) holds its first window and is cut off before resuming;
    the sender (direct) waits on the full window: the server notices the receiver's Watch is
    gone, gives it the reconnect grace, and fails the transfer receiver_gone, which ends the
    sender's send() at once, long before the lease (300 s here)."""
    data = rows(3 * 32, seed=7)
    first_window = threading.Event()
    cut = threading.Event()
    with FaultProxy(patient.grpc_port) as proxy, client(proxy) as rx, \
            Client(patient.target) as tx:
        def receive() -> None:
            for _ in rx.receive("receiver-cut", 32, transport="grpc"):
                first_window.set()
                cut.wait(HANG)

        rth, rerr, _ = in_thread(receive)
        wait_until(lambda: tx.poll("receiver-cut"), "the receiver's Open")
        sth, serr, _ = in_thread(lambda: tx.send("receiver-cut", data, transport="grpc"))
        assert first_window.wait(HANG)
        proxy.partition()
        sth.join(HANG)
        assert not sth.is_alive(), "the sender still waits for a receiver that is gone"
        _failed_naming(serr, "receiver_gone")
        cut.set()
        assert_learned(rth, rerr, proxy)
    patient.assert_pool_free(timeout=HANG)

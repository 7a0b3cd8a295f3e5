"""Partitions between two "hosts" (network namespaces, tests/support/netns.py): the link itself
goes silent, as when a switch or cable fails, not a proxy on loopback. The server runs in one
namespace, the clients in the other (tests/support/partition_agents.py); with Mooncake, the
control (gRPC) and the data (the engine's tcp) take separate links, so either can be cut while
the other lives.

Keepalives are KEEPALIVE seconds on both sides (the defaults, 4 s and 3 s, behave the same,
slower); the engine's own timeout is ENGINE_TIMEOUT. Waits are bounded by HANG only to turn a
hang into a failure: a passing test never waits for it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import support
from support.netns import Hosts, hosts

AGENTS = str(Path(support.__file__).with_name("partition_agents.py"))
KEEPALIVE = 0.5
# Every side's keepalive and keepalive timeout (the agents' argument). Measuring with the
# defaults: KVFERRY_PARTITION_KEEPALIVE=4,3 pytest -s tests/e2e/test_netns_partition.py
PINGS = os.environ.get("KVFERRY_PARTITION_KEEPALIVE", f"{KEEPALIVE},{KEEPALIVE}")
ENGINE_TIMEOUT = 2
HANG = 60


def report(what: str, event: dict[str, Any], since: float) -> None:
    """How long a side took to learn, and what it raised (shown with pytest -s)."""
    print(f"{what}: {event['t'] - since:.1f} s, {event.get('error', '')}: {event.get('text', '')[:150]}")


class Agent:
    """One agent process: commands in, JSON events out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"exited": self.proc.wait()})

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, **match: Any) -> dict[str, Any]:
        """The first event (seen before or still to come) holding every key of ``match`` with
        that value (a value of ... matches any)."""
        def fits(e: dict[str, Any]) -> bool:
            return all(k in e and (v is ... or e[k] == v) for k, v in match.items())

        for e in self.seen:
            if fits(e):
                self.seen.remove(e)
                return e
        while True:
            try:
                e = self.events.get(timeout=HANG)
            except queue.Empty:
                raise AssertionError(f"no event {match} within {HANG}s; seen {self.seen}") from None
            if "exited" in e:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the agent exited ({e['exited']}) before {match}: {err[-2000:]}")
            if fits(e):
                return e
            self.seen.append(e)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(HANG)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(net: Hosts, server_flags: dict[str, Any], env: dict[str, str] | None = None,
          ) -> tuple[Agent, Agent, dict[str, Any]]:
    server = Agent(net.popen(net.server_ns, [AGENTS, "server", json.dumps(server_flags), PINGS],
                             env))
    ready = server.expect(target=...)
    client = Agent(net.popen(net.client_ns, [AGENTS, "client", ready["target"], PINGS], env))
    return server, client, ready


@pytest.fixture
def one_link() -> Iterator[Hosts]:
    with hosts(planes=1) as net:
        yield net


@pytest.fixture
def two_links() -> Iterator[Hosts]:
    pytest.importorskip("mooncake.engine", reason="needs kvferry[mooncake] and libibverbs1")
    with hosts(planes=2) as net:
        yield net


def test_a_silent_link_mid_window_reaches_every_side_and_heals(one_link: Hosts) -> None:
    """The issue's own scene: the sender waits on a full window, the receiver holds the first
    window and is about to resume, and the link between the hosts goes silent. Both clients
    raise naming the server, the server fails the transfer naming the side it lost and frees
    every block; healed, the same processes carry a new transfer."""
    net = one_link
    server, client, _ = start(net, {"host": net.server_addresses[0], "stall_timeout": 300,
                                    "lease_timeout": 300, "retention": 1})
    try:
        client.tell("receive cut 32")
        client.tell("send cut 96 grpc")
        client.expect(window="cut", n=0)
        server.tell(f"ended cut {HANG}")
        net.cut(0)
        cut_at = time.monotonic()
        client.tell("go cut")
        sender = client.expect(sender="cut")
        receiver = client.expect(receiver="cut")
        report("link cut: Push sender", sender, cut_at)
        report("link cut: receiver", receiver, cut_at)
        ended = server.expect(ended="cut")
        report("link cut: server", ended, cut_at)
        assert ended["outcome"] in ("sender_gone", "receiver_gone"), ended  # a side it lost
        for side in (sender, receiver):
            assert side["error"] in ("Unavailable", "DeadlineExceeded", "TransferFailed"), side
            assert net.server_addresses[0] in side["text"], side  # names the server it lost
        server.tell(f"pool-free {HANG}")
        assert server.expect(pool_free=...)["pool_free"]  # the server's own bound, not a timeout
        net.heal(0)
        client.tell(f"reach {HANG}")
        assert client.expect(reached=...)["reached"]
        client.tell("receive after 32")
        client.tell("send after 64 grpc")
        client.tell("go after")
        assert client.expect(received="after")["exact"]
        assert client.expect(sent="after")["state"] == 4  # SUCCESS
    finally:
        client.close()
        server.close()


def _mooncake_pair(net: Hosts) -> tuple[Agent, Agent]:
    """A server whose gRPC listens on link 0 and whose engine on link 1; a sender whose engine
    starts on its own address towards link 1."""
    server, client, ready = start(
        net, {"host": net.server_addresses[0], "mooncake": "tcp",
              "mooncake_host": net.server_addresses[1], "fence_timeout": ENGINE_TIMEOUT + 1,
              "stall_timeout": 300, "lease_timeout": 300, "retention": 1},
        env={"MC_TRANSFER_TIMEOUT": str(ENGINE_TIMEOUT)})
    assert ready["mooncake"].startswith(net.server_addresses[1] + ":")
    return server, client


def _cut_mid_transfer(net: Hosts, server: Agent, client: Agent, tid: str,
                      link: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A one-sided Mooncake send of ten windows, the receiver holding the first: cut ``link``,
    let the receiver go on; what the sender and the receiver then raised."""
    server.tell(f"receive {tid} 64")
    client.tell(f"send {tid} 640 mooncake")
    server.expect(window=tid, n=0)
    net.cut(link)
    cut_at = time.monotonic()
    server.tell(f"go {tid}")
    sender, receiver = client.expect(sender=tid), server.expect(receiver=tid)
    report(f"link {link} cut: mooncake sender", sender, cut_at)
    report(f"link {link} cut: receiver", receiver, cut_at)
    return sender, receiver


def _canary_exact_then_every_block_back(server: Agent, tid: str) -> None:
    server.tell(f"canary {tid} 256 64")
    assert server.expect(canary=tid)["exact"]
    server.tell(f"pool-free {HANG}")
    assert server.expect(pool_free=...)["pool_free"]


def test_a_silent_data_link_fails_the_write_and_the_fence_holds(two_links: Hosts) -> None:
    """The engine's link goes silent between two windows while gRPC lives: the next write fails
    when the engine times out; the sender cannot know it will not land, so it fails the
    transfer (the receiver learns at once) and does not Detach: the window stays fenced until
    the fence timeout. A canary transfer meanwhile, with the link healed under it (a late
    write could land now), gets exactly its own rows; then every block is free."""
    net = two_links
    server, client = _mooncake_pair(net)
    try:
        sender, receiver = _cut_mid_transfer(net, server, client, "data", 1)
        assert sender["error"] == "TransferFailed" and "Mooncake write" in sender["text"], sender
        assert "Mooncake write" in receiver["text"], receiver  # the sender's reason, at once
        server.tell("pool")
        assert server.expect(quarantined=...)["quarantined"] > 0  # fenced: it may still land
        net.heal(1)
        _canary_exact_then_every_block_back(server, "canary-1")
    finally:
        client.close()
        server.close()


def test_a_silent_control_link_ends_the_send_and_the_server_fails_it(two_links: Hosts) -> None:
    """gRPC's link goes silent while the engine's lives: the sender learns by its keepalive and
    stops (it cannot commit, and cannot say it stopped: no Detach); the server finds the
    sender's Attach stream gone and fails the transfer sender_gone, fencing the lent window
    until the fence timeout; a canary gets exactly its own rows; every block comes back."""
    net = two_links
    server, client = _mooncake_pair(net)
    try:
        sender, receiver = _cut_mid_transfer(net, server, client, "ctl", 0)
        assert sender["error"] == "TransferFailed" and "unreachable" in sender["text"], sender
        assert net.server_addresses[0] in sender["text"], sender
        assert "sender_gone" in receiver["text"], receiver
        _canary_exact_then_every_block_back(server, "canary-2")
        net.heal(0)
    finally:
        client.close()
        server.close()

"""Two "hosts" for tests: network namespaces joined by one or more independent links ("planes"),
each through a router namespace of its own, so that one link can be cut while the others carry on.

A cut sets the router's two interfaces down: both hosts' ends lose carrier, their routes stay,
and what they send vanishes (no RST, no error on an established connection; a new connection
fails once address resolution gives up). Healed, the same connections carry on. That is a
partition as a switch or cable failure makes one, which ``tc netem`` would fake but this kernel
lacks. Needs root and iproute2; only addresses inside the namespaces made here are used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Hosts:
    def __init__(self, planes: int) -> None:
        tag = f"{os.getpid() % 100000}"
        net = 16 + os.getpid() % 200
        self.server_ns, self.client_ns = f"kvs{tag}", f"kvc{tag}"
        self.routers = [f"kvr{tag}p{p}" for p in range(planes)]
        self._router_ifs: list[tuple[str, str]] = []
        # The server's address on each plane: 10.(220+p).NET.1, the client's 10.(230+p).NET.1.
        self.server_addresses = [f"10.{220 + p}.{net}.1" for p in range(planes)]
        self._made: list[str] = []
        try:
            for ns in (self.server_ns, self.client_ns, *self.routers):
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            for p, router in enumerate(self.routers):
                ends = []
                for side, ns, first in (("s", self.server_ns, 220), ("c", self.client_ns, 230)):
                    host_if, router_if = f"k{tag}{side}{p}", f"r{tag}{side}{p}"
                    _ip("link", "add", host_if, "type", "veth", "peer", "name", router_if)
                    _ip("link", "set", host_if, "netns", ns)
                    _ip("link", "set", router_if, "netns", router)
                    _ip("-n", ns, "addr", "add", f"10.{first + p}.{net}.1/24", "dev", host_if)
                    _ip("-n", router, "addr", "add", f"10.{first + p}.{net}.254/24", "dev", router_if)
                    _ip("-n", ns, "link", "set", host_if, "up")
                    _ip("-n", router, "link", "set", router_if, "up")
                    ends.append(router_if)
                # Each host reaches the other's address on this plane through this router only.
                _ip("-n", self.server_ns, "route", "add", f"10.{230 + p}.{net}.0/24",
                    "via", f"10.{220 + p}.{net}.254")
                _ip("-n", self.client_ns, "route", "add", f"10.{220 + p}.{net}.0/24",
                    "via", f"10.{230 + p}.{net}.254")
                subprocess.run(["ip", "netns", "exec", router, "sh", "-c",
                                "echo 1 > /proc/sys/net/ipv4/ip_forward"], check=True)
                self._router_ifs.append((ends[0], ends[1]))
        except BaseException:
            self.close()
            raise

    def cut(self, plane: int) -> None:
        for router_if in self._router_ifs[plane]:
            _ip("-n", self.routers[plane], "link", "set", router_if, "down")

    def heal(self, plane: int) -> None:
        for router_if in self._router_ifs[plane]:
            _ip("-n", self.routers[plane], "link", "set", router_if, "up")

    def popen(self, ns: str, argv: Sequence[str], env: dict[str, str] | None = None,
              ) -> subprocess.Popen[str]:
        """A process inside ``ns`` speaking JSON lines: stdin and stdout are pipes."""
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *argv],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})

    def close(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()


@contextmanager
def hosts(planes: int = 1) -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    h = Hosts(planes)
    try:
        yield h
    finally:
        h.close()

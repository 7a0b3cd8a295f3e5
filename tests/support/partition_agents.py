"""The processes on the two "hosts" of the partition tests (tests/support/netns.py), driven by
commands on stdin, answering in JSON lines on stdout. Every event carries ``t``, this machine's
monotonic clock (one clock for every namespace), so the test measures how long each side took.

    python partition_agents.py server FLAGS_JSON PING,TIMEOUT  # a kvferry server, and commands
    python partition_agents.py client TARGET PING,TIMEOUT      # commands only

(PING,TIMEOUT: every side's keepalive and keepalive timeout, in seconds.)

Commands (one per line):
    receive TID WINDOW        receive TID; after the first window, wait for "go TID"
    go TID                    let that receiver go on
    send TID TOTAL TRANSPORT  send TID's TOTAL rows (payload seeded by TID)
    pool                      the server's pool: free, quarantined, transfers held (server only)
    pool-free SECONDS         wait until every block is free and nothing is held (server only)
    canary TID TOTAL WINDOW   a transfer of its own, sent by Push and received here: exact?
    reach SECONDS             until a call gets through (a healed link; reconnects back off)
    ended TID SECONDS         until TID is terminal, watched through List (which, unlike Poll,
                              renews no lease): its outcome and reason (server only)
"""

from __future__ import annotations

import json
import sys
import threading
import time
import zlib
from typing import Any

import numpy as np
from kvserver import wait_until  # beside this file: tests/support

from kvferry.client import Client
from kvferry.testing import ServerProcess, launch

ROW = 256


def payload(tid: str, total: int) -> np.ndarray:
    seed = zlib.crc32(tid.encode())
    return np.random.default_rng(seed).integers(0, 256, (total, ROW), dtype=np.uint8)


_SAYING = threading.Lock()


def say(**kw: object) -> None:
    # Several threads speak at once, and print() writes the text and its newline apart: one
    # locked write per event keeps every event on its own line.
    line = json.dumps({**kw, "t": time.monotonic()}) + "\n"
    with _SAYING:
        sys.stdout.write(line)
        sys.stdout.flush()


def failure(e: BaseException) -> dict[str, str]:
    return {"error": type(e).__name__, "text": str(e)}


class Agent:
    def __init__(self, target: str, ping: float, timeout: float,
                 server: ServerProcess | None) -> None:
        self.target, self.server = target, server
        self.options: dict[str, Any] = {"keepalive_s": ping, "keepalive_timeout_s": timeout,
                                        "call_timeout_s": ping + timeout}
        self.gates: dict[str, threading.Event] = {}

    def client(self) -> Client:
        return Client(self.target, **self.options)

    def receive(self, tid: str, window: int) -> None:
        gate = self.gates.setdefault(tid, threading.Event())
        out = []
        try:
            with self.client() as rx:
                for n, w in enumerate(rx.receive(tid, window, transport="grpc")):
                    out.append(bytes(w.data))
                    say(window=tid, n=n)
                    if n == 0:
                        gate.wait()
            ok = b"".join(out) == payload(tid, len(b"".join(out)) // ROW).tobytes()
            say(received=tid, exact=ok, windows=len(out))
        except BaseException as e:
            say(receiver=tid, **failure(e))

    def send(self, tid: str, total: int, transport: str) -> None:
        try:
            with self.client() as tx:
                st = tx.send(tid, payload(tid, total), transport=transport)
            say(sent=tid, state=int(st.state))
        except BaseException as e:
            say(sender=tid, **failure(e))

    def canary(self, tid: str, total: int, window: int) -> None:
        with self.client() as rx, self.client() as tx:
            th = threading.Thread(target=tx.send, args=(tid, payload(tid, total)),
                                  kwargs={"transport": "grpc"})
            th.start()
            got = b"".join(bytes(w.data) for w in rx.receive(tid, window, transport="grpc"))
            th.join()
        say(canary=tid, exact=got == payload(tid, total).tobytes())

    def pool(self) -> None:
        assert self.server is not None
        info = self.server.pool_info()
        say(free=info.free_blocks, blocks=info.num_blocks, quarantined=info.quarantined_blocks,
            transfers=info.transfers)

    def pool_free(self, seconds: float) -> None:
        assert self.server is not None
        try:
            self.server.assert_pool_free(seconds)
            say(pool_free=True)
        except AssertionError as e:
            say(pool_free=False, text=str(e))

    def reach(self, seconds: float) -> None:
        with self.client() as c:
            try:
                wait_until(lambda: c.pool_info(refresh=True), "a call through", within=seconds)
                say(reached=True)
            except AssertionError as e:
                say(reached=False, **failure(e))

    def ended(self, tid: str, seconds: float) -> None:
        """Watched through List, which (unlike Poll or Watch) says nothing of the receiver."""
        def outcome(c: Client) -> str:
            held = [x for x in c.list_transfers() if x.status.transfer_id == tid]
            if held and held[0].outcome:
                say(ended=tid, outcome=held[0].outcome, text=held[0].status.failure_reason)
            return held[0].outcome if held else ""

        with self.client() as c:
            try:
                wait_until(lambda: outcome(c), f"{tid} terminal", within=seconds)
            except AssertionError:
                say(ended=tid, outcome="", text="still live")

    def serve_commands(self) -> None:
        for line in sys.stdin:
            cmd, *args = line.split()
            if cmd == "receive":
                threading.Thread(target=self.receive, args=(args[0], int(args[1])),
                                 daemon=True).start()
            elif cmd == "go":
                self.gates.setdefault(args[0], threading.Event()).set()
            elif cmd == "send":
                threading.Thread(target=self.send, args=(args[0], int(args[1]), args[2]),
                                 daemon=True).start()
            elif cmd == "canary":
                self.canary(args[0], int(args[1]), int(args[2]))
            elif cmd == "pool":
                self.pool()
            elif cmd == "pool-free":
                self.pool_free(float(args[0]))
            elif cmd == "reach":
                self.reach(float(args[0]))
            elif cmd == "ended":
                threading.Thread(target=self.ended, args=(args[0], float(args[1])),
                                 daemon=True).start()


def main() -> None:
    role, where = sys.argv[1], sys.argv[2]
    ping, timeout = (float(x) for x in sys.argv[3].split(","))
    if role == "server":
        flags = json.loads(where)
        srv = launch({"row_bytes": ROW, "block_tokens": 16, "num_blocks": 64,
                      "default_window_tokens": 64, "keepalive": ping, "keepalive_timeout": timeout,
                      "keepalive_min_ping": ping / 4, **flags})
        try:
            info = srv.pool_info()
            say(target=srv.target, mooncake=info.mooncake_session)
            Agent(srv.target, ping, timeout, srv).serve_commands()
        finally:
            srv.stop()
    else:
        Agent(where, ping, timeout, None).serve_commands()


if __name__ == "__main__":
    main()

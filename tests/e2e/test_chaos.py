"""Chaos with real processes: senders SIGKILLed mid-stream (some restarted), receivers that vanish,
late duplicate resumes from another process. Afterwards every transfer is SUCCESS with a matching
checksum or FAILED with a reason, and the whole pool is free.

Nothing here depends on how fast the machine is: every agent process is started and past its
imports before the server exists (they wait for its address on stdin), and the server's timeouts
are scaled by how long the server itself took to start on this machine, now."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

import support
from support.chaos_agents import payload
from support.kvserver import start_server

AGENTS = str(Path(support.__file__).with_name("chaos_agents.py"))
TRANSFERS, TOTAL, WINDOW = 10, 400, 32


class Agent:
    """An agent process, held at its start-up gate until ``go``."""

    def __init__(self, *args: object) -> None:
        self.args = args
        self.proc = subprocess.Popen([sys.executable, AGENTS, *map(str, args)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def ready(self) -> float:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"agent {self.args} died at start-up: {self.stderr()}")
        return float(json.loads(line)["ready"])

    def go(self, target: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(target + "\n")
        self.proc.stdin.close()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.stderr.read() if self.proc.stderr else ""


def test_chaos(tmp_path: Path) -> None:
    rng = random.Random(1234)
    ids = [f"chaos-{i}" for i in range(TRANSFERS)]
    killed_senders = rng.sample(ids, 4)
    restarted = killed_senders[:2]
    killed_receivers = rng.sample([t for t in ids if t not in killed_senders], 2)

    receivers = {t: Agent("receiver", t, WINDOW, tmp_path / f"{t}.json") for t in ids}
    senders = {t: Agent("sender", t, i, TOTAL) for i, t in enumerate(ids)}
    # A restarted sender re-sends from token 0 (delivered rows are skipped). It is started now
    # and held at its gate, so its start-up never counts against the stall timeout.
    second = {t: Agent("sender", t, ids.index(t), TOTAL) for t in restarted}
    echo = Agent("echo-ranks", 6, *ids)
    agents = [*receivers.values(), *senders.values(), *second.values(), echo]
    try:
        slowest = max(a.ready() for a in agents)
        started = time.monotonic()
        srv = start_server(num_blocks=64, block_tokens=8, retention=120)
        srv.stop()
        # The unit of time on this machine now: one kvferry process's start-up (imports, bind,
        # first health check). Senders push every 30 ms, so a stall of 3 units is never a slow
        # machine, only a dead sender.
        unit = max(1.0, time.monotonic() - started)
        # A restarted sender comes back within a unit (it is started, and waits at its gate).
        srv = start_server(num_blocks=64, block_tokens=8, lease_timeout=2 * unit,
                           stall_timeout=3 * unit, bootstrap_timeout=5 * unit, retention=120,
                           reconnect_grace=unit)
    except BaseException:
        for a in agents:
            a.proc.kill()
        raise
    try:
        for a in [*receivers.values(), *senders.values(), echo]:
            a.go(srv.target)
        with srv.stub()[0] as ch0:  # kills land mid-stream: wait until every transfer moves
            probe = pb_grpc.TransferServiceStub(ch0)
            deadline = time.monotonic() + 20 * unit
            for t in ids:
                while True:
                    try:
                        if probe.Poll(pb.PollRequest(transfer_id=t)).sent_tokens > 0:
                            break
                    except grpc.RpcError:
                        pass  # not opened yet
                    if time.monotonic() > deadline:
                        pytest.fail(f"{t} never started; its agents said: "
                                    f"{receivers[t].stderr()} {senders[t].stderr()}")
                    time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # chaos: the kills land at random points of the streams
        for t in killed_senders:
            senders[t].proc.send_signal(signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 0.2))
        for t in killed_receivers:
            receivers[t].proc.send_signal(signal.SIGKILL)
        for t in restarted:
            second[t].go(srv.target)

        for a in agents:
            try:
                a.proc.wait(60 * unit)
            except subprocess.TimeoutExpired:
                pytest.fail(f"agent {a.args} never finished: {a.stderr()}")
        assert echo.proc.stdout is not None
        echo_out = echo.proc.stdout.read()
        assert echo.proc.returncode == 0, echo.stderr() or echo_out
        echoed = json.loads(echo_out.strip().splitlines()[-1])

        ch, stub = srv.stub()
        with ch:
            outcomes: dict[str, str] = {}
            reasons: dict[str, str] = {}
            for i, t in enumerate(ids):
                deadline = time.monotonic() + 10 * unit
                while True:  # killed ones end by lease or stall timeout
                    st = stub.Poll(pb.PollRequest(transfer_id=t))
                    if st.state in (pb.TRANSFER_STATE_SUCCESS, pb.TRANSFER_STATE_FAILED):
                        break
                    assert time.monotonic() < deadline, f"{t} still {pb.TransferState.Name(st.state)}"
                    time.sleep(0.05)
                if st.state == pb.TRANSFER_STATE_SUCCESS:
                    want = hashlib.sha256(payload(i, TOTAL).tobytes()).hexdigest()
                    got = json.loads((tmp_path / f"{t}.json").read_text())
                    assert got["sha256"] == want, f"{t}: checksum mismatch"
                    assert got["windows"] == TOTAL // WINDOW + 1
                    outcomes[t] = "success"
                else:
                    assert st.failure_reason, f"{t} failed without a reason"
                    outcomes[t] = st.failure_reason.split(":")[0]
                    reasons[t] = st.failure_reason
                stub.Release(pb.ReleaseRequest(transfer_id=t))

        wrong = []
        for t in ids:
            outcome, reason = outcomes[t], reasons.get(t, "")
            if t in killed_receivers:
                # The sender finished first; or the receiver's Watch ended and nobody called
                # within the grace, or its lease ran out; or, since the echoing ranks' Polls
                # keep the lease, the stall timeout blamed the receiver.
                ok = (outcome in ("success", "receiver_gone", "lease_expired")
                      or "receiver did not resume" in reason)
            elif t in killed_senders and t not in restarted:  # never came back
                ok = outcome in ("success", "sender_gone") or "sender delivered nothing" in reason
            else:  # untouched, or killed and restarted
                ok = outcome == "success"
            if not ok:
                wrong.append(t)
        roles = {t: ("sender killed" + (", restarted" if t in restarted else "") if t in killed_senders
                     else "receiver killed" if t in killed_receivers else "untouched") for t in ids}
        assert not wrong, "unexpected outcomes (time unit {:.2f}s, agents ready in {:.2f}s):\n{}".format(
            unit, slowest, "\n".join(f"  {t} ({roles[t]}): {outcomes[t]}: {reasons.get(t, '')}" for t in ids))
        print(f"chaos: {len(killed_senders)} senders and {len(killed_receivers)} receivers "
              f"SIGKILLed, {len(restarted)} senders restarted, {echoed['duplicates']} late "
              f"duplicate resumes; time unit {unit:.2f}s; outcomes {sorted(outcomes.values())}")
        srv.assert_pool_free()
    finally:
        for a in agents:
            if a.proc.poll() is None:
                a.proc.kill()
        assert srv.stop() == 0

"""Chaos with real processes: senders SIGKILLed mid-stream (some restarted), receivers that vanish,
late duplicate resumes from another process. Afterwards every transfer is SUCCESS with a matching
checksum or FAILED with a reason, and the whole pool is free."""

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

from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

from chaos_agents import payload
from kvserver import start_server

AGENTS = str(Path(__file__).with_name("chaos_agents.py"))
TRANSFERS, TOTAL, WINDOW = 10, 400, 32


def test_chaos(tmp_path: Path) -> None:
    srv = start_server(num_blocks=64, block_tokens=8, lease_timeout=2, stall_timeout=3,
                       bootstrap_timeout=5, retention=120)
    rng = random.Random(1234)
    ids = [f"chaos-{i}" for i in range(TRANSFERS)]

    def spawn(*args: object) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, AGENTS, *map(str, args)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    try:
        receivers = {t: spawn("receiver", srv.target, t, WINDOW, tmp_path / f"{t}.json") for t in ids}
        senders = {t: spawn("sender", srv.target, t, i, TOTAL) for i, t in enumerate(ids)}
        echo = spawn("echo-ranks", srv.target, 6, *ids)
        killed_senders = rng.sample(ids, 4)
        restarted = killed_senders[:2]
        killed_receivers = rng.sample([t for t in ids if t not in killed_senders], 2)
        with srv.stub()[0] as ch0:  # kills land mid-stream: wait until every transfer moves
            probe = pb_grpc.TransferServiceStub(ch0)
            deadline = time.monotonic() + 30
            for t in ids:
                while True:
                    try:
                        if probe.Poll(pb.PollRequest(transfer_id=t)).sent_tokens > 0:
                            break
                    except grpc.RpcError:
                        pass  # not opened yet
                    assert time.monotonic() < deadline, f"{t} never started"
                    time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        for t in killed_senders:
            senders[t].send_signal(signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 0.2))
        for t in killed_receivers:
            receivers[t].send_signal(signal.SIGKILL)
        time.sleep(0.3)
        for t in restarted:  # a new sender process re-sends from token 0: delivered rows are skipped
            senders[t] = spawn("sender", srv.target, t, ids.index(t), TOTAL)

        for p in [*senders.values(), *receivers.values(), echo]:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                raise
        echo_out = echo.communicate()[0]
        assert echo.returncode == 0, echo.stderr.read() if echo.stderr else echo_out
        echoed = json.loads(echo_out.strip().splitlines()[-1])

        ch, stub = srv.stub()
        with ch:
            outcomes: dict[str, str] = {}
            reasons: dict[str, str] = {}
            for i, t in enumerate(ids):
                deadline = time.monotonic() + 15
                while True:  # killed ones end by lease or stall timeout
                    st = stub.Poll(pb.PollRequest(transfer_id=t))
                    if st.state in (pb.TRANSFER_STATE_SUCCESS, pb.TRANSFER_STATE_FAILED):
                        break
                    assert time.monotonic() < deadline, f"{t} still {st.state}"
                    time.sleep(0.1)
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
        untouched = [t for t in ids if t not in killed_senders and t not in killed_receivers]
        assert all(outcomes[t] == "success" for t in untouched), outcomes
        assert all(outcomes[t] == "success" for t in restarted if t not in killed_receivers), outcomes
        for t in killed_receivers:
            # The sender finished first; or the receiver's lease ran out; or, since the echoing
            # ranks' Polls keep the lease, the stall timeout named the receiver as the culprit.
            assert (outcomes[t] in ("success", "lease_expired")
                    or "receiver did not resume" in reasons[t]), (outcomes, reasons)
        for t in killed_senders[2:]:  # never restarted: the stall timeout names the sender
            assert outcomes[t] == "success" or "sender delivered nothing" in reasons[t], reasons
        print(f"chaos: {len(killed_senders)} senders and {len(killed_receivers)} receivers "
              f"SIGKILLed, {len(restarted)} senders restarted, {echoed['duplicates']} late "
              f"duplicate resumes; outcomes {sorted(outcomes.values())}")
        srv.assert_pool_free()
    finally:
        for p in [*senders.values(), *receivers.values()]:
            if p.poll() is None:
                p.kill()
        assert srv.stop() == 0

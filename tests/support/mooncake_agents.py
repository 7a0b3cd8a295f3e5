"""Processes for the Mooncake tests, each printing JSON lines on stdout.

    python mooncake_agents.py host-a ADDRESS TOTAL WINDOW   # a server on ADDRESS, then its receiver
    python mooncake_agents.py sender TARGET TID TOTAL [TRANSPORT]
    python mooncake_agents.py stuck-writer TARGET TID TOTAL  # gets a grant, writes, never commits
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading

import numpy as np

from kvferry.client import Client, TransferFailed
from kvferry.testing import launch
from kvferry.v1 import transfer_pb2 as pb

ROW = 256


def payload(total: int) -> np.ndarray:
    return np.random.default_rng(total).integers(0, 256, (total, ROW), dtype=np.uint8)


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def host_a(address: str, total: int, window: int) -> None:
    """This "host": a kvferry server offering mooncake on ADDRESS, and the receiver of "cross"."""
    srv = launch({"host": address, "mooncake": "tcp", "num_blocks": 64, "block_tokens": 16,
                  "row_bytes": ROW, "default_window_tokens": window, "bootstrap_timeout": 60,
                  "stall_timeout": 60, "lease_timeout": 60})
    try:
        say(target=srv.target)
        with Client(srv.target) as rx:
            data = b"".join(bytes(w.data) for w in rx.receive("cross", window))
        push = ('grpc_method="Push",grpc_service="kvferry.v1.TransferService",'
                'grpc_type="client_stream"')
        attach = ('grpc_code="OK",grpc_method="Attach",grpc_service="kvferry.v1.TransferService",'
                  'grpc_type="server_stream"')
        say(sha=hashlib.sha256(data).hexdigest(),
            push_messages=srv.metric("grpc_server_msg_received_total", push),
            attach_ok=srv.wait_metric("grpc_server_handled_total", attach, 1),
            transports=list(srv.pool_info().transports))
    finally:
        srv.stop()


def sender(target: str, tid: str, total: int, transport: str) -> None:
    with Client(target) as tx:
        try:
            st = tx.send(tid, payload(total), transport=transport)
            say(state=pb.TransferState.Name(st.state))
        except TransferFailed as e:
            say(failed=e.reason)


def stuck_writer(target: str, tid: str, total: int) -> None:
    """A one-sided writer that dies mid-write: it writes its grant through the engine, says so,
    and hangs before committing (the test SIGKILLs it)."""
    import grpc

    from kvferry.client.mooncake import MooncakeWriter
    from kvferry.v1 import transfer_pb2_grpc as pb_grpc

    stub = pb_grpc.TransferServiceStub(grpc.insecure_channel(target))
    writer = MooncakeWriter(stub.GetPoolInfo(pb.GetPoolInfoRequest()))
    grant = next(stub.Attach(pb.AttachRequest(transfer_id=tid, total_tokens=total,
                                              transport="mooncake")))
    say(writing=grant.epoch, blocks=list(grant.block_indices))
    writer.write(grant, payload(total), 0, grant.start_token + grant.tokens)
    say(written=grant.epoch)
    threading.Event().wait()


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "host-a":
        host_a(args[0], int(args[1]), int(args[2]))
    elif role == "sender":
        sender(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else "auto")
    else:
        stuck_writer(args[0], args[1], int(args[2]))

"""A sender stuck mid-transfer, for the tests of transfers that break off."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import grpc
import torch

from kvferry.integrations.vllm.wire import Header
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1.transfer_pb2_grpc import TransferServiceStub


class StalledSender:
    """A sender that Pushes an embedding's first rows, then stops sending without ending its
    stream (an encoder stuck mid-transfer); ``cut()`` ends the stream there."""

    def __init__(self, target: str, tid: str, emb: torch.Tensor, rows: int) -> None:
        self._channel = grpc.insecure_channel(target)
        self._go = threading.Event()
        data = emb.contiguous().view(torch.uint8).numpy()

        def messages() -> Iterator[pb.PushRequest]:
            yield pb.PushRequest(transfer_id=tid, total_tokens=len(emb),
                                 metadata=Header.of(emb).encode())
            yield pb.PushRequest(start_token=0, rows=data[:rows].tobytes())
            self._go.wait()

        self._call = TransferServiceStub(self._channel).Push.future(messages())

    def cut(self) -> None:
        self._go.set()
        with contextlib.suppress(grpc.RpcError):
            self._call.result(timeout=30)
        self._channel.close()

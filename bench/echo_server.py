"""The baseline: a bare grpc.aio server, no interceptors, no kvferry, same message sizes.

    python -m bench.echo_server ROW_BYTES BUFFER_BYTES [--cuda]

Methods:
  /echo.Echo/Unary       decode a PollRequest, answer a TransferStatus of the same fields and size
                         as kvferry's Poll answer (what any protobuf servicer does per call)
  /echo.Echo/RawUnary    bytes in, a fixed reply out: gRPC alone, no codec
  /echo.Echo/Sink        client stream: copy each message into a preallocated buffer
  /echo.Echo/Source      server stream: send the preallocated buffer in 4 MiB messages
  /echo.Echo/SinkCuda    (--cuda) client stream: each message through a pinned buffer into GPU
                         memory, synchronously
"""

from __future__ import annotations

import json
import sys

import grpc
import numpy as np

from kvferry.client.contract import MESSAGE_BUDGET
from kvferry.v1 import transfer_pb2 as pb


async def main(row_bytes: int, buffer_bytes: int, cuda: bool = False) -> None:
    buffer = np.empty(buffer_bytes, dtype=np.uint8)
    chunk = (MESSAGE_BUDGET // row_bytes) * row_bytes
    raw_reply = bytes(48)

    async def unary(request: pb.PollRequest, context: grpc.aio.ServicerContext) -> pb.TransferStatus:
        return pb.TransferStatus(transfer_id=request.transfer_id, state=pb.TRANSFER_STATE_BOOTSTRAPPING,
                                 window_tokens=8, block_indices=[0], last_resume_sent_tokens=-1)

    async def raw_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return raw_reply

    async def sink(requests, context):
        offset = 0
        async for msg in requests:
            n = len(msg)
            end = min(offset + n, buffer_bytes)
            buffer[offset:end] = np.frombuffer(msg, dtype=np.uint8, count=end - offset)
            offset = end % buffer_bytes
        return raw_reply

    async def source(request: bytes, context: grpc.aio.ServicerContext):
        size = int.from_bytes(request[:8], "little") if len(request) >= 8 else buffer_bytes
        size = min(size, buffer_bytes)
        for off in range(0, size, chunk):
            yield buffer[off:min(off + chunk, size)].tobytes()

    device_buffer = None
    if cuda:
        import torch

        pinned = torch.empty(MESSAGE_BUDGET + row_bytes, dtype=torch.uint8, pin_memory=True)
        device_buffer = torch.empty(buffer_bytes, dtype=torch.uint8, device="cuda:0")
        stream = torch.cuda.Stream()

    async def sink_cuda(requests, context):
        """gRPC streaming + pinned host-to-device copy of each message: the CUDA baseline."""
        assert device_buffer is not None
        offset = 0
        async for msg in requests:
            n = len(msg)
            pinned.numpy()[:n] = np.frombuffer(msg, dtype=np.uint8)
            end = min(offset + n, buffer_bytes)
            with torch.cuda.stream(stream):
                device_buffer[offset:end].copy_(pinned[:end - offset], non_blocking=True)
            stream.synchronize()
            offset = end % buffer_bytes
        return raw_reply

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=pb.PollRequest.FromString,
            response_serializer=pb.TransferStatus.SerializeToString),
        "RawUnary": grpc.unary_unary_rpc_method_handler(raw_unary),
        "Sink": grpc.stream_unary_rpc_method_handler(sink),
        "Source": grpc.unary_stream_rpc_method_handler(source),
    }
    if cuda:
        handlers["SinkCuda"] = grpc.stream_unary_rpc_method_handler(sink_cuda)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024),
                                      ("grpc.server.max_pending_requests", 16384)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("echo.Echo", handlers)])
    server.add_registered_method_handlers("echo.Echo", handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"event": "serving", "grpc_port": port}), flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    from kvferry.server.app import run_loop  # the same event loop as the kvferry server

    run_loop(main(int(sys.argv[1]), int(sys.argv[2]), "--cuda" in sys.argv[3:]))

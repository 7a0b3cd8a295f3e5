"""The vLLM connector's parts on a real GPU (marker ``cuda``; skipped without one): an encoder
output on the GPU sent through CUDA IPC into a cuda:0 pool, and staged by the worker's rank into
a tensor on its GPU straight out of the pool mapped through CUDA IPC, in one window or several.
These parts import no vLLM, so they run where vLLM is not installed (the device machine);
tests/integrations/vllm_connector drives them through vLLM itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import torch

from kvferry.integrations.vllm.config import ConnectorConfig
from kvferry.integrations.vllm.consumer import Arrivals, Loader
from kvferry.integrations.vllm.producer import Producer

from support.kvserver import ServerProcess, start_server, wait_until

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
WIDTH = 1024  # bfloat16 columns: 2 KiB rows


@pytest.fixture(scope="module")
def gpu_server() -> Iterator[ServerProcess]:
    srv = start_server(device="cuda:0", num_blocks=16, block_tokens=16, row_bytes=WIDTH * 2,
                       default_window_tokens=64)
    yield srv
    assert srv.stop() == 0


def calls(srv: ServerProcess, method: str) -> float:
    try:
        return srv.metric("grpc_server_started_total", f'grpc_method="{method}",grpc_service='
                          '"kvferry.v1.TransferService",grpc_type="server_stream"')
    except KeyError:  # no such call yet
        return 0.0


@pytest.mark.parametrize("tokens", [64, 200])  # one window (mapped pool); four (windowed)
def test_a_gpu_embedding_lands_in_a_gpu_encoder_cache(gpu_server: ServerProcess,
                                                      tokens: int) -> None:
    config = ConnectorConfig(target=gpu_server.target, sender_wait_s=60)
    engine = uuid.uuid4().hex
    producer = Producer(config)
    arrivals = Arrivals(config, torch.bfloat16, engine=engine)
    loader = Loader(config, torch.device("cuda:0"), (WIDTH, torch.bfloat16), engine=engine)
    watches, reads = calls(gpu_server, "Watch"), calls(gpu_server, "Read")
    try:
        emb = torch.randn((tokens, WIDTH), device="cuda:0", dtype=torch.bfloat16)
        h = f"gpu-{tokens}-{time.monotonic_ns()}"
        producer.save(emb * 1, h)  # a fresh output, maybe still being computed
        wait_until(lambda: arrivals.ensure("r", [(h, tokens)]), "the embedding arriving", within=60)
        arrivals.allocated("r", h, tokens)
        cache: dict[str, torch.Tensor] = {}
        loader.load(arrivals.take_loads([]), cache)
        assert cache[h].device == torch.device("cuda:0") and torch.equal(cache[h], emb)
        wait_until(lambda: producer.pending() == 0, "the send ending")
        assert producer.counts.sent == 1
        gpu_server.assert_pool_free()
        # Every window is copied out of the pool mapped through CUDA IPC, none Read; the
        # scheduler watched, and the rank as the transfer's reader.
        assert calls(gpu_server, "Watch") - watches == 2
        assert calls(gpu_server, "Read") == reads
        assert gpu_server.wait_metric("grpc_server_handled_total", 'grpc_code="OK",grpc_method='
                                      '"Attach",grpc_service="kvferry.v1.TransferService",'
                                      'grpc_type="server_stream"', 1) >= 1  # CUDA IPC, not Push
    finally:
        for part in (producer, arrivals, loader):
            part.close()

"""Real vLLM objects around KvferryECConnector: the connector built by vLLM's own factory from an
ECTransferConfig, and vllm.v1 Requests and SchedulerOutputs to drive it with."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from vllm.config import ECTransferConfig, ModelConfig, ParallelConfig, VllmConfig
from vllm.distributed.ec_transfer.ec_connector.base import ECConnectorBase, ECConnectorRole
from vllm.distributed.ec_transfer.ec_connector.factory import ECConnectorFactory
from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.outputs import ECConnectorOutput
from vllm.v1.request import Request

from support.kvserver import wait_until

SCHEDULER, WORKER = ECConnectorRole.SCHEDULER, ECConnectorRole.WORKER


def make(role: ECConnectorRole, ec_role: str, model: Path, target: str,
         parallel: ParallelConfig | None = None, engine: str | None = None,
         **extra: Any) -> ECConnectorBase:
    """The connector as an engine serving MODEL builds it (an EC producer needs a multimodal
    model in its config). ENGINE: the engine id a language engine's scheduler and its workers
    share (vLLM hands them one config); None: a fresh one."""
    config = VllmConfig(model_config=ModelConfig(model=str(model), dtype="float32"),
                        parallel_config=parallel or ParallelConfig(),
                        ec_transfer_config=ECTransferConfig(
        ec_connector="KvferryECConnector", ec_connector_module_path="kvferry.integrations.vllm",
        ec_role=ec_role, engine_id=engine,
        ec_connector_extra_config={"kvferry_target": target, **extra}))
    return ECConnectorFactory.create_connector(config, role)


def image_hash(seed: int) -> str:
    return hashlib.sha256(f"image {seed}".encode()).hexdigest()


def request(request_id: str, mm_hash: str, tokens: int, offset: int = 2,
            ec_transfer_params: dict[str, Any] | None = None) -> Request:
    """A request whose prompt holds one image of TOKENS placeholders at OFFSET (with the
    EC_TRANSFER_PARAMS a proxy gave it, as vLLM's OpenAI server passes them on)."""
    feature = MultiModalFeatureSpec(data=None, modality="image", identifier=mm_hash,
                                    mm_position=PlaceholderRange(offset=offset, length=tokens))
    extra = {"ec_transfer_params": ec_transfer_params} if ec_transfer_params else None
    return Request(request_id, prompt_token_ids=[1] * (offset + tokens + 4),
                   sampling_params=SamplingParams(max_tokens=1, extra_args=extra),
                   pooling_params=None, mm_features=[feature])


def encode_step(scheduler: ECConnectorBase, worker: ECConnectorBase, req: Request,
                cache: dict[str, torch.Tensor], embedding: torch.Tensor) -> None:
    """One encoder step for REQ's image as vLLM runs it: the scheduler considers the request,
    the worker gets the step's metadata, and the image is encoded (its EMBEDDING put in CACHE)
    unless CACHE holds it already."""
    assert scheduler.ensure_cache_available(req, 0)
    worker.bind_connector_metadata(scheduler.build_connector_meta(SchedulerOutput.make_empty()))
    try:
        worker.start_save_caches(encoder_cache=cache)
        h = req.mm_features[0].identifier
        if h not in cache:
            cache[h] = embedding
            worker.save_caches(cache, h)
    finally:
        worker.clear_connector_metadata()


def step(scheduler: ECConnectorBase, worker: ECConnectorBase, cache: dict[str, torch.Tensor],
         freed: list[str] = ()) -> ECConnectorOutput:  # type: ignore[assignment]
    """One engine step as vLLM runs it: the scheduler's metadata to the worker, the worker loads,
    and its output goes back to the scheduler."""
    out = SchedulerOutput.make_empty()
    out.free_encoder_mm_hashes = list(freed)
    worker.bind_connector_metadata(scheduler.build_connector_meta(out))
    try:
        worker.start_load_caches(cache)
    finally:
        result = ECConnectorOutput(ec_connector_worker_meta=worker.build_connector_worker_meta())
        worker.clear_connector_metadata()
    scheduler.update_connector_output(result)
    return result


def deliver(scheduler: ECConnectorBase, worker: ECConnectorBase,
            req: Request) -> tuple[dict[str, torch.Tensor], ECConnectorOutput]:
    """REQ's one image, once it arrived, allocated and taken in as vLLM does it: the encoder
    cache after that step, and the step's connector output."""
    wait_until(lambda: scheduler.ensure_cache_available(req, 0), "the embedding staged")
    assert scheduler.has_cache_item(req.mm_features[0].identifier)
    scheduler.update_state_after_alloc(req, 0)
    cache: dict[str, torch.Tensor] = {}
    return cache, step(scheduler, worker, cache)

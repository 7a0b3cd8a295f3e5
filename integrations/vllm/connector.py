"""``KvferryECConnector``: vLLM's encoder-cache connector on kvferry, for both roles.

Load it by name (README, "Use it from vLLM")::

    --ec-transfer-config '{"ec_connector": "KvferryECConnector",
        "ec_connector_module_path": "kvferry.integrations.vllm", "ec_role": "ec_producer",
        "ec_connector_extra_config": {"kvferry_target": "kvferry:50051"}}'

vLLM builds one instance per process role: SCHEDULER (in the engine core: decides what is
loaded) and WORKER (beside the model: moves the rows). The producer side lives in the worker
(``save_caches``); the consumer side in both (``consumer.Arrivals``, ``consumer.Loader``).

Two behaviours of vLLM 0.32 shape this class:
- ``request_finished`` answers ``False`` (never delays the free): its scheduler frees a request's
  blocks after a delayed free only on the *KV* connector's ``finished_sending``, so ``True`` here
  would keep every encoder request forever. The producer keeps the encoder output alive by
  holding its own reference until the send is done instead.
- A worker with nothing scheduled never runs the connector, so the scheduler cannot wait for
  its workers through vLLM: it tells every rank what to stage over a channel of its own
  (``ranks``) and lets a request run only once every rank holds its whole embedding. The step
  then moves staged tensors into the encoder cache: a request is never computed on rows that
  did not arrive.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.ec_transfer.ec_connector.base import (
    ECConnectorBase,
    ECConnectorMetadata,
    ECConnectorRole,
)
from vllm.distributed.ec_transfer.ec_connector.utils import (
    PlaceholderMetadataResolver,
    collect_ec_item_metadata,
)

from kvferry.integrations.vllm.config import ConfigError, ConnectorConfig
from kvferry.integrations.vllm.consumer import Arrivals, Load, Loader
from kvferry.integrations.vllm.producer import Producer, Routes
from kvferry.integrations.vllm.ranks import engine_name

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

log = logging.getLogger("kvferry.integrations.vllm")
# KVFERRY_LOG_LEVEL=DEBUG (or INFO): the connector says what it does, per image, on stderr beside
# vLLM's own log; unset, only its warnings and errors are printed.
LOG_LEVEL_ENV = "KVFERRY_LOG_LEVEL"


def _log_to_stderr() -> None:
    level = os.environ.get(LOG_LEVEL_ENV, "").upper()
    root = logging.getLogger("kvferry")
    if not level or root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        f"(kvferry pid={os.getpid()}) %(levelname)s %(asctime)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


@dataclass
class KvferryECMetadata(ECConnectorMetadata):
    """Scheduler -> worker, each step. Language side: the staged embeddings to move into the
    encoder cache. Encoder side: (image, kvferry server) pairs, where each image goes."""
    loads: list[Load] = field(default_factory=list)
    routes: list[tuple[str, str]] = field(default_factory=list)


class KvferryECConnector(ECConnectorBase):
    def __init__(self, vllm_config: VllmConfig, role: ECConnectorRole) -> None:
        super().__init__(vllm_config=vllm_config, role=role)
        _log_to_stderr()
        ec = vllm_config.ec_transfer_config
        assert ec is not None  # the base class refused a config without it
        self.config = ConnectorConfig.from_extra(ec.ec_connector_extra_config)
        _refuse_pipeline_parallel(vllm_config)
        ranks = vllm_config.parallel_config.tensor_parallel_size
        self.producer: Producer | None = None
        self.routes: Routes | None = None
        self.arrivals: Arrivals | None = None
        self.loader: Loader | None = None
        engine = _engine_name(vllm_config)
        if role == ECConnectorRole.WORKER:
            rank = _tensor_parallel_rank(ranks)
            # Every rank of an encoder computes the same embedding: rank 0 sends it.
            if self.is_producer and rank == 0:
                self.producer = Producer(self.config)
            # Every rank of a language model needs every row: each takes every window in
            # itself, as one of the transfer's readers.
            if self.is_consumer:
                self.loader = Loader(self.config, _worker_device(), _model_rows(vllm_config),
                                     reader=rank, engine=engine)
        else:  # the scheduler (ec_both: both halves)
            if self.is_producer:
                self.routes = Routes(self.config)
                # vLLM's own reading of which placeholder fields this model's consumers need.
                self._resolver = PlaceholderMetadataResolver(vllm_config.model_config)
            if self.is_consumer:
                rows = _model_rows(vllm_config)
                # Staged embeddings wait beside the encoder cache: bounded by its size.
                budget = int(getattr(vllm_config.scheduler_config, "encoder_cache_size", 0) or 0)
                self.arrivals = Arrivals(self.config, rows[1] if rows else None,
                                         readers=ranks, engine=engine, budget_rows=budget)
        log.info("kvferry EC connector: %s, %s, server %s", role.name.lower(),
                 "producer" if self.is_producer else "consumer", self.config.target)

    # -- worker -----------------------------------------------------------------------------

    def start_save_caches(self, **kwargs: Any) -> None:
        encoder_cache = kwargs.get("encoder_cache")
        if self.producer is None or encoder_cache is None:
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvferryECMetadata)
        self.producer.route(meta.routes, encoder_cache)

    def save_caches(self, encoder_cache: dict[str, torch.Tensor], mm_hash: str,
                    **kwargs: Any) -> None:
        if self.producer is not None:
            self.producer.encoded(encoder_cache[mm_hash], mm_hash)

    def start_load_caches(self, encoder_cache: dict[str, torch.Tensor], **kwargs: Any) -> None:
        if self.loader is None:
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvferryECMetadata)
        if meta.loads:
            self.loader.load(meta.loads, encoder_cache)

    # -- scheduler --------------------------------------------------------------------------

    def ensure_cache_available(self, request: Request, num_computed_tokens: int) -> bool:
        items = _items_ahead(request, num_computed_tokens)
        if self.routes is not None:
            self.routes.ensure(request.ec_transfer_params, [h for h, _ in items])
        if self.arrivals is None:
            return True
        return self.arrivals.ensure(request.request_id, items)

    def has_cache_item(self, identifier: str) -> bool:
        return self.arrivals is not None and self.arrivals.has(identifier)

    def update_state_after_alloc(self, request: Request, index: int) -> None:
        if self.arrivals is not None:
            self.arrivals.allocated(request.request_id, request.mm_features[index].identifier,
                                    request.get_num_encoder_embeds(index))

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> ECConnectorMetadata:
        meta = KvferryECMetadata()
        if self.routes is not None:
            meta.routes = self.routes.take()
        if self.arrivals is not None:
            meta.loads = self.arrivals.take_loads(scheduler_output.free_encoder_mm_hashes)
        return meta

    def take_unavailable_requests(self) -> set[str]:
        return set() if self.arrivals is None else self.arrivals.take_unavailable()

    def request_finished(self, request: Request) -> tuple[bool, dict[str, Any] | None]:
        """The encoder's answer names, per image, vLLM's placeholder metadata (so a consumer
        of a model that declares such fields can take the request without its pixels) and the
        kvferry server and transfer it went to."""
        if self.arrivals is not None:
            self.arrivals.finished(request.request_id, [f.identifier for f in request.mm_features])
        if self.routes is not None and request.mm_features:
            items = collect_ec_item_metadata(request.mm_features, self._resolver)
            return False, self.routes.published(request.ec_transfer_params, items)
        return False, None

    def shutdown(self) -> None:
        for part in (self.producer, self.arrivals, self.loader):
            if part is not None:
                part.close()
        self.producer = self.arrivals = self.loader = None


def _refuse_pipeline_parallel(vllm_config: VllmConfig) -> None:
    """Tensor-parallel ranks share each transfer (one reader each). Pipeline stages would each
    need only some layers' share of the work and run their own connectors: not supported yet,
    so such an engine is refused at start, not broken."""
    par = vllm_config.parallel_config
    if par.pipeline_parallel_size > 1:
        raise ConfigError(
            f"KvferryECConnector supports tensor parallelism, not pipeline parallelism; this "
            f"engine has pipeline_parallel_size={par.pipeline_parallel_size}: use "
            f"--pipeline-parallel-size 1 on this instance")


def _engine_name(vllm_config: VllmConfig) -> str:
    """What names the channel between this engine's scheduler and its ranks: the EC config's
    engine id (a fresh uuid unless set: the scheduler and workers get the same config) and the
    data-parallel rank."""
    ec = vllm_config.ec_transfer_config
    assert ec is not None
    return engine_name(str(ec.engine_id), vllm_config.parallel_config.data_parallel_rank)


def _tensor_parallel_rank(ranks: int) -> int:
    """This worker's tensor-parallel rank (its groups are set up before the connector)."""
    if ranks == 1:
        return 0
    from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

    return int(get_tensor_model_parallel_rank())


def _items_ahead(request: Request, num_computed_tokens: int) -> list[tuple[str, int]]:
    """The request's items whose placeholders are not all computed yet: (content hash, rows)."""
    return [(f.identifier, request.get_num_encoder_embeds(i))
            for i, f in enumerate(request.mm_features)
            if f.mm_position.offset + f.mm_position.length > num_computed_tokens]


def _worker_device() -> torch.device:
    from vllm.platforms import current_platform

    if current_platform.is_cuda_alike():
        return torch.device(current_platform.device_type, current_platform.current_device())
    return torch.device(current_platform.device_type)


def _model_rows(vllm_config: VllmConfig) -> tuple[int, torch.dtype] | None:
    """This model's hidden size and dtype, when the engine has a model."""
    model = vllm_config.model_config
    if model is None:
        return None
    dtype = model.dtype
    return (model.get_hidden_size(), dtype) if isinstance(dtype, torch.dtype) else None

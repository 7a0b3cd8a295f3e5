"""Encoder side (``ec_producer``): send each embedding to the kvferry server of the language
instance that serves its request.

Scheduler (``Routes``): a request names its language instance's kvferry server in
``ec_transfer_params`` (``{"kvferry_target": "host:port"}``, put there by the proxy; none: the
connector's own ``kvferry_target``). Each step hands the worker the (image, server) pairs of the
requests it considers: vLLM's worker sees embeddings, not requests.

Worker (``Producer``): ``save`` returns at once; the send runs on the bridge's loop and waits
there for the language engine's Open (up to the server's --bootstrap-timeout). The send holds its
own reference to the encoder output, so the rows stay valid until it is done even after vLLM
evicts the entry from its encoder cache. An image this encoder already holds (encoded for an
earlier request, which another instance served) is sent from its cache, without encoding it
again. Each (server, content hash) is sent once: while its send is in flight or after it
succeeded, a repeat is skipped (counted); after a failed send, a later save tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from kvferry.client.contract import TransportUnavailable
from kvferry.client.errors import KvferryError, TransferFailed
from kvferry.integrations.vllm.bridge import Bridge
from kvferry.integrations.vllm.config import ConnectorConfig
from kvferry.integrations.vllm.wire import Header, HeaderError, transfer_id, transfer_secret

log = logging.getLogger("kvferry.integrations.vllm")
# Hashes remembered as sent: bounded, oldest forgotten first (then a repeat is sent again).
SENT_MEMORY = 65536


@dataclass
class ProducerCounts:
    sent: int = 0
    skipped_repeats: int = 0
    failed: int = 0
    refused_full: int = 0


TARGET_KEY = "kvferry_target"  # in a request's ec_transfer_params


class Routes:
    """Scheduler side: which kvferry server each image of the requests considered goes to."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.pending: list[tuple[str, str]] = []
        self._refused: set[str] = set()

    def target_of(self, params: dict[str, Any] | None) -> str | None:
        """The kvferry server a request's images go to; None for one this encoder refuses."""
        named = (params or {}).get(TARGET_KEY)
        target = self.config.target if named is None else str(named)
        return target if self.config.allows(target) else None

    def ensure(self, params: dict[str, Any] | None, mm_hashes: list[str]) -> None:
        target = self.target_of(params)
        if target is None:
            refused = str((params or {}).get(TARGET_KEY))
            if refused not in self._refused:  # said once per server: the fix is a setting
                self._refused.add(refused)
                log.error("kvferry: a request names the kvferry server %r, which is not this "
                          "encoder's kvferry_target or one of its kvferry_targets: its images are "
                          "not sent there (add it to kvferry_targets if it is yours)", refused)
        # "": known, and sent nowhere (not to the default server either).
        self.pending += [(h, target or "") for h in mm_hashes]
        log.debug("ensure: %s to %r", mm_hashes, target)

    def take(self) -> list[tuple[str, str]]:
        out, self.pending = self.pending, []
        return out

    def published(self, params: dict[str, Any] | None,
                  items: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """What the encoder's answer carries in ``ec_transfer_params``, per content hash: vLLM's
        own entry (``item_indices``, placeholder ``metadata``), and where kvferry sends it."""
        target = self.target_of(params)
        if target is None:
            return items
        prefix = self.config.transfer_id_prefix
        return {h: {**entry, TARGET_KEY: target, "kvferry_transfer_id": transfer_id(prefix, h)}
                for h, entry in items.items()}


class Producer:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.bridge = Bridge(config, "kvferry-vllm-producer")
        self.in_flight: dict[tuple[str, str], Future[None]] = {}
        self.sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        # Servers named for images not encoded yet: their save_caches sends there.
        self.routes: OrderedDict[str, set[str]] = OrderedDict()
        self.counts = ProducerCounts()
        self._complaints: set[str] = set()

    def route(self, routes: list[tuple[str, str]], encoder_cache: dict[str, torch.Tensor]) -> None:
        """This step's (image, server) pairs: an image already in ENCODER_CACHE is sent now (it
        will not be encoded again); another, once it is."""
        for h, target in routes:
            log.debug("route: %s to %r (%s)", h, target,
                      "cached: sent now" if h in encoder_cache else "sent once encoded")
            if h not in encoder_cache:
                self.routes.setdefault(h, set()).add(target)
                while len(self.routes) > SENT_MEMORY:
                    self.routes.popitem(last=False)
            elif target:
                self.save(encoder_cache[h], h, target)

    def encoded(self, embedding: torch.Tensor, mm_hash: str) -> None:
        """MM_HASH was just encoded: send it where its requests go (the connector's own
        ``kvferry_target`` when no route came; "" is a refused server: nowhere)."""
        targets = self.routes.pop(mm_hash, None)
        log.debug("encoded: %s, sent to %s", mm_hash,
                  "the default server" if targets is None else sorted(targets))
        for target in sorted({self.config.target} if targets is None else targets):
            if target:
                self.save(embedding, mm_hash, target)

    def save(self, embedding: torch.Tensor, mm_hash: str,
             target: str | None = None) -> Future[None] | None:
        """Start sending MM_HASH's embedding to TARGET (the connector's ``kvferry_target`` by
        default); None when it is not sent (a repeat, or refused)."""
        self._reap()
        key = (target or self.config.target, mm_hash)
        if key in self.in_flight or key in self.sent:
            self.counts.skipped_repeats += 1
            log.debug("not sent: %s to %s is %s", mm_hash, key[0],
                      "in flight" if key in self.in_flight else "sent already")
            return None
        if len(self.in_flight) >= self.config.max_sends_in_flight:
            self.counts.refused_full += 1
            self._complain("full", f"{len(self.in_flight)} sends are waiting for their consumer "
                           "(kvferry_max_sends_in_flight): this one is not sent (the language "
                           "engine's kvferry_on_failure decides what it does without it); is the "
                           "language engine up and using kvferry?")
            return None
        try:
            header = Header.of(embedding)
        except HeaderError as e:
            self._complain("header", str(e))
            return None
        rows = embedding.detach().contiguous()
        # A GPU output may still be being computed on the encoder's stream: the send waits for
        # this point of that stream, on its own thread, so the encode step does not.
        done = None
        if rows.is_cuda:
            done = torch.cuda.Event()
            done.record()
        fut = self.bridge.submit(self._send(key, rows, header, done))
        self.in_flight[key] = fut
        return fut

    async def _send(self, key: tuple[str, str], rows: torch.Tensor, header: Header,
                    computed: torch.cuda.Event | None) -> None:
        target, mm_hash = key
        tid = transfer_id(self.config.transfer_id_prefix, mm_hash)
        client = self.bridge.client_for(target)
        if computed is not None:
            await asyncio.get_running_loop().run_in_executor(None, computed.synchronize)
        log.debug("send: %s to %s as %s", mm_hash, target, tid)
        try:
            info = await client.pool_info()
            if info.row_bytes != header.row_bytes:
                raise HeaderError(
                    f"the kvferry server at {target} holds rows of {info.row_bytes} "
                    f"bytes but this model's embeddings are {header.width} x {header.dtype} = "
                    f"{header.row_bytes} bytes per token: start kvferry with --row-bytes "
                    f"{header.row_bytes}")
            await client.send(tid, rows, metadata=header.encode(), transport=self.config.transport,
                              secret=transfer_secret(self.config.secret, tid))
        except asyncio.CancelledError:
            # The engine is shutting down: say so, or the consumer waits out the stall timeout.
            with contextlib.suppress(KvferryError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(client.abort(tid, "the encoder engine shut down before "
                                                    "the embedding was sent",
                                                    secret=transfer_secret(self.config.secret, tid)),
                                       2.0)
            raise
        except (KvferryError, HeaderError, TransportUnavailable, OSError) as e:
            self.counts.failed += 1
            if isinstance(e, (HeaderError, TransportUnavailable)):
                self._complain(type(e).__name__, str(e))  # a setting to fix: said once
            else:
                what = e.reason if isinstance(e, TransferFailed) else str(e)
                log.warning("kvferry: the embedding of %s was not delivered (transfer %s): %s",
                            mm_hash, tid, what)
            raise
        self.counts.sent += 1
        log.debug("sent: %s to %s", mm_hash, target)
        self.sent[key] = None
        while len(self.sent) > SENT_MEMORY:
            self.sent.popitem(last=False)

    def _reap(self) -> None:
        for key in [key for key, f in self.in_flight.items() if f.done()]:
            del self.in_flight[key]

    def pending(self) -> int:
        self._reap()
        return len(self.in_flight)

    def _complain(self, key: str, message: str) -> None:
        if key not in self._complaints:  # once per kind: the fix is the same every time
            self._complaints.add(key)
            log.error("kvferry: %s", message)

    def close(self) -> None:
        """Sends still waiting are cancelled: their transfers fail and the consumer learns why."""
        self.bridge.close()

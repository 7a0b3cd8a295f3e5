"""Encoder side (``ec_producer``), in the worker: send each new embedding through kvferry.

``save_caches`` returns at once; the send runs on the bridge's loop and waits there for the
language engine's Open (up to the server's --bootstrap-timeout). The send holds its own reference
to the encoder output, so the rows stay valid until it is done even after vLLM evicts the entry
from its encoder cache. A content hash is sent once: while its send is in flight or after it
succeeded, a repeat is skipped (counted); after a failed send, a later save tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

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


class Producer:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.bridge = Bridge(config, "kvferry-vllm-producer")
        self.in_flight: dict[str, Future[None]] = {}
        self.sent: OrderedDict[str, None] = OrderedDict()
        self.counts = ProducerCounts()
        self._complaints: set[str] = set()

    def save(self, embedding: torch.Tensor, mm_hash: str) -> Future[None] | None:
        """Start sending MM_HASH's embedding; None when it is not sent (a repeat, or refused)."""
        self._reap()
        if mm_hash in self.in_flight or mm_hash in self.sent:
            self.counts.skipped_repeats += 1
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
        fut = self.bridge.submit(self._send(mm_hash, rows, header, done))
        self.in_flight[mm_hash] = fut
        return fut

    async def _send(self, mm_hash: str, rows: torch.Tensor, header: Header,
                    computed: torch.cuda.Event | None) -> None:
        tid = transfer_id(self.config.transfer_id_prefix, mm_hash)
        client = self.bridge.client
        if computed is not None:
            await asyncio.get_running_loop().run_in_executor(None, computed.synchronize)
        try:
            info = await client.pool_info()
            if info.row_bytes != header.row_bytes:
                raise HeaderError(
                    f"the kvferry server at {self.config.target} holds rows of {info.row_bytes} "
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
        self.sent[mm_hash] = None
        while len(self.sent) > SENT_MEMORY:
            self.sent.popitem(last=False)

    def _reap(self) -> None:
        for h in [h for h, f in self.in_flight.items() if f.done()]:
            del self.in_flight[h]

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

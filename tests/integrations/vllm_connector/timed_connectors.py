"""The connectors the end-to-end test loads by name, timed: each subclass only records how long
the connector's own calls take (JSON lines into $KVFERRY_EC_TIMINGS), so that kvferry and vLLM's
file-based ECExampleConnector are measured the same way in the same run."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from vllm.distributed.ec_transfer.ec_connector.example_connector import ECExampleConnector

from kvferry.integrations.vllm import KvferryECConnector


def _record(**fields: Any) -> None:
    path = os.environ.get("KVFERRY_EC_TIMINGS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(fields) + "\n")


class _Timed:
    """save_caches and start_load_caches timed; the wait before an item is available too."""

    _waiting_since: dict[str, float]

    def save_caches(self, encoder_cache: Any, mm_hash: str, **kwargs: Any) -> None:
        t = time.perf_counter()
        super().save_caches(encoder_cache, mm_hash, **kwargs)  # type: ignore[misc]
        _record(call="save", mm_hash=mm_hash, seconds=time.perf_counter() - t)

    def start_load_caches(self, encoder_cache: Any, **kwargs: Any) -> None:
        before = set(encoder_cache)
        t = time.perf_counter()
        super().start_load_caches(encoder_cache, **kwargs)  # type: ignore[misc]
        loaded = sorted(set(encoder_cache) - before)
        if loaded:
            _record(call="load", mm_hashes=loaded, seconds=time.perf_counter() - t)

    def ensure_cache_available(self, request: Any, num_computed_tokens: int) -> bool:
        """Timed from the first call that had to wait to the one that found it available."""
        waiting = self.__dict__.setdefault("_waiting_since", {})
        t = time.perf_counter()
        ready = super().ensure_cache_available(request, num_computed_tokens)  # type: ignore[misc]
        if not ready:
            waiting.setdefault(request.request_id, t)
        elif (since := waiting.pop(request.request_id, None)) is not None:
            _record(call="wait", request_id=request.request_id, seconds=time.perf_counter() - since)
        return ready


class TimedKvferryECConnector(_Timed, KvferryECConnector):
    pass


class TimedECExampleConnector(_Timed, ECExampleConnector):
    pass

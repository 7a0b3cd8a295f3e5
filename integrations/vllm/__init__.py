"""vLLM's encoder-cache (EC) connector on kvferry: ``KvferryECConnector`` (docs/vllm.md).

The connector class is imported on first use, so that its vLLM-free parts (``producer``,
``consumer``, ``wire``) import where vLLM is not installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KvferryECConnector"]


def __getattr__(name: str) -> Any:
    # vLLM's factory looks the class up with getattr(module, name): this answers it.
    if name == "KvferryECConnector":
        from kvferry.integrations.vllm.connector import KvferryECConnector

        return KvferryECConnector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""vLLM's encoder-cache (EC) connector on kvferry: ``KvferryECConnector`` (docs/vllm.md)."""

from kvferry.integrations.vllm.connector import KvferryECConnector

__all__ = ["KvferryECConnector"]

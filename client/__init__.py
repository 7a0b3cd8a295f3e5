"""kvferry's Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from kvferry.client.aio import AsyncClient, Window
from kvferry.client.errors import KvferryError, TransferFailed
from kvferry.client.sync import Client

__all__ = ["AsyncClient", "Client", "KvferryError", "TransferFailed", "Window"]

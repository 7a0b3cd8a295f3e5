"""kvferry's Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio)."""

from kvferry.client.aio import AsyncClient, TransferFailed, Window
from kvferry.client.sync import Client

__all__ = ["AsyncClient", "Client", "TransferFailed", "Window"]

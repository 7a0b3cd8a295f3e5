"""Fault injection (off unless --faults is given): fail or delay chosen RPCs at a given rate."""

from __future__ import annotations

import asyncio
import random
from typing import Any, Awaitable, Callable

import grpc

from kvferry.server.handlers import behavior_of, same_shape


class FaultInjector(grpc.aio.ServerInterceptor):
    def __init__(self, faults: list[tuple[str, str, float, float]], seed: int = 0) -> None:
        self._by_method: dict[str, list[tuple[str, float, float]]] = {}
        for method, action, seconds, rate in faults:
            self._by_method.setdefault(method, []).append((action, seconds, rate))
        self._random = random.Random(seed or None)

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        faults = self._by_method.get(details.method.rsplit("/", 1)[-1])
        if handler is None or not faults:
            return handler

        async def before(context: grpc.aio.ServicerContext) -> None:
            for action, seconds, rate in faults:
                if self._random.random() >= rate:
                    continue
                if action == "delay":
                    await asyncio.sleep(seconds)
                else:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"injected fault ({details.method}): retry")

        behavior = behavior_of(handler)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            return await behavior(request, context)

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            async for item in behavior(request, context):
                yield item

        return same_shape(handler, streaming if handler.response_streaming else unary)

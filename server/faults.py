"""Fault injection (off unless --faults is given): fail or delay chosen RPCs at a given rate."""

from __future__ import annotations

import asyncio
import random

import grpc

from kvferry.server.status_details import abort
from kvferry.statemachine import Reason


class FaultPlan:
    def __init__(self, faults: list[tuple[str, str, float, float]], seed: int = 0) -> None:
        self._by_method: dict[str, list[tuple[str, float, float]]] = {}
        for method, action, seconds, rate in faults:
            self._by_method.setdefault(method, []).append((action, seconds, rate))
        self._random = random.Random(seed or None)

    def covers(self, method: str) -> bool:
        return method in self._by_method

    async def apply(self, method: str, context: grpc.aio.ServicerContext) -> None:
        for action, seconds, rate in self._by_method.get(method, ()):
            if self._random.random() >= rate:
                continue
            if action == "delay":
                await asyncio.sleep(seconds)
            else:
                await abort(context, grpc.StatusCode.UNAVAILABLE, f"injected fault ({method}): retry",
                            Reason.FAULT_INJECTED)

"""Wake the calls that wait on a transfer (a blocked Push, a Watch) when the core changes it."""

from __future__ import annotations

import asyncio


class ChangeNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def notify(self, transfer_id: str) -> None:
        for f in self._waiters.pop(transfer_id, ()):
            if not f.done():
                f.set_result(None)

    async def wait(self, transfer_id: str, timeout: float | None = None) -> None:
        """Until the next change of ``transfer_id`` (or ``timeout``). Re-check after waking: the
        caller checks its condition and calls this with no await in between, so none is missed."""
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(transfer_id, [])
        waiters.append(f)
        try:
            if timeout is None:
                await f
            else:
                await asyncio.wait({f}, timeout=timeout)
        finally:
            current = self._waiters.get(transfer_id)
            if current is not None and f in current:
                current.remove(f)
                if not current:
                    del self._waiters[transfer_id]

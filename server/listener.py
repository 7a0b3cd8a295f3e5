"""The shell's one Listener: wakes waiting calls and the timer, and observes the histograms."""

from __future__ import annotations

import asyncio

from kvferry.server.metrics import TransferHistograms
from kvferry.server.notifier import ChangeNotifier
from kvferry.server.status_cache import StatusCache
from kvferry.server.storage import BlockStorage
from kvferry.statemachine import Listener, Transfer


class ShellListener(Listener):
    def __init__(self, notifier: ChangeNotifier, histograms: TransferHistograms,
                 statuses: StatusCache, storage: BlockStorage) -> None:
        self.notifier = notifier
        self.histograms = histograms
        self.statuses = statuses
        self.storage = storage
        self.timer_wakeup = asyncio.Event()  # the timer task sleeps until the next deadline

    def window_blocks(self, blocks: list[int], epoch: int) -> None:
        self.storage.mark_window(blocks, epoch)

    def deadline_sooner(self, deadline: float) -> None:
        self.timer_wakeup.set()

    def changed(self, t: Transfer) -> None:
        self.notifier.notify(t.transfer_id)

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        self.histograms.resume_applied(t, window_wait)

    def finished(self, t: Transfer) -> None:
        self.histograms.finished(t)

    def released(self, t: Transfer, by: str) -> None:
        self.statuses.forget(t)
        self.notifier.notify(t.transfer_id)

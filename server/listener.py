"""The shell's one Listener: wakes waiting calls and the timer, and observes the histograms."""

from __future__ import annotations

import asyncio

from kvferry.server.endings import Endings
from kvferry.server.metrics import TransferHistograms
from kvferry.server.notifier import ChangeNotifier
from kvferry.server.status_cache import StatusCache
from kvferry.server.storage import BlockStorage
from kvferry.server.transfer_secrets import SecretBook
from kvferry.statemachine import Fence, Listener, Transfer


class ShellListener(Listener):
    def __init__(self, notifier: ChangeNotifier, histograms: TransferHistograms,
                 statuses: StatusCache, storage: BlockStorage, secrets: SecretBook) -> None:
        self.notifier = notifier
        self.secrets = secrets
        self.endings = Endings(secrets)
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
        self.endings.finished(t)

    def fenced(self, t: Transfer, fence: Fence) -> None:
        self.secrets.fenced(t, fence.epoch)

    def fence_lifted(self, fence: Fence) -> None:
        self.secrets.lifted(fence.epoch)

    def released(self, t: Transfer, by: str) -> None:
        self.statuses.forget(t)
        self.secrets.forget(t)
        self.notifier.notify(t.transfer_id)

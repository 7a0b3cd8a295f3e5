"""The shell's one Listener: wakes waiting calls, then counts metrics."""

from __future__ import annotations

from kvferry.server.metrics import TransferMetrics
from kvferry.server.notifier import ChangeNotifier
from kvferry.statemachine import Listener, Transfer


class ShellListener(Listener):
    def __init__(self, notifier: ChangeNotifier, metrics: TransferMetrics) -> None:
        self.notifier = notifier
        self.metrics = metrics

    def opened(self, t: Transfer) -> None:
        self.metrics.opened(t)

    def changed(self, t: Transfer) -> None:
        self.notifier.notify(t.transfer_id)

    def delivered(self, t: Transfer, tokens: int) -> None:
        self.metrics.delivered(t, tokens)

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        self.metrics.resume_applied(t, window_wait)

    def resume_duplicate(self, t: Transfer, reason: str) -> None:
        self.metrics.resume_duplicate(t, reason)

    def finished(self, t: Transfer) -> None:
        self.metrics.finished(t)

    def released(self, t: Transfer, by: str) -> None:
        self.metrics.released(t, by)
        self.notifier.notify(t.transfer_id)

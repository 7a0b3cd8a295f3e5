"""The shell's one Listener: wakes waiting calls, and observes the histograms."""

from __future__ import annotations

from kvferry.server.metrics import TransferHistograms
from kvferry.server.notifier import ChangeNotifier
from kvferry.statemachine import Listener, Transfer


class ShellListener(Listener):
    def __init__(self, notifier: ChangeNotifier, histograms: TransferHistograms) -> None:
        self.notifier = notifier
        self.histograms = histograms

    def changed(self, t: Transfer) -> None:
        self.notifier.notify(t.transfer_id)

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        self.histograms.resume_applied(t, window_wait)

    def finished(self, t: Transfer) -> None:
        self.histograms.finished(t)

    def released(self, t: Transfer, by: str) -> None:
        self.notifier.notify(t.transfer_id)

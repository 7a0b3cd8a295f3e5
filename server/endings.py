"""How transfers end: one log line for each, and the most recent failures for ``Stats`` (and
so ``kvferry status``/``top``), kept after their Release."""

from __future__ import annotations

import logging
from collections import deque

from kvferry.server import logs
from kvferry.server.status_cache import status_of
from kvferry.server.transfer_secrets import SecretBook
from kvferry.statemachine import Outcome, State, Transfer
from kvferry.v1 import transfer_pb2 as pb

RECENT_FAILURES = 32
# Outcomes someone chose (success, or a client's Abort) are news at INFO; the rest (a timeout,
# shutdown, an error) mean something went wrong.
_CHOSEN = (Outcome.SUCCESS, Outcome.ABORTED)


class Endings:
    def __init__(self, secrets: SecretBook) -> None:
        self.secrets = secrets
        self.recent_failures: deque[pb.TransferSummary] = deque(maxlen=RECENT_FAILURES)

    def finished(self, t: Transfer) -> None:
        duration = max(0.0, t.finished_at - t.opened_at)
        logs.event(logging.INFO if t.outcome in _CHOSEN else logging.WARNING, "transfer_finished",
                   transfer_id=t.transfer_id, incarnation=t.incarnation, outcome=t.outcome,
                   reason=t.failure_reason, total_tokens=t.total_tokens, sent_tokens=t.sent_tokens,
                   windows=t.resume_count + 1, duration_seconds=round(duration, 6))
        if t.state is State.FAILED:
            status = status_of(t)
            if self.secrets.locked(t):
                status.ClearField("metadata")
            self.recent_failures.appendleft(pb.TransferSummary(
                status=status, age_seconds=duration, idle_seconds=t.finished_at - t.last_progress_at,
                outcome=t.outcome, metadata_bytes=len(t.metadata)))

"""What the core reports: the ``Listener`` it tells of every decision, the outcomes a transfer
can end with, and the lifetime totals behind metrics and Stats."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvferry.statemachine.fence import Fence
from kvferry.statemachine.lifecycle import Transfer


class Outcome:
    """Why a transfer reached its terminal state (a bounded label set)."""

    SUCCESS = "success"
    ABORTED = "aborted"
    BOOTSTRAP_TIMEOUT = "bootstrap_timeout"
    STALL_TIMEOUT = "stall_timeout"
    LEASE_EXPIRED = "lease_expired"
    SENDER_GONE = "sender_gone"
    RECEIVER_GONE = "receiver_gone"
    SHUTDOWN = "shutdown"
    ERROR = "error"

    ALL = (SUCCESS, ABORTED, BOOTSTRAP_TIMEOUT, STALL_TIMEOUT, LEASE_EXPIRED, SENDER_GONE,
           RECEIVER_GONE, SHUTDOWN, ERROR)


@dataclass
class Totals:
    """Lifetime counts: what metrics and the Stats RPC report, kept in one place."""

    started: int = 0
    resumes_applied: int = 0
    tokens_received: int = 0
    duplicates: dict[str, int] = field(default_factory=lambda: {"repeat": 0, "stale": 0})
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Outcome.ALL, 0))
    released: dict[str, int] = field(default_factory=lambda: {"client": 0, "retention": 0})
    # Commits answered as duplicates (a repeat of rows already delivered).
    commit_duplicates: int = 0
    # Fences lifted: by the writer's commit or detach, or by the fence timeout.
    fences_lifted: dict[str, int] = field(default_factory=lambda: {"commit": 0, "detach": 0, "timeout": 0})


class Listener:
    """What the coordinator decided. The server subclasses it to wake waiters and count metrics."""

    def opened(self, t: Transfer) -> None:
        """``t`` was just opened (``changed`` follows)."""

    def changed(self, t: Transfer) -> None:
        """Anything a Poll or Watch of ``t`` could see changed (also: ``t`` was just opened)."""

    def delivered(self, t: Transfer, tokens: int) -> None:
        """``tokens`` rows were committed into the pool."""

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        """A resume was applied; ``window_wait`` is seconds from window full to this resume."""

    def resume_duplicate(self, t: Transfer, reason: str) -> None:
        """A resume was skipped: ``repeat`` (same sent_tokens as the last applied) or ``stale``."""

    def finished(self, t: Transfer) -> None:
        """``t`` reached a terminal state; ``t.outcome`` says why."""

    def released(self, t: Transfer, by: str) -> None:
        """``t`` was forgotten: ``by`` is ``client`` or ``retention``."""

    def window_blocks(self, blocks: list[int], epoch: int) -> None:
        """``blocks`` now belong to the window of ``epoch``; epoch 0: to no window any more
        (freed, fenced, or trimmed off). Reported before anyone else can be given them."""

    def deadline_sooner(self, deadline: float) -> None:
        """A timeout now falls due at ``deadline``, before any other: call ``expire`` then."""

    def fenced(self, t: Transfer, fence: Fence) -> None:
        """The window of ``t`` lent to a one-sided writer went to quarantine as ``fence``."""

    def fence_lifted(self, fence: Fence) -> None:
        """``fence`` was lifted: its blocks are free."""

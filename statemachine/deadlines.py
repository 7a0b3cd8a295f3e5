"""When each transfer's next timeout falls due, and which one it is.

The rules: a live transfer fails when it makes no progress for ``stall_timeout``; in
BOOTSTRAPPING, also when no sender attached within ``bootstrap_timeout`` of the Open; and when its
receiver makes no call (Poll, Watch, Read, Resume) for ``lease_timeout``, unless a Watch stream is
open (it holds the lease); and when a side left (the sender's last Push or Attach ended before
the last row, or the receiver's last Watch opened ``until_done`` ended before the transfer did)
and made no call within ``reconnect_grace``. A terminal transfer is released ``retention`` after it ended. (Fences
keep their own deadlines: ``fence.py``.)

``Deadlines`` is a lazy heap: progress costs nothing here, because a popped entry is checked
against the transfer's true deadline and rescheduled if that moved.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator

from kvferry.statemachine.lifecycle import State, Transfer
from kvferry.statemachine.limits import Limits
from kvferry.statemachine.reports import Outcome


def due_at(t: Transfer, limits: Limits) -> float:
    """The moment ``t``'s next timeout falls due."""
    if t.state.terminal:
        return t.finished_at + limits.retention
    due = t.last_progress_at + limits.stall_timeout
    if t.state is State.BOOTSTRAPPING:
        due = min(due, t.opened_at + limits.bootstrap_timeout)
    if not t.watchers:
        due = min(due, t.lease_renewed_at + limits.lease_timeout)
    if t.readers_left:
        due = min(due, min(t.readers_left.values()) + limits.reconnect_grace)
    if not t.senders and t.sender_left_at is not None:
        due = min(due, t.sender_left_at + limits.reconnect_grace)
    return due


def timeout_of(t: Transfer, limits: Limits, now: float) -> tuple[str, str]:
    """Which timeout a live transfer due at ``now`` hit: (outcome, failure reason)."""
    if t.state is State.BOOTSTRAPPING and now >= t.opened_at + limits.bootstrap_timeout:
        return Outcome.BOOTSTRAP_TIMEOUT, (f"bootstrap_timeout: no sender attached within "
                                           f"{limits.bootstrap_timeout:g}s of Open")
    if not t.watchers and now >= t.lease_renewed_at + limits.lease_timeout:
        return Outcome.LEASE_EXPIRED, (f"lease_expired: the receiver made no call (Poll, Watch, "
                                       f"Read, Resume) for {limits.lease_timeout:g}s")
    grace = limits.reconnect_grace
    if not t.senders and t.sender_left_at is not None and now >= t.sender_left_at + grace:
        return Outcome.SENDER_GONE, (f"sender_gone: the sender's stream ended (cancelled, refused "
                                     f"or its connection lost) with {t.sent_tokens} of "
                                     f"{t.total_tokens} tokens delivered, and no sender came "
                                     f"back within {grace:g}s")
    gone = [r for r, at in sorted(t.readers_left.items()) if now >= at + grace]
    if gone:
        who = "the receiver's" if t.readers == 1 else f"reader {gone[0]} (of {t.readers})'s"
        return Outcome.RECEIVER_GONE, (f"receiver_gone: {who} Watch ended (cancelled, or its "
                                       f"connection lost) and it made no call within {grace:g}s")
    return Outcome.STALL_TIMEOUT, (f"stall_timeout: no progress for {limits.stall_timeout:g}s "
                                   f"({_stall_cause(t)})")


def _stall_cause(t: Transfer) -> str:
    if t.waiting_for_blocks:
        return "no free pool blocks for the next window"
    if t.window_full:
        return "the window is full and the receiver did not resume"
    if t.state is State.BOOTSTRAPPING:
        return "no sender attached"
    return f"the sender delivered nothing after token {t.sent_tokens}"


class Deadlines:
    def __init__(self, limits: Limits, sooner: Callable[[float], None]) -> None:
        """``sooner(deadline)``: a deadline now falls before any other scheduled."""
        self.limits = limits
        self._sooner = sooner
        # (deadline, seq, transfer); several entries of one transfer may be here at once.
        self._heap: list[tuple[float, int, Transfer]] = []
        self._seq = itertools.count()
        # Transfers released since the heap was last compacted: their entries wait here until
        # due, holding the transfer; compaction bounds that to the transfers still held.
        self._stale = 0

    def schedule(self, t: Transfer) -> None:
        """``t``'s deadline may have moved sooner: note it (a later one needs no call)."""
        deadline = due_at(t, self.limits)
        sooner = not self._heap or deadline < self._heap[0][0]
        heapq.heappush(self._heap, (deadline, next(self._seq), t))
        if sooner:
            self._sooner(deadline)

    def released(self, held: int) -> None:
        """A transfer was released; ``held`` remain."""
        self._stale += 1
        if self._stale > held + 64:
            self._compact()

    def due(self, now: float) -> Iterator[Transfer]:
        """The held transfers whose deadline has come, earliest first. Handling one may schedule
        others (a failure's retention): the heap is read afresh for each."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, t = heapq.heappop(heap)
            if t.released:
                continue
            if due_at(t, self.limits) > now:
                self.schedule(t)
            else:
                yield t

    def next(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def _compact(self) -> None:
        """Drop the entries of released transfers, and keep only the earliest of each held one
        (``due`` re-checks a popped entry against the true deadline, so a later duplicate adds
        nothing)."""
        earliest: dict[Transfer, tuple[float, int, Transfer]] = {}
        for entry in self._heap:
            t = entry[2]
            if not t.released and (t not in earliest or entry < earliest[t]):
                earliest[t] = entry
        self._heap = list(earliest.values())
        heapq.heapify(self._heap)
        self._stale = 0

"""The coordinator: every transfer, the block allocator, and the policy around the lifecycle table.

It turns requests into lifecycle events or typed refusals (``refusals``). It does no I/O and reads
no clock: callers pass ``now`` (seconds, monotonic) and copy row bytes themselves, between
``begin_write`` and ``end_write``. Everything it decides is reported to a ``Listener``. The rules
live beside it: the transitions in ``lifecycle``, the refusals in ``refusals``, the timeouts in
``deadlines``, the fences in ``fence``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from kvferry.statemachine import refusals
from kvferry.statemachine.allocator import BlockAllocator
from kvferry.statemachine.answers import CommitResult, Grant, ResumeResult, Segment, WriteTicket
from kvferry.statemachine.deadlines import Deadlines, timeout_of
from kvferry.statemachine.fence import Fence, Quarantine
from kvferry.statemachine.lifecycle import (
    READERS_PENDING,
    IllegalTransition,
    Refusal,
    State,
    Transfer,
    fire,
    must_fire,
)
from kvferry.statemachine.limits import MAX_FAILURE_REASON_BYTES, Limits
from kvferry.statemachine.reports import Listener, Outcome, Totals


class Coordinator:
    def __init__(self, limits: Limits, listener: Listener | None = None,
                 first_incarnation: int = 1) -> None:
        """``first_incarnation``: the first opening's number; each later one counts up from it.
        A server passes its start time in microseconds, so that openings are numbered apart
        across restarts too (no server opens a transfer per microsecond)."""
        self.limits = limits
        self.listener = listener or Listener()
        self.totals = Totals()
        self._opened = itertools.count()
        self.allocator = BlockAllocator(limits.num_blocks)
        self.transfers: dict[str, Transfer] = {}
        self._draining = False
        # Held transfers per state, kept as they change so that metrics never walk all transfers.
        self.state_counts: dict[State, int] = {s: 0 for s in State}
        # Resumes waiting for blocks, first come first served.
        self._waiting: OrderedDict[str, Transfer] = OrderedDict()
        self.deadlines = Deadlines(limits, lambda due: self.listener.deadline_sooner(due))
        # Window epochs, unique across every transfer and opening.
        self._epochs = itertools.count(1)
        self._incarnations = itertools.count(max(1, first_incarnation))
        self.quarantine = Quarantine()

    # -- queries -------------------------------------------------------------------------------

    def get(self, transfer_id: str, incarnation: int = 0) -> Transfer:
        """The transfer held under ``transfer_id``; with ``incarnation`` (non-zero), only if it is
        that opening of the id: a call meant for an opening since released is refused, never
        applied to the next one."""
        t = self.transfers.get(transfer_id)
        if t is None:
            refusals.check_id(transfer_id)
            raise refusals.not_found(transfer_id)
        if incarnation and incarnation != t.incarnation:
            raise refusals.stale_incarnation(t, incarnation)
        return t

    def observe(self, transfer_id: str, now: float, incarnation: int = 0,
                reader: int | None = None) -> Transfer:
        """``get`` by the receiver (Poll, Read; Resume names its ``reader``): renews its lease.
        Not progress. A call of a reader that had left says it is back; one that names no
        reader says so only of a transfer with one."""
        t = self.get(transfer_id, incarnation)
        t.lease_renewed_at = now
        if reader is not None:
            t.readers_left.pop(reader, None)
        elif t.readers == 1:
            t.readers_left.clear()
        return t

    def watch_started(self, t: Transfer, now: float, reader: int = 0) -> None:
        """A Watch stream holds the receiver's lease for as long as it is open."""
        refusals.check_reader(t, reader)
        t.watchers += 1
        t.reader_watchers[reader] = t.reader_watchers.get(reader, 0) + 1
        t.lease_renewed_at = now
        t.readers_left.pop(reader, None)

    def watch_ended(self, t: Transfer, now: float, until_done: bool = False,
                    reader: int = 0) -> None:
        """``until_done``: the reader promised to watch until the transfer ended, so if it is
        still live, that reader is gone (its Watch was cancelled, or its connection lost): it
        has the reconnect grace to call again, not the whole lease."""
        t.watchers -= 1
        t.reader_watchers[reader] -= 1
        t.lease_renewed_at = now
        if t.state.terminal or t.released:
            return
        if until_done and not t.reader_watchers[reader]:
            t.readers_left[reader] = now
            self.deadlines.schedule(t)
        elif not t.watchers:
            # The lease counts again: the deadline may now fall before the one scheduled.
            self.deadlines.schedule(t)

    def sender_started(self, t: Transfer) -> None:
        """A sender stream (Push, Attach) attached and is open."""
        t.senders += 1
        t.sender_left_at = None

    def sender_ended(self, t: Transfer, now: float) -> None:
        """A sender stream ended. A sender sends until every row is delivered, so one that
        ends with the transfer live (cancelled, refused, its connection lost) left it: unless
        a sender calls again within the reconnect grace, the transfer fails."""
        t.senders -= 1
        if not t.senders and not t.state.terminal and not t.released:
            t.sender_left_at = now
            self.deadlines.schedule(t)

    @property
    def resumes_waiting(self) -> int:
        return len(self._waiting)

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def live_count(self) -> int:
        return sum(self.state_counts[s] for s in State if not s.terminal)

    def list_transfers(self, after: int = -1, states: frozenset[State] | set[State] = frozenset(),
                       limit: int = 100) -> tuple[list[Transfer], bool]:
        """Held transfers opened after the one whose ``seq`` is ``after``, oldest first, only in
        ``states`` (all when empty), at most ``limit``; and whether more follow."""
        out: list[Transfer] = []
        # Held transfers iterate in opening order (dicts keep insertion order).
        for t in self.transfers.values():
            if t.seq <= after or (states and t.state not in states):
                continue
            if len(out) == limit:
                return out, True
            out.append(t)
        return out, False

    def read_segments(self, transfer_id: str, now: float,
                      incarnation: int = 0) -> tuple[Transfer, list[Segment]]:
        """The filled rows of the current window, in token order (renews the receiver's lease)."""
        t = self.observe(transfer_id, now, incarnation)
        if t.state is State.FAILED:
            raise refusals.nothing_to_read(t)
        return t, self._segments(t, 0, t.window_filled_tokens)

    # -- receiver ------------------------------------------------------------------------------

    def open(self, transfer_id: str, window_tokens: int, now: float, readers: int = 1) -> Transfer:
        """``readers``: how many readers (tensor-parallel ranks) read every window (rule 4a)."""
        refusals.check_id(transfer_id)
        refusals.check_readers(readers, transfer_id)
        size = window_tokens or self.limits.default_window_tokens
        refusals.check_window(size, self.limits, transfer_id)
        held = self.transfers.get(transfer_id)
        if held is not None:
            raise refusals.already_held(held)
        if self._draining:
            raise refusals.draining(transfer_id)
        if len(self.transfers) >= self.limits.max_transfers:
            raise refusals.too_many_transfers(transfer_id, len(self.transfers), self.limits)
        if self._waiting:
            raise refusals.resumes_queued(transfer_id, len(self._waiting))
        want = self._blocks_for(size)
        blocks = self.allocator.alloc(want)
        if blocks is None:
            raise refusals.pool_exhausted(transfer_id, self.allocator.free_count, size, want,
                                          self.limits)
        t = Transfer(transfer_id, size, blocks, want * self.limits.block_tokens, now)
        t.readers = readers
        t.window_epoch = t.opened_epoch = next(self._epochs)
        t.incarnation = next(self._incarnations)
        self.listener.window_blocks(blocks, t.window_epoch)
        self.transfers[transfer_id] = t
        self.state_counts[t.state] += 1
        t.seq = next(self._opened)
        self.totals.started += 1
        self.listener.opened(t)
        self.deadlines.schedule(t)
        self._changed(t)
        return t

    def resume(self, transfer_id: str, sent_tokens: int, window_tokens: int, now: float,
               incarnation: int = 0, reader: int = 0) -> ResumeResult:
        t = self.observe(transfer_id, now, incarnation, reader)
        refusals.check_reader(t, reader)
        if t.last_resume_sent_tokens >= 0 and sent_tokens <= t.last_resume_sent_tokens:
            return self._duplicate(t, "repeat" if sent_tokens == t.last_resume_sent_tokens
                                   else "stale")
        if t.state.terminal:
            raise refusals.nothing_to_resume(t)
        if reader in t.resumed_by and sent_tokens == t.sent_tokens:
            return self._duplicate(t, "repeat")  # this reader's retry: never another reader's
        size = window_tokens or t.open_window_tokens
        refusals.check_window(size, self.limits, transfer_id)
        recorded = reader not in t.resumed_by
        t.resumed_by.add(reader)
        why = self._fire("resume", t, sent_tokens=sent_tokens)
        if why is not None and why.reason == READERS_PENDING:
            self._changed(t)  # watchers see readers_resumed grow
            return ResumeResult(t, False, "", t.readers - len(t.resumed_by))
        if why is not None:
            if recorded:
                t.resumed_by.discard(reader)
            raise refusals.refused_by_table(t, "resume", why)
        t.resumed_by.clear()
        window_wait = None if t.window_full_at is None else now - t.window_full_at
        t.last_resume_sent_tokens = sent_tokens
        t.resume_count += 1
        t.window_full_at = None
        t.last_progress_at = now
        self._free_window(t, now)
        # Free, then allocate: the blocks just freed are the first ones handed out again.
        t.window_start_token = t.sent_tokens
        t.window_tokens = min(self._blocks_for(size) * self.limits.block_tokens,
                              t.total_tokens - t.sent_tokens)
        t.blocks_wanted = self._blocks_for(t.window_tokens)
        self._waiting[t.transfer_id] = t
        self._serve_waiting()
        self.totals.resumes_applied += 1
        self.listener.resume_applied(t, window_wait)
        self._changed(t)
        return ResumeResult(t, False, "")

    def release(self, transfer_id: str, by: str = "client", incarnation: int = 0,
                reader: int | None = None) -> tuple[Transfer, int]:
        """Forget a terminal transfer and free its blocks. Of a transfer with several readers,
        only once every reader released it (``reader``: which one this is; None: all at once,
        as retention does): a reader still reading the last window keeps it."""
        t = self.get(transfer_id, incarnation)
        if not t.state.terminal:
            raise refusals.still_live(t)
        if reader is not None and t.readers > 1:
            refusals.check_reader(t, reader)
            t.released_by.add(reader)
            if len(t.released_by) < t.readers:
                return t, 0
        freed = len(t.blocks)
        self._free_window(t)
        del self.transfers[transfer_id]
        self.state_counts[t.state] -= 1
        t.released = True
        self.totals.released[by] += 1
        self.listener.released(t, by)
        self._serve_waiting()
        self.deadlines.released(len(self.transfers))
        return t, freed

    # -- sender --------------------------------------------------------------------------------

    def attach(self, transfer_id: str, total_tokens: int, metadata: bytes, now: float,
               incarnation: int = 0) -> Transfer:
        """The sender arrives (a Push stream's first message, or Attach). Reconnecting senders
        attach again."""
        refusals.check_sender(total_tokens, metadata, self.limits, transfer_id)
        t = self.get(transfer_id, incarnation)
        if t.state is State.FAILED:
            raise refusals.transfer_failed(t)
        if t.total_tokens and t.total_tokens != total_tokens:
            raise refusals.total_tokens_mismatch(t, total_tokens)
        if t.state is State.BOOTSTRAPPING:
            t.total_tokens = total_tokens
            t.metadata = metadata
            t.window_tokens = min(t.window_tokens, total_tokens)
            needed = self._blocks_for(t.window_tokens)
            # A short transfer gives back what it can never fill.
            if needed < len(t.blocks):
                self.listener.window_blocks(t.blocks[needed:], 0)
                t.blocks = self.allocator.shrink(t.blocks, needed)
            self._must_fire("attach", t)
            t.last_progress_at = now
            self._serve_waiting()
            self._changed(t)
        return t

    def check_sender(self, total_tokens: int, metadata: bytes, transfer_id: str = "") -> None:
        """Refuse what ``attach`` would refuse whatever the transfer: a sender that waits for
        the Open learns of its own mistakes at once."""
        refusals.check_sender(total_tokens, metadata, self.limits, transfer_id)

    def begin_write(self, transfer_id: str, start_token: int, rows: int,
                    incarnation: int = 0) -> WriteTicket:
        """Where ``rows`` rows starting at ``start_token`` go. Copy them, then ``end_write``."""
        t = self.get(transfer_id, incarnation)
        if t.state is State.FAILED:
            raise refusals.transfer_failed(t)
        if t.state is State.BOOTSTRAPPING:
            raise refusals.not_attached(t)
        if t.lent_epoch == t.window_epoch:
            raise refusals.window_lent(t)
        end = start_token + rows
        if end > t.total_tokens:
            raise refusals.rows_past_total(t, start_token, end)
        if start_token > t.sent_tokens:
            raise refusals.token_gap(t, start_token, f"start_token={start_token}")
        skip = min(rows, t.sent_tokens - start_token)
        room = 0
        if t.blocks and not t.write_in_flight:
            room = t.window_start_token + t.window_tokens - t.sent_tokens
        count = min(rows - skip, room)
        segments = self._segments(t, t.window_filled_tokens, count) if count else []
        if count:
            t.write_in_flight = True
        return WriteTicket(t, skip, count, segments)

    def end_write(self, ticket: WriteTicket, now: float, landed: bool = True) -> Transfer:
        """The copy of ``ticket`` is over: count its rows delivered if they ``landed`` in the
        pool (False: the copy never happened, e.g. the stream was cancelled first)."""
        t = ticket.transfer
        if not ticket.count:
            return t
        t.write_in_flight = False
        if t.state is State.FAILED:  # failed mid-copy: its blocks were kept until now
            self._free_window(t, now)
            self._serve_waiting()
            return t
        if not landed:
            self._changed(t)  # another Push waiting for this write's end goes on
            return t
        self._deliver(t, ticket.count, now)
        return t

    # -- one-sided sender ----------------------------------------------------------------------

    def grant(self, transfer_id: str, incarnation: int = 0) -> Grant | None:
        """Lend the current window to the one-sided writer: the rows from ``sent_tokens`` to the
        window's end. None while there is nothing to lend (not attached, window full or waiting
        for blocks, a Push copy in flight, or finished). Asked again for the same window, it
        lends the same range again (a writer that reconnected)."""
        t = self.get(transfer_id, incarnation)
        if (t.state.terminal or t.state is State.BOOTSTRAPPING or not t.blocks
                or t.write_in_flight or t.window_full):
            return None
        t.lent_epoch = t.window_epoch
        end = t.window_start_token + t.window_tokens
        return Grant(t, t.window_epoch, t.sent_tokens, end - t.sent_tokens, t.window_start_token,
                     list(t.blocks))

    def commit(self, transfer_id: str, epoch: int, start_token: int, tokens: int,
               now: float, incarnation: int = 0) -> CommitResult:
        """The one-sided writer's rows [start_token, start_token + tokens) of window ``epoch``
        have landed: deliver them exactly as a Push's."""
        t = self.get(transfer_id, incarnation)
        t.sender_left_at = None  # the writer is still there
        end = start_token + tokens
        if tokens <= 0:
            raise refusals.empty_commit(t, tokens)
        if epoch < t.opened_epoch:
            raise refusals.epoch_of_earlier_opening(t, epoch)
        if t.state is State.FAILED:
            fence = self.quarantine.get(epoch)
            if fence is not None and fence.transfer_id == transfer_id and end >= fence.end_token:
                self._lift(epoch, "commit")  # the writer finished the lent range: it stopped
            raise refusals.transfer_failed(t)
        if end <= t.sent_tokens:  # a repeat of delivered rows: a retry, or another rank's
            self.totals.commit_duplicates += 1
            return CommitResult(t, True)
        if epoch != t.window_epoch:
            raise refusals.grant_expired(t, epoch, start_token, end)
        if t.lent_epoch != epoch:
            raise refusals.not_granted(t, epoch)
        if start_token > t.sent_tokens:
            raise refusals.token_gap(t, start_token, f"commit from token {start_token}")
        window_end = t.window_start_token + t.window_tokens
        if end > window_end:
            raise refusals.commit_past_window(t, start_token, end)
        if end == window_end:
            t.lent_epoch = -1  # the grant is used up: the writer is done with these blocks
        self._deliver(t, end - t.sent_tokens, now)
        return CommitResult(t, False)

    def detach(self, transfer_id: str, epoch: int, incarnation: int = 0) -> int:
        """The one-sided writer of window ``epoch`` promises it writes no more there. A fence of
        that window is lifted (returns how many blocks it freed); a live transfer's grant is taken
        back (a new Attach, or a Push, may go on from sent_tokens), unless the writer names
        another opening (``incarnation``). Idempotent."""
        fence = self.quarantine.get(epoch)
        if fence is not None and fence.transfer_id == transfer_id:
            self._lift(epoch, "detach")
            return len(fence.blocks)
        t = self.transfers.get(transfer_id)
        if t is not None and t.lent_epoch == epoch and incarnation in (0, t.incarnation):
            t.lent_epoch = -1
            self._changed(t)
        return 0

    def _deliver(self, t: Transfer, count: int, now: float) -> None:
        t.sent_tokens += count
        t.last_progress_at = now
        self.totals.tokens_received += count
        self.listener.delivered(t, count)
        if t.state is State.RESUMING:
            self._must_fire("deliver", t)
        if self._fire("complete", t) is None:
            self._finish(t, Outcome.SUCCESS, now)
        elif t.window_full:
            t.window_full_at = now
        self._changed(t)

    def _lift(self, epoch: int, by: str) -> None:
        fence = self.quarantine.lift(epoch)
        if fence is not None:
            self.allocator.free(fence.blocks)
            self.totals.fences_lifted[by] += 1
            self.listener.fence_lifted(fence)
            self._serve_waiting()

    # -- either side, and the clock ------------------------------------------------------------

    def abort(self, transfer_id: str, reason: str, now: float, incarnation: int = 0) -> Transfer:
        refusals.check_abort_reason(reason, transfer_id)
        t = self.get(transfer_id, incarnation)
        if not t.state.terminal:
            self.fail(t, Outcome.ABORTED, f"aborted: {reason or 'no reason given'}", now)
        return t

    def fail(self, t: Transfer, outcome: str, reason: str, now: float) -> None:
        """End ``t`` FAILED. A transfer that already ended (an abort or a timeout got there
        first, say while a copy was awaited) keeps its first outcome: nothing changes."""
        if t.state.terminal:
            return
        self._must_fire("fail", t)
        t.failure_reason = _bounded(reason)
        t.window_full_at = None
        if self._waiting.pop(t.transfer_id, None) is not None:
            t.blocks_wanted = 0
        self._free_window(t, now)
        self._finish(t, outcome, now)
        self._serve_waiting()
        self._changed(t)

    def drain(self) -> None:
        """Take no new transfers (Open answers UNAVAILABLE); live ones go on."""
        self._draining = True

    def fail_all(self, outcome: str, reason: str, now: float) -> int:
        live = [t for t in self.transfers.values() if not t.state.terminal]
        for t in live:
            self.fail(t, outcome, reason, now)
        return len(live)

    def expire(self, now: float) -> None:
        """Apply every timeout due at ``now``: bootstrap, lease and stall fail; retention releases;
        fences whose writer never said it stopped are lifted."""
        for fence in self.quarantine.due(now):
            self.allocator.free(fence.blocks)
            self.totals.fences_lifted["timeout"] += 1
            self.listener.fence_lifted(fence)
            self._serve_waiting()
        for t in self.deadlines.due(now):
            if t.state.terminal:
                self.release(t.transfer_id, by="retention")
            else:
                outcome, reason = timeout_of(t, self.limits, now)
                self.fail(t, outcome, reason, now)

    def next_deadline(self) -> float | None:
        due = [d for d in (self.deadlines.next(), self.quarantine.next_deadline()) if d is not None]
        return min(due) if due else None

    # -- internals -----------------------------------------------------------------------------

    def _duplicate(self, t: Transfer, reason: str) -> ResumeResult:
        self.totals.duplicates[reason] += 1
        self.listener.resume_duplicate(t, reason)
        return ResumeResult(t, True, reason)

    def _fire(self, event: str, t: Transfer, **kwargs: int) -> Refusal | None:
        before = t.state
        why = fire(event, t, **kwargs)
        if why is None:
            self.state_counts[before] -= 1
            self.state_counts[t.state] += 1
        return why

    def _must_fire(self, event: str, t: Transfer) -> None:
        before = t.state
        must_fire(event, t)
        self.state_counts[before] -= 1
        self.state_counts[t.state] += 1

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.limits.block_tokens)

    def _segments(self, t: Transfer, first: int, count: int) -> list[Segment]:
        bt = self.limits.block_tokens
        out: list[Segment] = []
        pos, end = first, first + count
        while pos < end:
            offset = pos % bt
            n = min(bt - offset, end - pos)
            out.append(Segment(t.blocks[pos // bt], offset, n))
            pos += n
        return out

    def _free_window(self, t: Transfer, now: float | None = None) -> None:
        """Give the window's blocks back. A block is never handed on while a write into it can
        still land: a Push copy in flight keeps them until ``end_write``; a window lent to a
        one-sided writer and not fully committed goes to quarantine until the writer says it
        stopped, or the fence timeout."""
        if not t.blocks or t.write_in_flight:
            return
        self.listener.window_blocks(t.blocks, 0)
        if t.lent_epoch == t.window_epoch:
            if now is None:  # every path that can meet a lent window passes the time
                raise IllegalTransition(f"{t.transfer_id!r}: a lent window freed without a clock")
            fence = Fence(t.window_epoch, t.transfer_id, t.blocks,
                          t.window_start_token + t.window_tokens, now + self.limits.fence_timeout)
            if self.quarantine.add(fence):
                self.listener.deadline_sooner(fence.deadline)
            self.listener.fenced(t, fence)
            t.lent_epoch = -1
        else:
            self.allocator.free(t.blocks)
        t.blocks = []
        t.window_epoch = next(self._epochs)

    def _serve_waiting(self) -> None:
        while self._waiting:
            t = next(iter(self._waiting.values()))
            blocks = self.allocator.alloc(t.blocks_wanted)
            if blocks is None:
                return
            del self._waiting[t.transfer_id]
            t.blocks = blocks
            t.blocks_wanted = 0
            self.listener.window_blocks(blocks, t.window_epoch)
            self._changed(t)

    def _finish(self, t: Transfer, outcome: str, now: float) -> None:
        t.outcome = outcome
        t.finished_at = now
        self.deadlines.schedule(t)  # retention may fall before the live deadline
        self.totals.finished[outcome] += 1
        self.listener.finished(t)

    def _changed(self, t: Transfer) -> None:
        t.version += 1
        self.listener.changed(t)


def _bounded(reason: str) -> str:
    """``reason`` cut to MAX_FAILURE_REASON_BYTES (at a character boundary)."""
    data = reason.encode()
    if len(data) <= MAX_FAILURE_REASON_BYTES:
        return reason
    return data[:MAX_FAILURE_REASON_BYTES - 3].decode(errors="ignore") + "..."

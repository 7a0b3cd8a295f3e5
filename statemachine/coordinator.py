"""The coordinator: every transfer, the block allocator, and the policy around the lifecycle table.

It turns requests into lifecycle events or typed refusals (``errors``). It does no I/O and reads no
clock: callers pass ``now`` (seconds, monotonic) and copy row bytes themselves, between
``begin_write`` and ``end_write``. Everything it decides is reported to a ``Listener``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from kvferry.statemachine.allocator import BlockAllocator
from kvferry.statemachine.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from kvferry.statemachine.lifecycle import State, Transfer, fire, must_fire

MAX_ID_BYTES = 256
# Far beyond any request (2^48 tokens), and well inside the wire's int64 fields.
MAX_TOTAL_TOKENS = 2**48


class Outcome:
    """Why a transfer reached its terminal state (a bounded label set)."""

    SUCCESS = "success"
    ABORTED = "aborted"
    BOOTSTRAP_TIMEOUT = "bootstrap_timeout"
    STALL_TIMEOUT = "stall_timeout"
    LEASE_EXPIRED = "lease_expired"
    SHUTDOWN = "shutdown"
    ERROR = "error"

    ALL = (SUCCESS, ABORTED, BOOTSTRAP_TIMEOUT, STALL_TIMEOUT, LEASE_EXPIRED, SHUTDOWN, ERROR)


@dataclass(frozen=True)
class Limits:
    num_blocks: int
    block_tokens: int
    default_window_tokens: int
    bootstrap_timeout: float
    stall_timeout: float
    retention: float
    # A receiver that makes no call (Poll, Watch, Read, Resume) for this long loses the transfer.
    lease_timeout: float = 30.0
    max_transfers: int = 100_000

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_tokens", "default_window_tokens", "max_transfers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("bootstrap_timeout", "stall_timeout", "retention", "lease_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")
        if self.default_window_tokens > self.pool_tokens:
            raise ValueError(f"default_window_tokens={self.default_window_tokens} exceeds the pool "
                             f"({self.pool_tokens} tokens)")

    @property
    def pool_tokens(self) -> int:
        return self.num_blocks * self.block_tokens


@dataclass
class Totals:
    """Lifetime counts: what metrics and the Stats RPC report, kept in one place."""

    started: int = 0
    resumes_applied: int = 0
    tokens_received: int = 0
    duplicates: dict[str, int] = field(default_factory=lambda: {"repeat": 0, "stale": 0})
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Outcome.ALL, 0))
    released: dict[str, int] = field(default_factory=lambda: {"client": 0, "retention": 0})


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

    def deadline_sooner(self, deadline: float) -> None:
        """A timeout now falls due at ``deadline``, before any other: call ``expire`` then."""


class Segment(NamedTuple):
    """``tokens`` consecutive rows of one pool block, from row ``offset`` of that block."""

    block: int
    offset: int
    tokens: int


@dataclass(frozen=True, slots=True)
class WriteTicket:
    """What to do with a message of rows: skip ``skip`` (already delivered), then copy ``count``
    rows into ``segments``; the rest must wait for the next window."""

    transfer: Transfer
    skip: int
    count: int
    segments: list[Segment]


class ResumeResult(NamedTuple):
    transfer: Transfer
    duplicate: bool
    duplicate_reason: str  # "" when applied


class Coordinator:
    def __init__(self, limits: Limits, listener: Listener | None = None) -> None:
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
        # (deadline, seq, transfer); lazily re-checked when popped, so progress costs nothing here.
        self._deadlines: list[tuple[float, int, Transfer]] = []
        self._seq = itertools.count()

    # -- queries -------------------------------------------------------------------------------

    def get(self, transfer_id: str) -> Transfer:
        t = self.transfers.get(transfer_id)
        if t is None:
            _check_id(transfer_id)
            raise NotFound(f"no transfer {transfer_id!r}: it was never opened, or was released "
                           f"(by Release or after retention)")
        return t

    def observe(self, transfer_id: str, now: float) -> Transfer:
        """``get`` by the receiver (Poll, Read): renews its lease. Not progress."""
        t = self.get(transfer_id)
        t.lease_renewed_at = now
        return t

    def watch_started(self, t: Transfer, now: float) -> None:
        """A Watch stream holds the receiver's lease for as long as it is open."""
        t.watchers += 1
        t.lease_renewed_at = now

    def watch_ended(self, t: Transfer, now: float) -> None:
        t.watchers -= 1
        t.lease_renewed_at = now
        if not t.watchers and not t.state.terminal and not t.released:
            # The lease counts again: the deadline may now fall before the one scheduled.
            self._schedule(t, self._deadline(t))

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

    def read_segments(self, transfer_id: str, now: float) -> tuple[Transfer, list[Segment]]:
        """The filled rows of the current window, in token order (renews the receiver's lease)."""
        t = self.observe(transfer_id, now)
        if t.state is State.FAILED:
            raise FailedPrecondition(f"transfer {transfer_id!r} failed ({t.failure_reason}); "
                                     f"its blocks are freed, nothing to read")
        return t, self._segments(t, 0, t.window_filled_tokens)

    # -- receiver ------------------------------------------------------------------------------

    def open(self, transfer_id: str, window_tokens: int, now: float) -> Transfer:
        _check_id(transfer_id)
        size = window_tokens or self.limits.default_window_tokens
        self._check_window(size)
        held = self.transfers.get(transfer_id)
        if held is not None:
            raise AlreadyExists(f"transfer {transfer_id!r} is already held ({held.state.name}); "
                                f"Release it first, or open a new id")
        if self._draining:
            raise Unavailable("the server is shutting down and takes no new transfers; "
                              "open on another replica")
        if len(self.transfers) >= self.limits.max_transfers:
            raise ResourceExhausted(f"{len(self.transfers)} transfers are held, the limit "
                                    f"(--max-transfers) is {self.limits.max_transfers}; Release "
                                    f"finished transfers, or retry later")
        if self._waiting:
            raise ResourceExhausted(f"{len(self._waiting)} resume(s) are waiting for free blocks "
                                    f"and are served before new transfers; retry later")
        want = self._blocks_for(size)
        blocks = self.allocator.alloc(want)
        if blocks is None:
            raise ResourceExhausted(f"the pool has {self.allocator.free_count} free blocks of "
                                    f"{self.limits.block_tokens} tokens; a {size}-token window "
                                    f"needs {want}; retry later or open a smaller window")
        t = Transfer(transfer_id, size, blocks, want * self.limits.block_tokens, now)
        self.transfers[transfer_id] = t
        self.state_counts[t.state] += 1
        t.seq = next(self._opened)
        self.totals.started += 1
        self.listener.opened(t)
        self._schedule(t, self._deadline(t))
        self._changed(t)
        return t

    def resume(self, transfer_id: str, sent_tokens: int, window_tokens: int, now: float) -> ResumeResult:
        t = self.observe(transfer_id, now)
        if t.last_resume_sent_tokens >= 0 and sent_tokens <= t.last_resume_sent_tokens:
            reason = "repeat" if sent_tokens == t.last_resume_sent_tokens else "stale"
            self.totals.duplicates[reason] += 1
            self.listener.resume_duplicate(t, reason)
            return ResumeResult(t, True, reason)
        if t.state.terminal:
            raise FailedPrecondition(f"transfer {transfer_id!r} is {t.state.name}"
                                     f"{': ' + t.failure_reason if t.failure_reason else ''}; "
                                     f"there is nothing to resume")
        size = window_tokens or t.open_window_tokens
        self._check_window(size)
        why = self._fire("resume", t, sent_tokens=sent_tokens)
        if why is not None:
            raise FailedPrecondition(f"cannot resume transfer {transfer_id!r}: {why}")
        window_wait = None if t.window_full_at is None else now - t.window_full_at
        t.last_resume_sent_tokens = sent_tokens
        t.resume_count += 1
        t.window_full_at = None
        t.last_progress_at = now
        self._free_window(t)
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

    def release(self, transfer_id: str, by: str = "client") -> tuple[Transfer, int]:
        t = self.get(transfer_id)
        if not t.state.terminal:
            raise FailedPrecondition(f"transfer {transfer_id!r} is live ({t.state.name}); "
                                     f"Abort it, or wait for SUCCESS, before Release")
        freed = len(t.blocks)
        self._free_window(t)
        del self.transfers[transfer_id]
        self.state_counts[t.state] -= 1
        t.released = True
        self.totals.released[by] += 1
        self.listener.released(t, by)
        self._serve_waiting()
        return t, freed

    # -- sender --------------------------------------------------------------------------------

    def attach(self, transfer_id: str, total_tokens: int, metadata: bytes, now: float) -> Transfer:
        """The first message of a Push stream. Reconnecting senders attach again."""
        if not 0 < total_tokens <= MAX_TOTAL_TOKENS:
            raise InvalidArgument(f"the first Push message must carry total_tokens between 1 "
                                  f"and {MAX_TOTAL_TOKENS}, got {total_tokens}")
        t = self.get(transfer_id)
        if t.state is State.FAILED:
            raise Aborted(f"transfer {transfer_id!r} failed: {t.failure_reason}")
        if t.total_tokens and t.total_tokens != total_tokens:
            raise FailedPrecondition(f"Push says total_tokens={total_tokens} but transfer "
                                     f"{transfer_id!r} has total_tokens={t.total_tokens}")
        if t.state is State.BOOTSTRAPPING:
            t.total_tokens = total_tokens
            t.metadata = metadata
            t.window_tokens = min(t.window_tokens, total_tokens)
            needed = self._blocks_for(t.window_tokens)
            # A short transfer gives back what it can never fill.
            t.blocks = self.allocator.shrink(t.blocks, needed)
            self._must_fire("attach", t)
            t.last_progress_at = now
            self._serve_waiting()
            self._changed(t)
        return t

    def begin_write(self, transfer_id: str, start_token: int, rows: int) -> WriteTicket:
        """Where ``rows`` rows starting at ``start_token`` go. Copy them, then ``end_write``."""
        t = self.get(transfer_id)
        if t.state is State.FAILED:
            raise Aborted(f"transfer {transfer_id!r} failed: {t.failure_reason}")
        if t.state is State.BOOTSTRAPPING:
            raise FailedPrecondition(f"transfer {transfer_id!r} has no sender attached; the "
                                     f"first Push message must carry transfer_id and total_tokens")
        end = start_token + rows
        if end > t.total_tokens:
            raise InvalidArgument(f"rows [{start_token}, {end}) run past total_tokens="
                                  f"{t.total_tokens}; send at most {t.total_tokens} tokens")
        if start_token > t.sent_tokens:
            raise OutOfRange(f"start_token={start_token} leaves a gap: the next expected token "
                             f"is {t.sent_tokens}; send rows from there")
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
            self._free_window(t)
            self._serve_waiting()
            return t
        if not landed:
            self._changed(t)  # another Push waiting for this write's end goes on
            return t
        t.sent_tokens += ticket.count
        t.last_progress_at = now
        self.totals.tokens_received += ticket.count
        self.listener.delivered(t, ticket.count)
        if t.state is State.RESUMING:
            self._must_fire("deliver", t)
        if self._fire("complete", t) is None:
            self._finish(t, Outcome.SUCCESS, now)
        elif t.window_full:
            t.window_full_at = now
        self._changed(t)
        return t

    # -- either side, and the clock ------------------------------------------------------------

    def abort(self, transfer_id: str, reason: str, now: float) -> Transfer:
        t = self.get(transfer_id)
        if not t.state.terminal:
            self.fail(t, Outcome.ABORTED, f"aborted: {reason or 'no reason given'}", now)
        return t

    def fail(self, t: Transfer, outcome: str, reason: str, now: float) -> None:
        """End ``t`` FAILED. A transfer that already ended (an abort or a timeout got there
        first, say while a copy was awaited) keeps its first outcome: nothing changes."""
        if t.state.terminal:
            return
        self._must_fire("fail", t)
        t.failure_reason = reason
        t.window_full_at = None
        if self._waiting.pop(t.transfer_id, None) is not None:
            t.blocks_wanted = 0
        self._free_window(t)
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
        """Apply every timeout due at ``now``: bootstrap, lease and stall fail; retention releases."""
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, t = heapq.heappop(heap)
            if t.released:
                continue
            due = self._deadline(t)
            if due > now:
                self._schedule(t, due)
            elif t.state.terminal:
                self.release(t.transfer_id, by="retention")
            else:
                outcome, reason = self._timeout_of(t, now)
                self.fail(t, outcome, reason, now)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    # -- internals -----------------------------------------------------------------------------

    def _fire(self, event: str, t: Transfer, **kwargs: int) -> str | None:
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

    def _check_window(self, tokens: int) -> None:
        if tokens > self.limits.pool_tokens:
            raise InvalidArgument(f"window_tokens={tokens} is larger than the whole pool "
                                  f"({self.limits.num_blocks} blocks x {self.limits.block_tokens} "
                                  f"tokens); ask for at most {self.limits.pool_tokens}")

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

    def _free_window(self, t: Transfer) -> None:
        # A block is never handed on while a write into it can still land: end_write frees it.
        if t.blocks and not t.write_in_flight:
            self.allocator.free(t.blocks)
            t.blocks = []
            t.window_epoch += 1

    def _serve_waiting(self) -> None:
        while self._waiting:
            t = next(iter(self._waiting.values()))
            blocks = self.allocator.alloc(t.blocks_wanted)
            if blocks is None:
                return
            del self._waiting[t.transfer_id]
            t.blocks = blocks
            t.blocks_wanted = 0
            self._changed(t)

    def _finish(self, t: Transfer, outcome: str, now: float) -> None:
        t.outcome = outcome
        t.finished_at = now
        self._schedule(t, self._deadline(t))  # retention may fall before the live deadline
        self.totals.finished[outcome] += 1
        self.listener.finished(t)

    def _changed(self, t: Transfer) -> None:
        t.version += 1
        self.listener.changed(t)

    def _deadline(self, t: Transfer) -> float:
        if t.state.terminal:
            return t.finished_at + self.limits.retention
        due = t.last_progress_at + self.limits.stall_timeout
        if t.state is State.BOOTSTRAPPING:
            due = min(due, t.opened_at + self.limits.bootstrap_timeout)
        if not t.watchers:
            due = min(due, t.lease_renewed_at + self.limits.lease_timeout)
        return due

    def _timeout_of(self, t: Transfer, now: float) -> tuple[str, str]:
        lim = self.limits
        if t.state is State.BOOTSTRAPPING and now >= t.opened_at + lim.bootstrap_timeout:
            return Outcome.BOOTSTRAP_TIMEOUT, (f"bootstrap_timeout: no sender attached within "
                                               f"{lim.bootstrap_timeout:g}s of Open")
        if not t.watchers and now >= t.lease_renewed_at + lim.lease_timeout:
            return Outcome.LEASE_EXPIRED, (f"lease_expired: the receiver made no call (Poll, "
                                           f"Watch, Read, Resume) for {lim.lease_timeout:g}s")
        return Outcome.STALL_TIMEOUT, (f"stall_timeout: no progress for {lim.stall_timeout:g}s "
                                       f"({_stall_cause(t)})")

    def _schedule(self, t: Transfer, deadline: float) -> None:
        sooner = not self._deadlines or deadline < self._deadlines[0][0]
        heapq.heappush(self._deadlines, (deadline, next(self._seq), t))
        if sooner:
            self.listener.deadline_sooner(deadline)


def _check_id(transfer_id: str) -> None:
    if not transfer_id:
        raise InvalidArgument("transfer_id is empty; give every transfer a unique id")
    if len(transfer_id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"transfer_id is {len(transfer_id.encode())} bytes; "
                              f"the limit is {MAX_ID_BYTES}")


def _stall_cause(t: Transfer) -> str:
    if t.waiting_for_blocks:
        return "no free pool blocks for the next window"
    if t.window_full:
        return "the window is full and the receiver did not resume"
    if t.state is State.BOOTSTRAPPING:
        return "no sender attached"
    return f"the sender delivered nothing after token {t.sent_tokens}"

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
    Reason,
    ResourceExhausted,
    Unavailable,
)
from kvferry.statemachine.fence import Fence, Quarantine
from kvferry.statemachine.lifecycle import IllegalTransition, Refusal, State, Transfer, fire, must_fire

MAX_ID_BYTES = 256
# An Abort's reason is echoed in every status of its transfer: it must stay small.
MAX_REASON_BYTES = 1024
# Any failure reason, the core's own included (one quoting an exception, say), is cut to this.
MAX_FAILURE_REASON_BYTES = 2048
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
    # How long blocks a one-sided writer may still write into stay fenced after their transfer
    # failed, if the writer never says it stopped.
    fence_timeout: float = 60.0
    # The sender's metadata is held and echoed in every status of its transfer: bounded, so that
    # memory is bounded by max_transfers and a status always fits a default client's 4 MiB.
    max_metadata_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_tokens", "default_window_tokens", "max_transfers",
                     "max_metadata_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("bootstrap_timeout", "stall_timeout", "retention", "lease_timeout", "fence_timeout"):
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


class Grant(NamedTuple):
    """A window lent to a one-sided writer: write tokens [start_token, start_token + tokens) into
    the rows they fall on (token k is row (k - window_start_token) of the window, whose blocks are
    ``blocks`` in order), make sure they landed, then commit them with ``epoch``."""

    transfer: Transfer
    epoch: int
    start_token: int
    tokens: int
    window_start_token: int
    blocks: list[int]


class CommitResult(NamedTuple):
    transfer: Transfer
    duplicate: bool


class ResumeResult(NamedTuple):
    transfer: Transfer
    duplicate: bool
    duplicate_reason: str  # "" when applied


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
        # (deadline, seq, transfer); lazily re-checked when popped, so progress costs nothing here.
        self._deadlines: list[tuple[float, int, Transfer]] = []
        self._seq = itertools.count()
        # Transfers released since the heap was last compacted: their entries wait there until
        # due, holding the transfer; compaction bounds that to the transfers still held.
        self._stale_deadlines = 0
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
            _check_id(transfer_id)
            raise NotFound(f"no transfer {transfer_id!r}: it was never opened, or was released "
                           f"(by Release or after retention)", reason=Reason.TRANSFER_NOT_FOUND)
        if incarnation and incarnation != t.incarnation:
            raise FailedPrecondition(f"transfer {transfer_id!r} was reopened: this call is for its "
                                     f"incarnation {incarnation}, which was released; the one held "
                                     f"now is {t.incarnation}", reason=Reason.STALE_INCARNATION)
        return t

    def observe(self, transfer_id: str, now: float, incarnation: int = 0) -> Transfer:
        """``get`` by the receiver (Poll, Read): renews its lease. Not progress."""
        t = self.get(transfer_id, incarnation)
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

    def read_segments(self, transfer_id: str, now: float,
                      incarnation: int = 0) -> tuple[Transfer, list[Segment]]:
        """The filled rows of the current window, in token order (renews the receiver's lease)."""
        t = self.observe(transfer_id, now, incarnation)
        if t.state is State.FAILED:
            raise FailedPrecondition(f"transfer {transfer_id!r} failed ({t.failure_reason}); "
                                     f"its blocks are freed, nothing to read", reason=Reason.TRANSFER_FAILED)
        return t, self._segments(t, 0, t.window_filled_tokens)

    # -- receiver ------------------------------------------------------------------------------

    def open(self, transfer_id: str, window_tokens: int, now: float) -> Transfer:
        _check_id(transfer_id)
        size = window_tokens or self.limits.default_window_tokens
        self._check_window(size)
        held = self.transfers.get(transfer_id)
        if held is not None:
            raise AlreadyExists(f"transfer {transfer_id!r} is already held ({held.state.name}); "
                                f"Release it first, or open a new id", reason=Reason.TRANSFER_EXISTS)
        if self._draining:
            raise Unavailable("the server is shutting down and takes no new transfers; "
                              "open on another replica", reason=Reason.DRAINING)
        if len(self.transfers) >= self.limits.max_transfers:
            raise ResourceExhausted(f"{len(self.transfers)} transfers are held, the limit "
                                    f"(--max-transfers) is {self.limits.max_transfers}; Release "
                                    f"finished transfers, or retry later", reason=Reason.TOO_MANY_TRANSFERS)
        if self._waiting:
            raise ResourceExhausted(f"{len(self._waiting)} resume(s) are waiting for free blocks "
                                    f"and are served before new transfers; retry later", reason=Reason.RESUMES_QUEUED)
        want = self._blocks_for(size)
        blocks = self.allocator.alloc(want)
        if blocks is None:
            raise ResourceExhausted(f"the pool has {self.allocator.free_count} free blocks of "
                                    f"{self.limits.block_tokens} tokens; a {size}-token window "
                                    f"needs {want}; retry later or open a smaller window", reason=Reason.POOL_EXHAUSTED)
        t = Transfer(transfer_id, size, blocks, want * self.limits.block_tokens, now)
        t.window_epoch = t.opened_epoch = next(self._epochs)
        t.incarnation = next(self._incarnations)
        self.listener.window_blocks(blocks, t.window_epoch)
        self.transfers[transfer_id] = t
        self.state_counts[t.state] += 1
        t.seq = next(self._opened)
        self.totals.started += 1
        self.listener.opened(t)
        self._schedule(t, self._deadline(t))
        self._changed(t)
        return t

    def resume(self, transfer_id: str, sent_tokens: int, window_tokens: int, now: float,
               incarnation: int = 0) -> ResumeResult:
        t = self.observe(transfer_id, now, incarnation)
        if t.last_resume_sent_tokens >= 0 and sent_tokens <= t.last_resume_sent_tokens:
            reason = "repeat" if sent_tokens == t.last_resume_sent_tokens else "stale"
            self.totals.duplicates[reason] += 1
            self.listener.resume_duplicate(t, reason)
            return ResumeResult(t, True, reason)
        if t.state.terminal:
            raise FailedPrecondition(f"transfer {transfer_id!r} is {t.state.name}"
                                     f"{': ' + t.failure_reason if t.failure_reason else ''}; "
                                     f"there is nothing to resume", reason=Reason.TRANSFER_FINISHED)
        size = window_tokens or t.open_window_tokens
        self._check_window(size)
        why = self._fire("resume", t, sent_tokens=sent_tokens)
        if why is not None:
            raise FailedPrecondition(f"cannot resume transfer {transfer_id!r}: {why}", reason=why.reason)
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

    def release(self, transfer_id: str, by: str = "client",
                incarnation: int = 0) -> tuple[Transfer, int]:
        t = self.get(transfer_id, incarnation)
        if not t.state.terminal:
            raise FailedPrecondition(f"transfer {transfer_id!r} is live ({t.state.name}); "
                                     f"Abort it, or wait for SUCCESS, before Release", reason=Reason.TRANSFER_LIVE)
        freed = len(t.blocks)
        self._free_window(t)
        del self.transfers[transfer_id]
        self.state_counts[t.state] -= 1
        t.released = True
        self.totals.released[by] += 1
        self.listener.released(t, by)
        self._serve_waiting()
        self._stale_deadlines += 1
        if self._stale_deadlines > len(self.transfers) + 64:
            self._compact_deadlines()
        return t, freed

    # -- sender --------------------------------------------------------------------------------

    def attach(self, transfer_id: str, total_tokens: int, metadata: bytes, now: float,
               incarnation: int = 0) -> Transfer:
        """The sender arrives (a Push stream's first message, or Attach). Reconnecting senders
        attach again."""
        self.check_sender(total_tokens, metadata)
        t = self.get(transfer_id, incarnation)
        if t.state is State.FAILED:
            raise Aborted(f"transfer {transfer_id!r} failed: {t.failure_reason}", reason=Reason.TRANSFER_FAILED)
        if t.total_tokens and t.total_tokens != total_tokens:
            raise FailedPrecondition(f"Push says total_tokens={total_tokens} but transfer "
                                     f"{transfer_id!r} has total_tokens={t.total_tokens}",
                                     reason=Reason.TOTAL_TOKENS_MISMATCH)
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

    def check_sender(self, total_tokens: int, metadata: bytes) -> None:
        """Refuse what ``attach`` would refuse whatever the transfer: a sender that waits for
        the Open learns of its own mistakes at once."""
        if not 0 < total_tokens <= MAX_TOTAL_TOKENS:
            raise InvalidArgument(f"the sender must give total_tokens between 1 and "
                                  f"{MAX_TOTAL_TOKENS} (in Attach, or a Push's first message), "
                                  f"got {total_tokens}", reason=Reason.BAD_TOTAL_TOKENS)
        if len(metadata) > self.limits.max_metadata_bytes:
            raise InvalidArgument(f"metadata is {len(metadata)} bytes; the limit "
                                  f"(--max-metadata-bytes) is {self.limits.max_metadata_bytes}: "
                                  f"send large side data as rows, or a reference to it",
                                  reason=Reason.METADATA_TOO_LARGE)

    def begin_write(self, transfer_id: str, start_token: int, rows: int,
                    incarnation: int = 0) -> WriteTicket:
        """Where ``rows`` rows starting at ``start_token`` go. Copy them, then ``end_write``."""
        t = self.get(transfer_id, incarnation)
        if t.state is State.FAILED:
            raise Aborted(f"transfer {transfer_id!r} failed: {t.failure_reason}", reason=Reason.TRANSFER_FAILED)
        if t.state is State.BOOTSTRAPPING:
            raise FailedPrecondition(f"transfer {transfer_id!r} has no sender attached; the "
                                     f"first Push message must carry transfer_id and total_tokens",
                                     reason=Reason.NOT_ATTACHED)
        if t.lent_epoch == t.window_epoch:
            raise FailedPrecondition(f"the current window of {transfer_id!r} is lent to a one-sided "
                                     f"writer (Attach): Push cannot write into it until that "
                                     f"writer commits it or detaches", reason=Reason.WINDOW_LENT)
        end = start_token + rows
        if end > t.total_tokens:
            raise InvalidArgument(f"rows [{start_token}, {end}) run past total_tokens="
                                  f"{t.total_tokens}; send at most {t.total_tokens} tokens",
                                  reason=Reason.ROWS_PAST_TOTAL)
        if start_token > t.sent_tokens:
            raise OutOfRange(f"start_token={start_token} leaves a gap: the next expected token "
                             f"is {t.sent_tokens}; send rows from there", reason=Reason.TOKEN_GAP)
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
        end = start_token + tokens
        if tokens <= 0:
            raise InvalidArgument(f"commit of {tokens} tokens: commit at least one row", reason=Reason.BAD_COMMIT)
        if epoch < t.opened_epoch:
            raise FailedPrecondition(f"window epoch {epoch} belongs to an earlier opening of "
                                     f"{transfer_id!r}; this one began at epoch {t.opened_epoch}",
                                     reason=Reason.STALE_INCARNATION)
        if t.state is State.FAILED:
            fence = self.quarantine.get(epoch)
            if fence is not None and fence.transfer_id == transfer_id and end >= fence.end_token:
                self._lift(epoch, "commit")  # the writer finished the lent range: it stopped
            raise Aborted(f"transfer {transfer_id!r} failed: {t.failure_reason}", reason=Reason.TRANSFER_FAILED)
        if end <= t.sent_tokens:  # a repeat of delivered rows: a retry, or another rank's
            self.totals.commit_duplicates += 1
            return CommitResult(t, True)
        if epoch != t.window_epoch:
            raise FailedPrecondition(f"window epoch {epoch} of {transfer_id!r} was resumed past "
                                     f"(the current window is epoch {t.window_epoch}); rows "
                                     f"[{start_token}, {end}) were not all delivered: write "
                                     f"them into the current grant", reason=Reason.GRANT_EXPIRED)
        if t.lent_epoch != epoch:
            raise FailedPrecondition(f"window epoch {epoch} of {transfer_id!r} is not lent to a "
                                     f"one-sided writer: Attach to get a grant before writing",
                                     reason=Reason.NOT_GRANTED)
        if start_token > t.sent_tokens:
            raise OutOfRange(f"commit from token {start_token} leaves a gap: the next expected "
                             f"token is {t.sent_tokens}; commit rows from there", reason=Reason.TOKEN_GAP)
        window_end = t.window_start_token + t.window_tokens
        if end > window_end:
            raise InvalidArgument(f"commit of rows [{start_token}, {end}) runs past the granted "
                                  f"window, which ends at token {window_end}", reason=Reason.BAD_COMMIT)
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
        if len(reason.encode()) > MAX_REASON_BYTES:
            raise InvalidArgument(f"the abort reason is {len(reason.encode())} bytes; the limit is "
                                  f"{MAX_REASON_BYTES}: say why in a sentence", reason=Reason.REASON_TOO_LARGE)
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
        due = [d for d in (self._deadlines[0][0] if self._deadlines else None,
                           self.quarantine.next_deadline()) if d is not None]
        return min(due) if due else None

    # -- internals -----------------------------------------------------------------------------

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

    def _check_window(self, tokens: int) -> None:
        if tokens > self.limits.pool_tokens:
            raise InvalidArgument(f"window_tokens={tokens} is larger than the whole pool "
                                  f"({self.limits.num_blocks} blocks x {self.limits.block_tokens} "
                                  f"tokens); ask for at most {self.limits.pool_tokens}", reason=Reason.WINDOW_TOO_LARGE)

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

    def _compact_deadlines(self) -> None:
        """Drop the entries of released transfers, and keep only the earliest of each held one
        (``expire`` re-checks a popped entry against the transfer's true deadline, so a later
        duplicate adds nothing)."""
        earliest: dict[Transfer, tuple[float, int, Transfer]] = {}
        for entry in self._deadlines:
            t = entry[2]
            if not t.released and (t not in earliest or entry < earliest[t]):
                earliest[t] = entry
        self._deadlines = list(earliest.values())
        heapq.heapify(self._deadlines)
        self._stale_deadlines = 0

    def _schedule(self, t: Transfer, deadline: float) -> None:
        sooner = not self._deadlines or deadline < self._deadlines[0][0]
        heapq.heappush(self._deadlines, (deadline, next(self._seq), t))
        if sooner:
            self.listener.deadline_sooner(deadline)


def _check_id(transfer_id: str) -> None:
    if not transfer_id:
        raise InvalidArgument("transfer_id is empty; give every transfer a unique id", reason=Reason.BAD_TRANSFER_ID)
    if len(transfer_id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"transfer_id is {len(transfer_id.encode())} bytes; "
                              f"the limit is {MAX_ID_BYTES}", reason=Reason.BAD_TRANSFER_ID)
    # Ids are echoed into logs, tables and metrics: no control or format characters (NUL,
    # newlines, bidi overrides, zero-width), no separators or spaces that would hide or forge
    # text there.
    bad = next((c for c in transfer_id if not c.isprintable() or c.isspace()), None)
    if bad is not None:
        raise InvalidArgument(f"transfer_id contains U+{ord(bad):04X} at index "
                              f"{transfer_id.index(bad)}: ids must be printable, with no spaces, "
                              f"control or formatting characters", reason=Reason.BAD_TRANSFER_ID)


def _bounded(reason: str) -> str:
    """``reason`` cut to MAX_FAILURE_REASON_BYTES (at a character boundary)."""
    data = reason.encode()
    if len(data) <= MAX_FAILURE_REASON_BYTES:
        return reason
    return data[:MAX_FAILURE_REASON_BYTES - 3].decode(errors="ignore") + "..."


def _stall_cause(t: Transfer) -> str:
    if t.waiting_for_blocks:
        return "no free pool blocks for the next window"
    if t.window_full:
        return "the window is full and the receiver did not resume"
    if t.state is State.BOOTSTRAPPING:
        return "no sender attached"
    return f"the sender delivered nothing after token {t.sent_tokens}"

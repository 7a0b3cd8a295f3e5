"""Hypothesis drives the core with random interleavings of every request, clock jumps past every
timeout, and writes aborted mid-copy; the invariants are checked after every step."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvferry.statemachine import (
    TRANSITIONS,
    Coordinator,
    Grant,
    Limits,
    Listener,
    State,
    Transfer,
    TransferError,
    WriteTicket,
    coordinator,
    lifecycle,
)

from support.budget import examples

NUM_BLOCKS, BT = 12, 4
IDS = st.sampled_from(["a", "b", "c"])
LIMITS = Limits(num_blocks=NUM_BLOCKS, block_tokens=BT, default_window_tokens=8,
                bootstrap_timeout=10, stall_timeout=20, retention=30, lease_timeout=25, reconnect_grace=2,
                max_transfers=3, fence_timeout=15)


class Writer:
    """A one-sided writer holding a grant: it writes when it likes, commits when it likes."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.cursor = grant.start_token  # rows written up to here
        self.committed = grant.start_token
        self.failed_at: float | None = None  # when the model first saw its transfer FAILED

    @property
    def end(self) -> int:
        return self.grant.start_token + self.grant.tokens

    def may_write(self, now: float) -> bool:
        """The writer's own view, not the core's: it writes until it has committed its whole
        grant or detached (then it is dropped), or until the fence timeout has passed since its
        transfer failed (the contract: a writer stops within it)."""
        return self.failed_at is None or now < self.failed_at + LIMITS.fence_timeout


class Tracker(Listener):
    def __init__(self) -> None:
        self.applied = 0
        self.duplicates = 0

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        self.applied += 1

    def resume_duplicate(self, t: Transfer, reason: str) -> None:
        self.duplicates += 1


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tracker = Tracker()
        self.c = Coordinator(LIMITS, self.tracker)
        self.now = 0.0
        # A fake pool: each row holds (transfer object id, token) of what was written there.
        self.pool: list[list[Any]] = [[None] * BT for _ in range(NUM_BLOCKS)]
        self.delivered: dict[int, int] = {}  # id(transfer) -> tokens seen delivered, in order
        # (id(transfer), sent_tokens) -> readers whose resume of that window was recorded
        self.resumers: dict[tuple[int, int], set[int]] = {}
        self.last_sent: dict[int, int] = {}
        self.terminal: dict[int, State] = {}
        self.objects: dict[int, Transfer] = {}
        self.pending: list[WriteTicket] = []  # copies begun, not yet ended
        self.writers: dict[int, Writer] = {}  # by epoch

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except TransferError:
            return None  # refusals are fine; the invariants say nothing changed wrongly

    # -- requests --------------------------------------------------------------------------

    @initialize(totals=st.lists(st.integers(1, 120), min_size=3, max_size=3),
                readers=st.lists(st.sampled_from([1, 2, 3]), min_size=3, max_size=3))
    def start_with_live_transfers(self, totals: list[int], readers: list[int]) -> None:
        """Begin mid-flight: every id opened (for one to three readers) and attached, so most
        steps exercise live ones."""
        for tid, total, n in zip(("a", "b", "c"), totals, readers, strict=False):
            t = self.c.open(tid, 8, self.now, n)
            self.objects[id(t)] = t
            self.c.attach(tid, total, b"", self.now)

    @rule(tid=IDS, window=st.sampled_from([0, 3, 4, 8, 13, 48, 49]),
          readers=st.sampled_from([1, 1, 2, 3]))
    def open(self, tid: str, window: int, readers: int) -> None:
        t = self._call(self.c.open, tid, window, self.now, readers)
        if t is not None:
            self.objects[id(t)] = t

    @rule(tid=IDS, total=st.integers(0, 40))
    def attach(self, tid: str, total: int) -> None:
        self._call(self.c.attach, tid, total, b"", self.now)

    @rule(tid=IDS, total=st.integers(1, 120), offset=st.sampled_from([-5, -1, 0, 0, 0, 0, 1]),
          rows=st.integers(0, 16), hold=st.booleans())
    def push(self, tid: str, total: int, offset: int, rows: int, hold: bool) -> None:
        """One Push message, as the server handles it: attach (first message), then write."""
        t = self.c.transfers.get(tid)
        if t is not None and t.state is State.BOOTSTRAPPING:
            self._call(self.c.attach, tid, total, b"", self.now)
        start = max(0, (t.sent_tokens if t else 0) + offset)
        ticket = self._call(self.c.begin_write, tid, start, rows)
        if ticket is None or not ticket.count:
            return
        first = ticket.transfer.sent_tokens
        for i, (b, off, _n) in enumerate(_rows(ticket)):
            self.pool[b][off] = (id(ticket.transfer), first + i)
        if hold:  # the copy is still landing; other requests interleave before end_write
            self.pending.append(ticket)
        else:
            self._end(ticket)

    # -- the one-sided writer ---------------------------------------------------------------

    @rule(tid=IDS, total=st.integers(1, 120))
    def attach_one_sided(self, tid: str, total: int) -> None:
        t = self.c.transfers.get(tid)
        if t is not None and t.state is State.BOOTSTRAPPING:
            self._call(self.c.attach, tid, total, b"", self.now)
        g = self._call(self.c.grant, tid)
        if g is not None and g.epoch not in self.writers:
            self.writers[g.epoch] = Writer(g)

    def _write(self, w: Writer, upto: int) -> None:
        """The writer's rows land in its grant's blocks, whatever the core thinks of it now."""
        g = w.grant
        for token in range(w.cursor, min(upto, w.end)):
            row = token - g.window_start_token
            self.pool[g.blocks[row // BT]][row % BT] = (id(g.transfer), token)
        w.cursor = max(w.cursor, min(upto, w.end))

    @precondition(lambda self: self.writers)
    @rule(data=st.data(), rows=st.integers(1, 10), commit=st.booleans())
    def one_sided_write(self, data: st.DataObject, rows: int, commit: bool) -> None:
        w = self.writers[data.draw(st.sampled_from(sorted(self.writers)))]
        if not w.may_write(self.now):
            del self.writers[w.grant.epoch]
            return
        self._write(w, w.cursor + rows)
        if commit and w.cursor > w.committed:
            g = w.grant
            if self._call(self.c.commit, g.transfer.transfer_id, g.epoch, w.committed,
                          w.cursor - w.committed, self.now) is not None:
                w.committed = w.cursor
                self.delivered[id(g.transfer)] = g.transfer.sent_tokens
            if w.cursor == w.end:  # committed (or tried to) all it was lent: it is done
                del self.writers[g.epoch]

    @precondition(lambda self: self.writers)
    @rule(data=st.data())
    def late_write_lands(self, data: st.DataObject) -> None:
        """A write of the whole grant lands late: after an abort, a timeout, a release."""
        w = self.writers[data.draw(st.sampled_from(sorted(self.writers)))]
        if w.may_write(self.now):
            self._write(w, w.end)

    @precondition(lambda self: self.writers)
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        w = self.writers.pop(data.draw(st.sampled_from(sorted(self.writers))))
        self.c.detach(w.grant.transfer.transfer_id, w.grant.epoch)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def finish_a_copy(self, data: st.DataObject) -> None:
        self._end(self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1))))

    def _end(self, ticket: WriteTicket) -> None:
        t = ticket.transfer
        before = t.sent_tokens
        self.c.end_write(ticket, self.now)
        if t.sent_tokens != before:  # delivered: exactly the next tokens, in order
            assert self.delivered.get(id(t), 0) == before
            self.delivered[id(t)] = t.sent_tokens

    @rule(tid=IDS)
    def poll_and_read(self, tid: str) -> None:
        got = self._call(self.c.read_segments, tid, self.now)
        if got is None:
            return
        t, segments = got
        token = t.window_start_token
        for b, off, n in segments:
            for k in range(n):
                # Only this transfer's rows, in token order: nothing foreign, nothing stale.
                assert self.pool[b][off + k] == (id(t), token), (b, off + k, token)
                token += 1
        assert token == t.sent_tokens

    @rule(tid=IDS, delta=st.sampled_from([-9, -1, 0, 0, 0, 1]), window=st.sampled_from([0, 4, 16, 40, 60]),
          reader=st.sampled_from([0, 0, 1, 2]), copies=st.integers(1, 3))
    def resume(self, tid: str, delta: int, window: int, reader: int, copies: int) -> None:
        """A reader resumes (``copies`` times: retries, late messages)."""
        t = self.c.transfers.get(tid)
        sent = max(0, (t.sent_tokens if t else 0) + delta)
        already = t is not None and 0 <= sent <= t.last_resume_sent_tokens
        results = [self._call(self.c.resume, tid, sent, window, self.now, 0, reader)
                   for _ in range(copies)]
        applied = [r for r in results if r is not None and not r.duplicate and not r.pending]
        recorded = [r for r in results if r is not None and not r.duplicate]
        assert len(recorded) <= 1, "one reader's resume counts once per window, however often sent"
        if already and t is not None and reader < t.readers:
            # In any state, terminal included: answered as a duplicate, never refused.
            assert all(r is not None and r.duplicate for r in results)
        if recorded:  # every later copy of it is a duplicate
            assert all(r is not None and r.duplicate for r in results[results.index(recorded[0]) + 1:])
            assert t is not None
            self.resumers.setdefault((id(t), sent), set()).add(reader)
        if applied:  # the window moved on: every reader had resumed it
            assert t is not None
            assert self.resumers[(id(t), sent)] == set(range(t.readers))

    @rule(tid=IDS, really=st.sampled_from([False, False, False, True]))
    def abort(self, tid: str, really: bool) -> None:
        if really:  # rarer than the other requests, so transfers get somewhere first
            self._call(self.c.abort, tid, "chaos", self.now)

    @rule(tid=IDS, reader=st.sampled_from([None, 0, 1, 2]))
    def release(self, tid: str, reader: int | None) -> None:
        t = self.c.transfers.get(tid)
        if self._call(self.c.release, tid, "client", 0, reader) is not None and t is not None:
            if reader is not None and t.readers > 1:  # held until every reader released it
                assert (tid in self.c.transfers) == (len(t.released_by) < t.readers)

    @rule(tid=IDS, start=st.booleans(), until_done=st.booleans(), reader=st.sampled_from([0, 1]))
    def watch(self, tid: str, start: bool, until_done: bool, reader: int) -> None:
        t = self.c.transfers.get(tid)
        if t is None or reader >= t.readers:
            return
        if start:
            self.c.watch_started(t, self.now, reader)
        elif t.reader_watchers.get(reader):
            self.c.watch_ended(t, self.now, until_done, reader)

    @rule(tid=IDS, start=st.booleans())
    def sender_stream(self, tid: str, start: bool) -> None:
        t = self.c.transfers.get(tid)
        if t is None:
            return
        if start:
            self.c.sender_started(t)
        elif t.senders:
            self.c.sender_ended(t, self.now)

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 0.5, 1.0, 2.0, 11.0, 21.0, 26.0, 31.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.c.expire(self.now)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def blocks_are_owned_once_and_all_accounted_for(self) -> None:
        owned = [b for t in self.objects.values() for b in t.blocks]
        fenced = [b for f in self.c.quarantine for b in f.blocks]
        assert len(fenced) == self.c.quarantine.blocks
        held = owned + fenced
        assert len(held) == len(set(held)), "a block is owned twice, or owned and fenced"
        assert len(held) + self.c.allocator.free_count == NUM_BLOCKS, "a block leaked"
        for b in held:
            assert self.c.allocator.is_used(b)

    @invariant()
    def no_block_is_writable_by_two_transfers(self) -> None:
        """Every block a one-sided writer may still write into is its own transfer's current
        window, or fenced for it: never free, never another transfer's."""
        for w in self.writers.values():
            g, t = w.grant, w.grant.transfer
            if t.state is State.FAILED and w.failed_at is None:
                w.failed_at = self.now
            if not w.may_write(self.now):
                continue
            free = set(self.c.allocator._free)
            assert not set(g.blocks) & free, "a block a writer may still write into is free"
            others = [b for o in self.objects.values() if o is not t for b in o.blocks]
            others += [b for f in self.c.quarantine if f.epoch != g.epoch for b in f.blocks]
            assert not set(g.blocks) & set(others), "a writer's blocks were handed to another transfer"

    @invariant()
    def sent_tokens_only_grow_and_terminal_states_stay(self) -> None:
        for key, t in self.objects.items():
            assert t.sent_tokens >= self.last_sent.get(key, 0)
            self.last_sent[key] = t.sent_tokens
            assert t.sent_tokens <= max(t.total_tokens, 0) or t.sent_tokens == 0
            if key in self.terminal:
                assert t.state is self.terminal[key], "a terminal state was left"
            elif t.state.terminal:
                self.terminal[key] = t.state
            if t.state is State.SUCCESS:
                assert t.sent_tokens == t.total_tokens
            if t.state is State.FAILED and not t.write_in_flight:
                assert t.blocks == []

    @invariant()
    def state_counts_and_waiting_queue_are_consistent(self) -> None:
        counts = {s: 0 for s in State}
        for t in self.c.transfers.values():
            counts[t.state] += 1
            if t.waiting_for_blocks:
                assert t.state is State.RESUMING and t.blocks == []
        assert counts == self.c.state_counts
        assert len(self.c.transfers) <= LIMITS.max_transfers

    def teardown(self) -> None:
        # Land every copy, fail and release everything: the whole pool comes back.
        for ticket in self.pending:
            self.c.end_write(ticket, self.now)
        self.c.fail_all("shutdown", "teardown", self.now)
        for tid in list(self.c.transfers):
            self.c.release(tid)
        assert self.c.allocator.free_count + self.c.quarantine.blocks == NUM_BLOCKS
        self.c.expire(self.now + LIMITS.fence_timeout)  # writers that never said they stopped
        assert self.c.allocator.free_count == NUM_BLOCKS


def _rows(ticket: WriteTicket) -> list[tuple[int, int, int]]:
    out = []
    for b, off, n in ticket.segments:
        out += [(b, off + k, 1) for k in range(n)]
    return out


CoreMachine.TestCase.settings = settings(
    max_examples=examples(1500, 20000), stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestCoreInterleavings = CoreMachine.TestCase


def test_every_row_of_the_table_is_reached_and_every_guard_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table holds no row the coordinator never runs, and no guard that never says no: driven
    only through the coordinator's API, each (event, source state) fires and each guard refuses."""
    fired: set[tuple[str, State]] = set()
    refused_by_guard: set[str] = set()
    real_fire = lifecycle.fire

    def recording(event: str, t: Transfer, **kwargs: int) -> str | None:
        before = t.state
        why = real_fire(event, t, **kwargs)
        if why is None:
            fired.add((event, before))
        elif any(r.event == event and before in r.sources for r in TRANSITIONS):
            refused_by_guard.add(event)  # a row exists from here: a guard said no
        return why

    monkeypatch.setattr(lifecycle, "fire", recording)
    monkeypatch.setattr(coordinator, "fire", recording)
    c = Coordinator(Limits(num_blocks=NUM_BLOCKS, block_tokens=BT, default_window_tokens=8,
                           bootstrap_timeout=10, stall_timeout=20, retention=30))

    def write(tid: str, start: int, rows: int) -> None:
        c.end_write(c.begin_write(tid, start, rows), 0)

    c.open("a", 8, 0)
    c.attach("a", 12, b"", 0)
    write("a", 0, 8)
    with pytest.raises(TransferError):
        c.resume("a", 7, 0, 0)  # resume_is_due refuses
    c.resume("a", 8, 0, 0)
    write("a", 8, 3)  # deliver; complete refused (11 of 12)
    write("a", 11, 1)  # complete
    for tid, rows in (("b", 0), ("c", 1), ("d", 8)):  # fail from BOOTSTRAPPING, TRANSFERRING, RESUMING
        c.open(tid, 8, 0)
        if rows:
            c.attach(tid, 16, b"", 0)
            write(tid, 0, rows)
        if rows == 8:
            c.resume(tid, 8, 0, 0)
        c.abort(tid, "", 0)
    assert fired == {(r.event, s) for r in TRANSITIONS for s in r.sources}
    assert refused_by_guard == {r.event for r in TRANSITIONS if r.guards}

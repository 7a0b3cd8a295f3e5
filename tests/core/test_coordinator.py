"""The coordinator alone: every request, guard and refusal, with a fake clock and no I/O."""

from __future__ import annotations

import pytest

from kvferry.statemachine import (
    Aborted,
    AlreadyExists,
    Coordinator,
    FailedPrecondition,
    InvalidArgument,
    Limits,
    Listener,
    NotFound,
    Outcome,
    OutOfRange,
    ResourceExhausted,
    State,
    Transfer,
    Unavailable,
)

BT = 8  # block tokens


class Recorder(Listener):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def opened(self, t: Transfer) -> None:
        self.events.append(("opened", t.transfer_id))

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        self.events.append(("applied", t.transfer_id, t.last_resume_sent_tokens, window_wait))

    def resume_duplicate(self, t: Transfer, reason: str) -> None:
        self.events.append(("duplicate", t.transfer_id, reason))

    def finished(self, t: Transfer) -> None:
        self.events.append(("finished", t.transfer_id, t.outcome))

    def released(self, t: Transfer, by: str) -> None:
        self.events.append(("released", t.transfer_id, by))

    def delivered(self, t: Transfer, tokens: int) -> None:
        self.events.append(("delivered", t.transfer_id, tokens))


def make(num_blocks: int = 16, window: int = 64, **kw: float) -> tuple[Coordinator, Recorder]:
    rec = Recorder()
    limits = Limits(num_blocks=num_blocks, block_tokens=BT, default_window_tokens=window,
                    bootstrap_timeout=kw.get("bootstrap", 10), stall_timeout=kw.get("stall", 20),
                    retention=kw.get("retention", 30), lease_timeout=kw.get("lease", 1000),
                    reconnect_grace=kw.get("grace", 2), max_transfers=int(kw.get("max_transfers", 1000)))
    return Coordinator(limits, rec), rec


def push(c: Coordinator, tid: str, start: int, n: int, now: float = 0.0) -> int:
    """Deliver up to n rows from start; returns how many were written (the rest must wait)."""
    ticket = c.begin_write(tid, start, n)
    c.end_write(ticket, now)
    return ticket.skip + ticket.count


def check_invariants(c: Coordinator) -> None:
    owned = [b for t in c.transfers.values() for b in t.blocks]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert len(owned) + c.allocator.free_count == c.allocator.num_blocks
    counts = {s: 0 for s in State}
    for t in c.transfers.values():
        counts[t.state] += 1
    assert counts == c.state_counts


# -- open ----------------------------------------------------------------------------------------

def test_open_allocates_the_first_window_in_bootstrapping() -> None:
    c, rec = make()
    t = c.open("a", 20, now=0)
    assert t.state is State.BOOTSTRAPPING
    assert t.blocks == [0, 1, 2]  # 20 tokens round up to 3 blocks of 8
    assert t.window_tokens == 24
    assert rec.events == [("opened", "a")]
    check_invariants(c)


def test_open_zero_means_the_default_window() -> None:
    c, _ = make(window=32)
    assert len(c.open("a", 0, now=0).blocks) == 4


@pytest.mark.parametrize("tid", ["", "x" * 257, "é" * 129])
def test_open_bad_ids(tid: str) -> None:
    c, _ = make()
    with pytest.raises(InvalidArgument, match="transfer_id"):
        c.open(tid, 8, now=0)


def test_open_id_of_256_bytes_is_fine() -> None:
    c, _ = make()
    c.open("x" * 256, 8, now=0)


def test_open_held_id_is_already_exists_live_or_terminal() -> None:
    c, _ = make()
    c.open("a", 8, now=0)
    with pytest.raises(AlreadyExists, match="Release it first"):
        c.open("a", 8, now=0)
    c.abort("a", "x", now=0)
    with pytest.raises(AlreadyExists):
        c.open("a", 8, now=0)
    c.release("a")
    c.open("a", 8, now=0)


def test_open_window_larger_than_the_pool_is_invalid() -> None:
    c, _ = make(num_blocks=4, window=8)
    with pytest.raises(InvalidArgument, match="larger than the whole pool"):
        c.open("a", 33, now=0)


def test_open_without_free_blocks_is_resource_exhausted() -> None:
    c, _ = make(num_blocks=4, window=8)
    c.open("a", 24, now=0)
    with pytest.raises(ResourceExhausted, match="1 free blocks"):
        c.open("b", 16, now=0)
    assert "b" not in c.transfers
    check_invariants(c)


def test_open_while_draining_is_unavailable() -> None:
    c, _ = make()
    c.drain()
    with pytest.raises(Unavailable):
        c.open("a", 8, now=0)


# -- attach and write ----------------------------------------------------------------------------

def test_attach_moves_to_transferring_and_trims_the_window_to_total() -> None:
    c, _ = make()
    c.open("a", 64, now=0)
    t = c.attach("a", 10, b"meta", now=1)
    assert t.state is State.TRANSFERRING
    assert (t.total_tokens, t.window_tokens, t.metadata) == (10, 10, b"meta")
    assert t.blocks == [0, 1]  # the 6 blocks it could never fill went back
    assert c.allocator.free_count == 14
    check_invariants(c)


def test_attach_again_is_a_reconnect() -> None:
    c, _ = make()
    c.open("a", 16, now=0)
    c.attach("a", 40, b"", now=0)
    push(c, "a", 0, 5)
    t = c.attach("a", 40, b"other", now=0)
    assert (t.state, t.sent_tokens, t.metadata) == (State.TRANSFERRING, 5, b"")


def test_attach_errors() -> None:
    c, _ = make()
    with pytest.raises(NotFound):
        c.attach("nope", 5, b"", now=0)
    c.open("a", 16, now=0)
    with pytest.raises(InvalidArgument, match="between 1 and"):
        c.attach("a", 0, b"", now=0)
    with pytest.raises(InvalidArgument, match="between 1 and"):
        c.attach("a", 2**64 - 1, b"", now=0)
    c.attach("a", 40, b"", now=0)
    with pytest.raises(FailedPrecondition, match="total_tokens=41"):
        c.attach("a", 41, b"", now=0)
    c.abort("a", "bye", now=0)
    with pytest.raises(Aborted, match="bye"):
        c.attach("a", 40, b"", now=0)


def test_write_segments_follow_the_window_blocks() -> None:
    c, _ = make()
    c.open("a", 24, now=0)
    c.attach("a", 100, b"", now=0)
    t1 = c.begin_write("a", 0, 5)
    assert (t1.skip, t1.count, t1.segments) == (0, 5, [(0, 0, 5)])
    c.end_write(t1, now=0)
    t2 = c.begin_write("a", 5, 30)
    assert t2.count == 19  # the window holds 24
    assert t2.segments == [(0, 5, 3), (1, 0, 8), (2, 0, 8)]
    c.end_write(t2, now=1)
    t = c.get("a")
    assert t.sent_tokens == 24 and t.window_full and t.window_full_at == 1


def test_write_skips_rows_already_delivered() -> None:
    c, _ = make()
    c.open("a", 16, now=0)
    c.attach("a", 30, b"", now=0)
    push(c, "a", 0, 6)
    ticket = c.begin_write("a", 2, 8)
    assert (ticket.skip, ticket.count) == (4, 4)
    assert ticket.segments == [(0, 6, 2), (1, 0, 2)]


def test_write_gap_is_out_of_range_and_changes_nothing() -> None:
    c, _ = make()
    c.open("a", 16, now=0)
    c.attach("a", 30, b"", now=0)
    push(c, "a", 0, 3)
    with pytest.raises(OutOfRange, match="next expected token is 3"):
        c.begin_write("a", 4, 1)
    assert c.get("a").sent_tokens == 3 and c.get("a").state is State.TRANSFERRING


def test_write_past_total_is_invalid() -> None:
    c, _ = make()
    c.open("a", 16, now=0)
    c.attach("a", 10, b"", now=0)
    with pytest.raises(InvalidArgument, match="past total_tokens=10"):
        c.begin_write("a", 0, 11)


def test_write_before_attach_is_refused() -> None:
    c, _ = make()
    c.open("a", 16, now=0)
    with pytest.raises(FailedPrecondition, match="no sender attached"):
        c.begin_write("a", 0, 1)


def test_full_window_accepts_nothing_more() -> None:
    c, _ = make()
    c.open("a", 8, now=0)
    c.attach("a", 20, b"", now=0)
    assert push(c, "a", 0, 20) == 8
    ticket = c.begin_write("a", 8, 12)
    assert (ticket.skip, ticket.count) == (0, 0)


def test_last_token_is_success_and_keeps_the_window_readable() -> None:
    c, rec = make()
    c.open("a", 16, now=0)
    c.attach("a", 12, b"", now=0)
    push(c, "a", 0, 12, now=3)
    t = c.get("a")
    assert t.state is State.SUCCESS and t.outcome == Outcome.SUCCESS and t.finished_at == 3
    _, segs = c.read_segments("a", now=0)
    assert sum(s.tokens for s in segs) == 12
    assert ("finished", "a", "success") in rec.events


# -- resume --------------------------------------------------------------------------------------

def fill_first_window(c: Coordinator, tid: str = "a", total: int = 40, window: int = 16,
                      now: float = 0) -> Transfer:
    c.open(tid, window, now=now)
    c.attach(tid, total, b"", now=now)
    push(c, tid, 0, window, now=now)
    return c.get(tid)


def attached(c: Coordinator, total: int, readers: int = 1) -> Transfer:
    """Transfer "a", opened (16-token window, for ``readers``) and attached at time 0."""
    t = c.open("a", 16, now=0, readers=readers)
    c.attach("a", total, b"", now=0)
    return t


def test_resume_applies_and_the_next_window_reuses_the_same_blocks() -> None:
    c, rec = make()
    t = fill_first_window(c)
    before = list(t.blocks)
    r = c.resume("a", 16, 0, now=5)
    assert not r.duplicate
    assert t.state is State.RESUMING
    assert t.blocks == before  # same indices: only sent_tokens tells the windows apart
    assert (t.window_start_token, t.window_tokens, t.resume_count) == (16, 16, 1)
    assert t.last_resume_sent_tokens == 16
    assert ("applied", "a", 16, 5.0) in rec.events
    push(c, "a", 16, 1)
    assert t.state is State.TRANSFERRING
    check_invariants(c)


def test_resume_repeat_and_stale_are_duplicates_in_any_state() -> None:
    c, rec = make()
    t = fill_first_window(c, total=40)
    c.resume("a", 16, 0, now=0)
    assert c.resume("a", 16, 0, now=0).duplicate  # RESUMING
    push(c, "a", 16, 16)
    c.resume("a", 32, 0, now=0)
    r = c.resume("a", 16, 0, now=0)
    assert r.duplicate and r.duplicate_reason == "stale"
    push(c, "a", 32, 8)
    assert t.state is State.SUCCESS
    assert c.resume("a", 32, 0, now=0).duplicate  # a late rank after SUCCESS
    assert t.resume_count == 2
    dups = [e for e in rec.events if e[0] == "duplicate"]
    assert dups == [("duplicate", "a", "repeat"), ("duplicate", "a", "stale"),
                    ("duplicate", "a", "repeat")]


def test_resume_terminal_without_duplicate_is_failed_precondition() -> None:
    c, _ = make()
    fill_first_window(c)
    c.abort("a", "gone", now=0)
    with pytest.raises(FailedPrecondition, match="FAILED: aborted: gone"):
        c.resume("a", 16, 0, now=0)


def test_resume_before_the_window_is_full() -> None:
    c, _ = make()
    c.open("a", 16, now=0)
    with pytest.raises(FailedPrecondition, match="BOOTSTRAPPING \\(no sender has attached yet\\)"):
        c.resume("a", 0, 0, now=0)
    c.attach("a", 40, b"", now=0)
    push(c, "a", 0, 10)
    with pytest.raises(FailedPrecondition, match="not full yet \\(10 of 16"):
        c.resume("a", 10, 0, now=0)


@pytest.mark.parametrize("sent", [15, 17])
def test_resume_with_other_sent_tokens(sent: int) -> None:
    c, _ = make()
    t = fill_first_window(c)
    with pytest.raises(FailedPrecondition, match=f"sent_tokens={sent} but the transfer has delivered 16"):
        c.resume("a", sent, 0, now=0)
    assert t.state is State.TRANSFERRING and t.resume_count == 0


def test_resume_ahead_while_resuming_is_refused() -> None:
    c, _ = make()
    fill_first_window(c)
    c.resume("a", 16, 0, now=0)
    with pytest.raises(FailedPrecondition, match="only in TRANSFERRING, and the transfer is RESUMING "
                       "\\(the last resume's window has received no rows yet\\)"):
        c.resume("a", 32, 0, now=0)


def test_resume_unknown_and_window_too_large() -> None:
    c, _ = make(num_blocks=4, window=16)
    with pytest.raises(NotFound):
        c.resume("x", 1, 0, now=0)
    fill_first_window(c, window=16)
    with pytest.raises(InvalidArgument, match="larger than the whole pool"):
        c.resume("a", 16, 40, now=0)


def test_resume_sizes_the_next_window() -> None:
    c, _ = make()
    t = fill_first_window(c, total=100, window=16)
    c.resume("a", 16, 40, now=0)
    assert (len(t.blocks), t.window_tokens) == (5, 40)
    push(c, "a", 16, 40)
    c.resume("a", 56, 0, now=0)  # 0: the Open size
    assert (len(t.blocks), t.window_tokens) == (2, 16)
    push(c, "a", 56, 16)
    c.resume("a", 72, 64, now=0)  # only 28 tokens remain: 4 blocks, not 8
    assert (len(t.blocks), t.window_tokens) == (4, 28)
    check_invariants(c)


def test_resume_waits_for_blocks_first_come_first_served_before_opens() -> None:
    c, _ = make(num_blocks=4, window=16)
    a = fill_first_window(c, "a", total=64, window=16)
    b = fill_first_window(c, "b", total=64, window=16)
    c.resume("a", 16, 32, now=1)  # frees 2, wants 4: waits
    assert a.state is State.RESUMING and a.waiting_for_blocks and a.blocks == []
    assert c.resumes_waiting == 1
    assert c.begin_write("a", 16, 4).count == 0
    with pytest.raises(ResourceExhausted, match="waiting for free blocks"):
        c.open("c", 8, now=1)
    c.resume("b", 16, 16, now=2)  # b's freed blocks go to a first, who asked first
    assert not a.waiting_for_blocks and len(a.blocks) == 4
    assert b.waiting_for_blocks and b.blocks == []
    c.abort("a", "make room", now=3)
    assert not b.waiting_for_blocks and len(b.blocks) == 2
    assert c.resumes_waiting == 0
    check_invariants(c)


def test_abort_while_waiting_for_blocks_leaves_the_queue() -> None:
    c, _ = make(num_blocks=4, window=16)
    fill_first_window(c, "a", total=64, window=16)
    fill_first_window(c, "b", total=64, window=16)
    c.resume("a", 16, 32, now=0)
    c.abort("a", "x", now=0)
    assert c.resumes_waiting == 0
    c.open("c", 16, now=0)
    check_invariants(c)


# -- abort, release ------------------------------------------------------------------------------

def test_abort_frees_blocks_and_is_idempotent() -> None:
    c, rec = make()
    fill_first_window(c)
    t = c.abort("a", "receiver gone", now=2)
    assert t.state is State.FAILED and t.failure_reason == "aborted: receiver gone"
    assert t.blocks == [] and c.allocator.free_count == 16
    again = c.abort("a", "again", now=3)
    assert again.failure_reason == "aborted: receiver gone"
    assert [e for e in rec.events if e[0] == "finished"] == [("finished", "a", "aborted")]


def test_abort_during_a_write_frees_blocks_only_after_it_lands() -> None:
    c, _ = make()
    c.open("a", 16, now=0)
    c.attach("a", 40, b"", now=0)
    ticket = c.begin_write("a", 0, 8)
    c.abort("a", "x", now=0)
    t = c.get("a")
    assert t.state is State.FAILED and t.blocks  # still held: the copy may be landing
    assert c.allocator.free_count == 14
    c.end_write(ticket, now=0)
    assert t.blocks == [] and c.allocator.free_count == 16 and t.sent_tokens == 0


def test_release() -> None:
    c, rec = make()
    fill_first_window(c, total=16)
    t = c.get("a")
    assert t.state is State.SUCCESS
    with pytest.raises(FailedPrecondition, match="live"):
        c.open("b", 8, now=0) and c.release("b")
    released, freed = c.release("a")
    assert freed == 2 and released.released
    assert ("released", "a", "client") in rec.events
    with pytest.raises(NotFound):
        c.get("a")
    with pytest.raises(NotFound):
        c.release("a")
    c.abort("b", "", now=0)
    c.release("b")
    check_invariants(c)
    assert c.allocator.free_count == 16


def test_read_segments_of_failed_is_refused() -> None:
    c, _ = make()
    fill_first_window(c)
    c.abort("a", "x", now=0)
    with pytest.raises(FailedPrecondition, match="nothing to read"):
        c.read_segments("a", now=0)


# -- the clock -----------------------------------------------------------------------------------

def test_bootstrap_timeout() -> None:
    c, _rec = make(bootstrap=10, stall=20)
    c.open("a", 8, now=0)
    c.expire(9.9)
    assert c.get("a").state is State.BOOTSTRAPPING
    c.expire(10)
    t = c.get("a")
    assert t.state is State.FAILED and t.outcome == Outcome.BOOTSTRAP_TIMEOUT
    assert "no sender attached within 10s" in t.failure_reason
    assert c.allocator.free_count == 16


@pytest.mark.parametrize("scenario,cause", [
    ("sender", "the sender delivered nothing after token 3"),
    ("receiver", "the window is full and the receiver did not resume"),
    ("blocks", "no free pool blocks for the next window"),
])
def test_stall_timeout_names_the_side_at_fault(scenario: str, cause: str) -> None:
    c, _ = make(num_blocks=4, window=16, bootstrap=10, stall=20)
    c.open("a", 16, now=0)
    c.attach("a", 64, b"", now=1)
    if scenario == "sender":
        push(c, "a", 0, 3, now=2)
    else:
        push(c, "a", 0, 16, now=2)
    if scenario == "blocks":
        fill_first_window(c, "b", total=64, window=16, now=5)  # b outlives a: no blocks free up
        c.resume("a", 16, 32, now=2)
    c.expire(21.9)
    assert c.get("a").state is not State.FAILED
    c.expire(22)
    t = c.get("a")
    assert t.outcome == Outcome.STALL_TIMEOUT and cause in t.failure_reason
    check_invariants(c)


def test_progress_pushes_the_stall_deadline() -> None:
    c, _ = make(stall=20)
    c.open("a", 64, now=0)
    c.attach("a", 64, b"", now=0)
    for i, now in enumerate(range(5, 60, 5)):
        push(c, "a", i, 1, now=now)
        c.observe("a", now)
        c.expire(now)
    assert c.get("a").state is State.TRANSFERRING


def test_retention_releases_terminal_transfers() -> None:
    c, rec = make(retention=30)
    fill_first_window(c, total=16)
    c.expire(29)
    assert "a" in c.transfers
    c.expire(30)
    assert "a" not in c.transfers
    assert ("released", "a", "retention") in rec.events
    assert c.allocator.free_count == 16


def test_retention_after_a_timeout() -> None:
    c, _ = make(bootstrap=10, retention=30)
    c.open("a", 8, now=0)
    c.expire(10)
    c.expire(39)
    assert "a" in c.transfers
    c.expire(40)
    assert "a" not in c.transfers


def test_a_reopened_id_is_not_expired_by_its_predecessor_deadline() -> None:
    c, _ = make(bootstrap=10, retention=5)
    c.open("a", 8, now=0)
    c.abort("a", "", now=0)
    c.release("a")
    c.open("a", 8, now=8)
    c.expire(10)  # the old transfer's bootstrap deadline
    assert c.get("a").state is State.BOOTSTRAPPING


def test_fail_all_for_shutdown() -> None:
    c, _ = make()
    fill_first_window(c, "a")
    fill_first_window(c, "b", total=16)
    assert c.fail_all(Outcome.SHUTDOWN, "shutdown", now=0) == 1
    assert c.get("a").outcome == Outcome.SHUTDOWN and c.get("b").state is State.SUCCESS


def test_receiver_lease_expires_without_receiver_calls() -> None:
    c, _rec = make(lease=5, stall=100)
    c.open("a", 16, now=0)
    c.attach("a", 64, b"", now=0)
    for now in (1, 2, 3, 4):
        push(c, "a", now - 1, 1, now=now)  # the sender's progress does not renew the lease
        c.expire(now)
    c.expire(5)
    t = c.get("a")
    assert t.outcome == Outcome.LEASE_EXPIRED and "no call" in t.failure_reason
    assert t.blocks == []


def test_receiver_calls_renew_the_lease_but_are_not_progress() -> None:
    c, _ = make(lease=5, stall=12)
    fill_first_window(c, total=64)
    for now in range(1, 12):
        c.observe("a", now)  # a receiver polling, never resuming
        c.expire(now)
    assert c.get("a").state is State.TRANSFERRING
    c.observe("a", 12)
    c.expire(12)
    assert c.get("a").outcome == Outcome.STALL_TIMEOUT


def test_an_open_watch_holds_the_lease() -> None:
    c, _ = make(lease=5, stall=100)
    t = fill_first_window(c, total=64)
    c.watch_started(t, now=0)
    c.expire(50)
    assert t.state is State.TRANSFERRING
    c.watch_ended(t, now=50)
    c.expire(54.9)
    assert t.state is State.TRANSFERRING
    c.expire(55)
    assert t.outcome == Outcome.LEASE_EXPIRED


def test_a_sender_whose_stream_ended_early_has_the_reconnect_grace() -> None:
    c, _ = make(stall=100, grace=2)
    t = attached(c, 64)
    c.sender_started(t)
    push(c, "a", 0, 5, now=1)
    c.sender_ended(t, now=1)
    c.expire(2.9)
    assert t.state is State.TRANSFERRING
    c.attach("a", 64, b"", now=2.9)  # a sender reconnects within the grace: nothing fails
    c.sender_started(t)
    c.expire(10)
    assert t.state is State.TRANSFERRING
    c.sender_ended(t, now=10)
    c.expire(11.9)
    assert t.state is State.TRANSFERRING
    c.expire(12)
    assert t.outcome == Outcome.SENDER_GONE
    assert "5 of 64 tokens" in t.failure_reason and "2s" in t.failure_reason


def test_a_sender_stream_ending_beside_another_starts_no_grace() -> None:
    c, _ = make(stall=100, grace=2)
    t = attached(c, 64)
    c.sender_started(t)
    c.sender_started(t)
    c.sender_ended(t, now=1)  # one of two ended: the other still sends
    c.expire(50)
    assert t.state is State.TRANSFERRING


def test_a_sender_stream_ending_with_its_transfer_starts_no_grace() -> None:
    c, _ = make(stall=100, grace=2, retention=1000)
    t = attached(c, 16)
    c.sender_started(t)
    push(c, "a", 0, 16, now=1)
    c.sender_ended(t, now=1)
    assert t.state is State.SUCCESS and t.sender_left_at is None


def test_a_commit_is_a_sender_calling_again() -> None:
    c, _ = make(stall=100, grace=2)
    t = attached(c, 64)
    c.sender_started(t)
    g = c.grant("a")
    assert g is not None
    c.sender_ended(t, now=0)
    c.commit("a", g.epoch, 0, 4, now=1.5)
    c.expire(5)
    assert t.state is State.TRANSFERRING


def test_a_watch_opened_until_done_that_ends_early_leaves_the_reconnect_grace() -> None:
    c, _ = make(lease=30, stall=100, grace=2)
    t = fill_first_window(c, total=64)
    c.watch_started(t, now=0)
    c.watch_ended(t, now=1, until_done=True)
    c.observe("a", 2.5)  # the receiver came back (a Poll): the lease applies again
    c.expire(10)
    assert t.state is State.TRANSFERRING
    c.watch_started(t, now=10)
    c.watch_started(t, now=10)
    c.watch_ended(t, now=11, until_done=True)  # another Watch still holds the transfer
    c.expire(20)
    assert t.state is State.TRANSFERRING
    c.watch_ended(t, now=20, until_done=True)
    c.expire(21.9)
    assert t.state is State.TRANSFERRING
    c.expire(22)
    assert t.outcome == Outcome.RECEIVER_GONE and "Watch ended" in t.failure_reason


def test_a_watch_closed_on_purpose_leaves_the_lease() -> None:
    c, _ = make(lease=30, stall=100, grace=2)
    t = fill_first_window(c, total=64)
    c.watch_started(t, now=0)
    c.watch_ended(t, now=1)  # a receiver that reads later (vLLM's scheduler hands over to a worker)
    c.expire(30.9)
    assert t.state is State.TRANSFERRING
    c.expire(31)
    assert t.outcome == Outcome.LEASE_EXPIRED


def test_a_window_of_two_readers_moves_on_with_the_second_resume() -> None:
    c, _ = make(stall=100)
    attached(c, 40, readers=2)
    push(c, "a", 0, 16, now=0)
    t = c.get("a")
    epoch = t.window_epoch
    first = c.resume("a", 16, 0, now=1, reader=1)
    assert (first.duplicate, first.pending) == (False, 1)
    assert t.state is State.TRANSFERRING and t.window_epoch == epoch  # still the readers' window
    assert c.resume("a", 16, 0, now=2, reader=1).duplicate  # a retry stands in for nobody
    with pytest.raises(InvalidArgument, match="opened for 2 reader"):
        c.resume("a", 16, 0, now=2, reader=2)
    last = c.resume("a", 16, 0, now=3, reader=0)
    assert (last.duplicate, last.pending) == (False, 0)
    assert t.state is State.RESUMING and t.window_epoch != epoch and not t.resumed_by
    assert c.totals.resumes_applied == 1 and c.totals.duplicates["repeat"] == 1


def test_a_transfer_of_two_readers_is_released_by_the_second() -> None:
    c, _ = make()
    attached(c, 8, readers=2)
    push(c, "a", 0, 8, now=0)
    assert c.release("a", reader=0) == (c.get("a"), 0)  # the other reader still reads
    _, freed = c.release("a", reader=1)
    assert freed > 0 and "a" not in c.transfers


def test_a_reader_that_left_fails_the_transfer_naming_it() -> None:
    c, _ = make(lease=30, stall=100, grace=2)
    t = attached(c, 40, readers=2)
    for r in (0, 1):
        c.watch_started(t, now=0, reader=r)
    c.watch_ended(t, now=1, until_done=True, reader=1)
    c.observe("a", 2.5)  # a Poll names no reader: it does not say reader 1 is back
    c.expire(3)
    assert t.outcome == Outcome.RECEIVER_GONE and "reader 1 (of 2)" in t.failure_reason


def test_retention_shorter_than_the_live_deadline() -> None:
    c, _ = make(stall=100, retention=2)
    fill_first_window(c, total=16, now=0)
    c.expire(2)
    assert "a" not in c.transfers


def test_max_transfers() -> None:
    c, _ = make(max_transfers=2)
    c.open("a", 8, now=0)
    c.open("b", 8, now=0)
    with pytest.raises(ResourceExhausted, match="--max-transfers"):
        c.open("c", 8, now=0)


def test_fail_of_a_transfer_that_already_failed_keeps_the_first_outcome() -> None:
    """The copy-error path fails the transfer after awaiting a copy; an Abort or a timeout may have
    failed it meanwhile. That second fail must change nothing (and must not raise, which would
    hide the copy's real error)."""
    c, _ = make()
    c.open("a", 16, now=0)
    c.attach("a", 40, b"", now=0)
    ticket = c.begin_write("a", 0, 8)  # a copy is in flight ...
    t = c.abort("a", "receiver gone", now=1)  # ... when the transfer is aborted
    c.fail(t, Outcome.ERROR, "error: copying rows into the pool failed", now=2)
    assert (t.state, t.outcome, t.failure_reason) == (State.FAILED, Outcome.ABORTED, "aborted: receiver gone")
    assert c.totals.finished[Outcome.ERROR] == 0 and c.totals.finished[Outcome.ABORTED] == 1
    assert t.blocks  # still held: the copy may yet land
    c.end_write(ticket, now=3, landed=False)
    assert t.blocks == [] and c.allocator.free_count == 16


def test_the_window_epoch_changes_whenever_the_window_is_given_back() -> None:
    c, _ = make()
    t = fill_first_window(c)
    first = t.window_epoch
    c.resume("a", 16, 0, now=0)
    assert t.window_epoch == first + 1  # the same blocks come back, in a new epoch
    push(c, "a", 16, 16)
    c.abort("a", "", now=0)
    assert t.window_epoch == first + 2


def test_list_transfers_pages_in_opening_order_and_filters_by_state() -> None:
    c, _ = make()
    for tid in ("a", "b", "c", "d"):
        c.open(tid, 16, now=0)
    c.abort("b", "", now=0)
    page, more = c.list_transfers(limit=2)
    assert [t.transfer_id for t in page] == ["a", "b"] and more
    page, more = c.list_transfers(after=page[-1].seq, limit=2)
    assert [t.transfer_id for t in page] == ["c", "d"] and not more
    page, _ = c.list_transfers(states={State.FAILED})
    assert [t.transfer_id for t in page] == ["b"]


def test_released_transfers_leave_nothing_behind() -> None:
    """A released transfer's deadline entries (each holding the transfer and its metadata) are
    compacted away: memory does not grow with the transfers that came and went. It grew by
    ~0.65 KB per transfer until each one's retention deadline passed."""
    import gc
    import tracemalloc

    c, _ = make(retention=10_000)
    watched = Listener()
    c.listener = watched

    def cycles(first: int, n: int) -> None:
        for i in range(first, first + n):
            tid = f"t{i}"
            c.open(tid, 8, 0.0)
            c.attach(tid, 8, b"m" * 1000, 0.0)
            push(c, tid, 0, 8)
            c.watch_started(c.get(tid), 0.0)  # one more deadline entry, as a Watch adds
            c.watch_ended(c.get(tid), 0.0)
            c.release(tid)

    cycles(0, 500)  # warm up: interned strings, dict sizes
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    cycles(500, 5000)
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes stayed behind after 5000 released transfers"
    assert len(c.deadlines) <= 2 * 64 + 2


def test_a_call_for_another_opening_is_refused() -> None:
    c, _ = make()
    first = c.open("x", 16, 0.0).incarnation
    c.abort("x", "done", 0.0)
    c.release("x")
    second = c.open("x", 16, 0.0).incarnation
    assert second > first
    c.attach("x", 32, b"", 0.0)
    push(c, "x", 0, 16)
    for call in (lambda: c.resume("x", 16, 0, 1.0, incarnation=first),
                 lambda: c.abort("x", "late", 1.0, incarnation=first),
                 lambda: c.release("x", incarnation=first),
                 lambda: c.read_segments("x", 1.0, incarnation=first),
                 lambda: c.begin_write("x", 16, 1, incarnation=first),
                 lambda: c.commit("x", 1, 16, 1, 1.0, incarnation=first)):
        with pytest.raises(FailedPrecondition, match="was reopened"):
            call()
    t = c.get("x", second)
    assert (t.state, t.sent_tokens, t.resume_count) == (State.TRANSFERRING, 16, 0)


@pytest.mark.parametrize("tid", ["a\x00b", "a\nb", "a\u202eb", "a\u200bb", "a b", "\x7f"])
def test_ids_that_would_forge_log_lines_are_refused(tid: str) -> None:
    c, _ = make()
    with pytest.raises(InvalidArgument, match="printable"):
        c.open(tid, 8, 0.0)


def test_failure_reasons_are_bounded() -> None:
    c, _ = make()
    t = c.open("x", 8, 0.0)
    with pytest.raises(InvalidArgument, match="1024"):
        c.abort("x", "r" * 1025, 0.0)
    assert t.state is State.BOOTSTRAPPING
    c.fail(t, Outcome.ERROR, "e" * 10_000, 0.0)
    assert len(t.failure_reason.encode()) <= 2048 and t.failure_reason.endswith("...")

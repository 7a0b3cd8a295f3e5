"""The one-sided protocol in the core: grants, commits, detach, and the fence on failure."""

from __future__ import annotations

import pytest

from kvferry.statemachine import (
    Aborted,
    Coordinator,
    FailedPrecondition,
    InvalidArgument,
    Limits,
    OutOfRange,
    State,
)

BT = 4


def make(num_blocks: int = 8, fence: float = 50.0) -> Coordinator:
    return Coordinator(Limits(num_blocks=num_blocks, block_tokens=BT, default_window_tokens=8,
                              bootstrap_timeout=10, stall_timeout=20, retention=30,
                              lease_timeout=1000, fence_timeout=fence))


def attached(c: Coordinator, tid: str = "a", total: int = 20, window: int = 8) -> None:
    c.open(tid, window, 0)
    c.attach(tid, total, b"", 0)


def test_a_grant_is_the_rest_of_the_current_window() -> None:
    c = make()
    c.open("a", 8, 0)
    assert c.grant("a") is None  # no sender yet
    c.attach("a", 20, b"", 0)
    g = c.grant("a")
    assert g is not None
    assert (g.start_token, g.tokens, g.window_start_token, g.blocks) == (0, 8, 0, [0, 1])
    assert c.grant("a") == g  # asked again (a reconnecting writer): the same grant


def test_commits_deliver_like_a_push_and_the_window_goes_round() -> None:
    c = make()
    attached(c)
    g = c.grant("a")
    assert g is not None
    assert not c.commit("a", g.epoch, 0, 3, 1).duplicate
    t = c.commit("a", g.epoch, 3, 5, 1).transfer
    assert t.sent_tokens == 8 and t.window_full and t.lent_epoch == -1
    assert c.grant("a") is None  # the window is full: nothing to lend until the resume
    c.resume("a", 8, 0, 1)
    g2 = c.grant("a")
    assert g2 is not None and g2.epoch != g.epoch and g2.blocks == g.blocks  # same blocks, new epoch
    c.commit("a", g2.epoch, 8, 8, 2)
    c.resume("a", 16, 0, 2)
    g3 = c.grant("a")
    assert g3 is not None and (g3.start_token, g3.tokens) == (16, 4)
    assert c.commit("a", g3.epoch, 16, 4, 3).transfer.state is State.SUCCESS


def test_commit_rules() -> None:
    c = make()
    attached(c)
    g = c.grant("a")
    assert g is not None
    with pytest.raises(OutOfRange, match="gap"):
        c.commit("a", g.epoch, 2, 2, 0)
    with pytest.raises(InvalidArgument, match="runs past the granted window, which ends at token 8"):
        c.commit("a", g.epoch, 0, 9, 0)
    with pytest.raises(FailedPrecondition, match="resumed past"):
        c.commit("a", g.epoch + 1, 0, 2, 0)
    c.commit("a", g.epoch, 0, 8, 0)
    assert c.commit("a", g.epoch, 0, 8, 0).duplicate  # a repeat: answered, nothing changes
    assert c.totals.commit_duplicates == 1
    c.resume("a", 8, 0, 0)
    assert c.commit("a", g.epoch, 4, 4, 0).duplicate  # a late repeat of a resumed window
    with pytest.raises(FailedPrecondition, match="not lent"):
        c.commit("a", c.get("a").window_epoch, 8, 1, 0)  # no grant asked for this window yet


def test_a_commit_from_an_earlier_opening_of_the_id_is_refused() -> None:
    c = make()
    attached(c)
    old = c.grant("a")
    assert old is not None
    c.abort("a", "", 0)
    c.detach("a", old.epoch)
    c.release("a")
    attached(c)
    c.grant("a")
    with pytest.raises(FailedPrecondition, match="earlier opening"):
        c.commit("a", old.epoch, 0, 8, 0)


def test_push_cannot_write_into_a_lent_window() -> None:
    c = make()
    attached(c)
    g = c.grant("a")
    assert g is not None
    with pytest.raises(FailedPrecondition, match="lent to a one-sided writer"):
        c.begin_write("a", 0, 1)
    c.detach("a", g.epoch)  # the writer gives the grant back: a Push may go on
    assert c.begin_write("a", 0, 1).count == 1


def test_a_failure_fences_a_lent_window_until_the_writer_stops() -> None:
    c = make(num_blocks=4)
    attached(c)
    g = c.grant("a")
    assert g is not None
    c.commit("a", g.epoch, 0, 3, 0)
    c.abort("a", "receiver gone", 1)
    assert c.allocator.free_count == 2 and c.quarantine.blocks == 2  # not free: a write may land
    with pytest.raises(Aborted, match="receiver gone"):
        c.commit("a", g.epoch, 3, 2, 2)  # a partial commit says nothing about the rest
    assert c.quarantine.blocks == 2
    c.release("a")  # the fence outlives the transfer
    attached(c, "b")  # the next transfer gets other blocks
    gb = c.grant("b")
    assert gb is not None and not set(gb.blocks) & set(g.blocks)
    assert c.detach("a", g.epoch) == 2  # the writer says it stopped
    assert c.quarantine.blocks == 0 and c.totals.fences_lifted["detach"] == 1
    assert c.detach("a", g.epoch) == 0  # idempotent


def test_a_commit_reaching_the_grants_end_after_the_failure_lifts_the_fence() -> None:
    c = make()
    attached(c)
    g = c.grant("a")
    assert g is not None
    c.abort("a", "", 0)
    with pytest.raises(Aborted):
        c.commit("a", g.epoch, 0, 8, 1)
    assert c.quarantine.blocks == 0 and c.totals.fences_lifted["commit"] == 1


def test_the_fence_timeout_lifts_a_fence_nobody_lifted() -> None:
    c = make(fence=5)
    attached(c)
    g = c.grant("a")
    assert g is not None
    c.abort("a", "", 1)
    assert c.next_deadline() == 6
    c.expire(5.9)
    assert c.quarantine.blocks == 2
    c.expire(6)
    assert c.quarantine.blocks == 0 and c.totals.fences_lifted["timeout"] == 1
    c.release("a")
    assert c.allocator.free_count == 8


def test_a_timeout_fences_too_and_a_resume_waiting_for_blocks_waits_for_the_fence() -> None:
    c = make(num_blocks=4, fence=100)
    attached(c, "a", total=40)
    attached(c, "b", total=40)
    ga = c.grant("a")
    gb = c.grant("b")
    assert ga is not None and gb is not None
    c.commit("a", ga.epoch, 0, 8, 0)
    c.resume("a", 8, 0, 0)  # a's next window: the same two blocks, lent again below
    ga2 = c.grant("a")
    assert ga2 is not None
    c.commit("b", gb.epoch, 0, 8, 0)
    c.expire(20)  # stall: both fail; a's lent window is fenced, b's was fully committed
    assert c.get("a").state is State.FAILED and c.get("b").state is State.FAILED
    assert c.quarantine.blocks == 2 and c.allocator.free_count == 2

"""The transition table and its guards, alone."""

import pytest

from kvferry.statemachine import (
    LIVE, TERMINAL, TRANSITIONS, IllegalTransition, State, Transfer, fire,
)


def make(state: State = State.BOOTSTRAPPING, *, total: int = 20, sent: int = 0,
         window_start: int = 0, window: int = 8) -> Transfer:
    t = Transfer("t", window, [0], window, now=0.0)
    t.state, t.total_tokens, t.sent_tokens = state, total, sent
    t.window_start_token, t.window_tokens = window_start, window
    return t


def test_states_match_the_wire_enum() -> None:
    from kvferry.v1 import transfer_pb2 as pb
    for s in State:
        assert pb.TransferState.Value(f"TRANSFER_STATE_{s.name}") == s.value


def test_table_shape() -> None:
    events = {r.event for r in TRANSITIONS}
    assert events == {"attach", "resume", "deliver", "complete", "fail"}
    for r in TRANSITIONS:
        assert not set(r.sources) & TERMINAL, f"{r.event} leaves a terminal state"
    fail = next(r for r in TRANSITIONS if r.event == "fail")
    assert set(fail.sources) == set(LIVE) and fail.dest is State.FAILED


def test_attach() -> None:
    t = make()
    assert fire("attach", t)
    assert t.state is State.TRANSFERRING


def test_resume_needs_a_full_window_and_matching_sent_tokens() -> None:
    t = make(State.TRANSFERRING, sent=5)
    assert not fire("resume", t, sent_tokens=5)  # window not full
    assert t.state is State.TRANSFERRING
    t.sent_tokens = 8
    assert not fire("resume", t, sent_tokens=7)  # not what was delivered
    assert not fire("resume", t, sent_tokens=9)
    assert fire("resume", t, sent_tokens=8)
    assert t.state is State.RESUMING


def test_resume_refused_when_everything_was_sent() -> None:
    t = make(State.TRANSFERRING, total=8, sent=8)
    assert not fire("resume", t, sent_tokens=8)


def test_deliver_needs_rows_in_the_new_window() -> None:
    t = make(State.RESUMING, sent=8, window_start=8)
    assert not fire("deliver", t)
    t.sent_tokens = 9
    assert fire("deliver", t)
    assert t.state is State.TRANSFERRING


@pytest.mark.parametrize("state", [State.TRANSFERRING, State.RESUMING])
def test_complete_only_when_all_tokens_sent(state: State) -> None:
    t = make(state, total=10, sent=9, window_start=8)
    assert not fire("complete", t)
    t.sent_tokens = 10
    assert fire("complete", t)
    assert t.state is State.SUCCESS


def test_complete_with_unknown_total_is_refused() -> None:
    t = make(State.TRANSFERRING, total=0, sent=0)
    assert not fire("complete", t)


@pytest.mark.parametrize("state", LIVE)
def test_fail_from_every_live_state(state: State) -> None:
    t = make(state)
    assert fire("fail", t)
    assert t.state is State.FAILED


@pytest.mark.parametrize("state", sorted(TERMINAL, key=lambda s: s.value))
@pytest.mark.parametrize("event", ["attach", "resume", "deliver", "complete", "fail"])
def test_terminal_states_are_never_left(state: State, event: str) -> None:
    t = make(state, sent=8)
    with pytest.raises(IllegalTransition):
        fire(event, t, **({"sent_tokens": 8} if event == "resume" else {}))
    assert t.state is state


def test_events_from_states_without_a_row_are_bugs() -> None:
    with pytest.raises(IllegalTransition):
        fire("resume", make(State.BOOTSTRAPPING), sent_tokens=0)
    with pytest.raises(IllegalTransition):
        fire("attach", make(State.TRANSFERRING))

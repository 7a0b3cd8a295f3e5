"""The transition table and its guards, alone."""

import pytest

from kvferry.statemachine import (
    LIVE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    State,
    Transfer,
    fire,
    must_fire,
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
    assert fire("attach", t) is None
    assert t.state is State.TRANSFERRING


def test_resume_needs_a_full_window_and_matching_sent_tokens() -> None:
    t = make(State.TRANSFERRING, sent=5)
    assert "not full yet (5 of 8" in str(fire("resume", t, sent_tokens=5))
    assert t.state is State.TRANSFERRING
    t.sent_tokens = 8
    for other in (7, 9):
        assert f"sent_tokens={other} but the transfer has delivered 8" in str(
            fire("resume", t, sent_tokens=other))
    t.resumed_by.add(0)  # the coordinator records the reader first (rule 4a)
    assert fire("resume", t, sent_tokens=8) is None
    assert t.state is State.RESUMING


def test_a_window_moves_on_only_once_every_reader_resumed_it() -> None:
    t = make(State.TRANSFERRING, sent=8)
    t.readers = 2
    t.resumed_by.add(1)
    why = fire("resume", t, sent_tokens=8)
    assert why is not None and why.reason == "READERS_PENDING" and "1 of 2 readers" in why
    assert t.state is State.TRANSFERRING
    t.resumed_by.add(0)
    assert fire("resume", t, sent_tokens=8) is None
    assert t.state is State.RESUMING


def test_resume_refused_when_everything_was_sent() -> None:
    t = make(State.TRANSFERRING, total=8, sent=8)
    assert fire("resume", t, sent_tokens=8) == "every token is delivered; nothing to resume"


def test_deliver() -> None:
    t = make(State.RESUMING, sent=9, window_start=8)
    assert fire("deliver", t) is None
    assert t.state is State.TRANSFERRING


def test_complete_only_when_all_tokens_sent() -> None:
    t = make(State.TRANSFERRING, total=10, sent=9, window_start=8)
    assert fire("complete", t) == "9 of 10 tokens delivered"
    t.sent_tokens = 10
    assert fire("complete", t) is None
    assert t.state is State.SUCCESS


def test_complete_with_unknown_total_is_refused() -> None:
    t = make(State.TRANSFERRING, total=0, sent=0)
    assert fire("complete", t) == "0 of ? tokens delivered"


@pytest.mark.parametrize("state", LIVE)
def test_fail_from_every_live_state(state: State) -> None:
    t = make(state)
    assert fire("fail", t) is None
    assert t.state is State.FAILED


@pytest.mark.parametrize("state", sorted(TERMINAL, key=lambda s: s.value))
@pytest.mark.parametrize("event", ["attach", "resume", "deliver", "complete", "fail"])
def test_terminal_states_are_never_left(state: State, event: str) -> None:
    t = make(state, sent=8)
    why = fire(event, t, **({"sent_tokens": 8} if event == "resume" else {}))
    assert why is not None and f"the transfer is {state.name}" in why
    assert t.state is state


def test_an_event_without_a_row_names_the_states_it_is_allowed_in() -> None:
    t = make(State.BOOTSTRAPPING)
    assert fire("resume", t, sent_tokens=0) == (
        "resume is allowed only in TRANSFERRING, and the transfer is BOOTSTRAPPING "
        "(no sender has attached yet)")
    assert "fail" not in str(fire("deliver", t))  # the reason is the event's own
    assert t.state is State.BOOTSTRAPPING


def test_must_fire_turns_a_refusal_into_a_bug() -> None:
    with pytest.raises(IllegalTransition, match="attach refused: attach is allowed only in BOOTSTRAPPING"):
        must_fire("attach", make(State.TRANSFERRING))

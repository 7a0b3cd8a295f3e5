"""The lifecycle of one transfer: its states, its guards, and its transition table.

The rules (everything else in kvferry follows from these):

1. A transfer is opened by its receiver in BOOTSTRAPPING, holding its first window of pool blocks.
2. The sender's first Push ``attach``-es: BOOTSTRAPPING -> TRANSFERRING.
3. Rows are delivered into the current window in token order. ``sent_tokens`` counts every token ever
   delivered, across windows, and only grows.
4. When the window is full and tokens remain, the receiver reads it and ``resume``-s with the
   ``sent_tokens`` it saw: TRANSFERRING -> RESUMING. The guard is keyed on ``sent_tokens``, never on
   block indices: the allocator hands freed blocks straight back, so two consecutive windows usually
   have the *same* indices, while their ``sent_tokens`` always differ. A resume whose ``sent_tokens``
   is not above the last applied one is a duplicate (a retry, a stale message): the coordinator
   answers it and this table never sees it.
4a. A transfer opened for N readers (tensor-parallel ranks, each reading every window from the
   pool itself) moves on only once every reader has resumed the window, each naming itself
   (``reader``): until then a resume is recorded, and the window stays theirs. A reader's second
   resume of the same window is a duplicate: a retry never stands in for another reader.
5. The first rows ``deliver``-ed into the new window: RESUMING -> TRANSFERRING.
6. When ``sent_tokens == total_tokens`` the transfer is ``complete``: SUCCESS. Rows land only in
   TRANSFERRING (rule 5 runs first), so that is the one state ``complete`` leaves.
7. Any live state may ``fail`` (abort, timeout, lost lease, shutdown): FAILED.
8. SUCCESS and FAILED are terminal: no event leaves them.

``TRANSITIONS`` below is the single source of truth: the machine, the docs and the diagram are
generated from it, and every refusal the coordinator reports comes from it. ``fire`` answers
``None`` when the event happened, or the reason it did not: the refusing guard's own words, or the
states the table allows it from. One shared ``transitions.Machine`` drives every transfer, so a
transfer costs no per-model registration and nothing has to be removed when it is released.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import NamedTuple

from transitions import EventData, Machine, MachineError

from kvferry.statemachine.errors import Reason


class State(enum.Enum):
    """Values equal the wire enum ``kvferry.v1.TransferState``."""

    BOOTSTRAPPING = 1
    TRANSFERRING = 2
    RESUMING = 3
    SUCCESS = 4
    FAILED = 5

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCESS, State.FAILED})
LIVE = (State.BOOTSTRAPPING, State.TRANSFERRING, State.RESUMING)


class Transfer:
    """What the core knows of one transfer. Mutated only by the coordinator and this table."""

    __slots__ = (
        "blocks",
        "blocks_wanted",
        "failure_reason",
        "finished_at",
        "incarnation",
        "last_progress_at",
        "last_resume_sent_tokens",
        "lease_renewed_at",
        "lent_epoch",
        "metadata",
        "open_window_tokens",
        "opened_at",
        "opened_epoch",
        "outcome",
        "reader_watchers",
        "readers",
        "readers_left",
        "released",
        "released_by",
        "resume_count",
        "resumed_by",
        "sender_left_at",
        "senders",
        "sent_tokens",
        "seq",
        "state",
        "total_tokens",
        "transfer_id",
        "version",
        "watchers",
        "window_epoch",
        "window_full_at",
        "window_start_token",
        "window_tokens",
        "write_in_flight",
    )

    def __init__(self, transfer_id: str, open_window_tokens: int, blocks: list[int],
                 window_tokens: int, now: float) -> None:
        self.transfer_id = transfer_id
        self.state = State.BOOTSTRAPPING
        self.open_window_tokens = open_window_tokens
        self.total_tokens = 0  # unknown until the sender attaches
        self.metadata = b""
        self.sent_tokens = 0
        self.window_start_token = 0
        self.window_tokens = window_tokens  # capacity of the current window
        self.blocks = blocks
        self.blocks_wanted = 0  # > 0 while a resume waits for free blocks
        self.resume_count = 0
        self.last_resume_sent_tokens = -1
        self.failure_reason = ""
        self.outcome = ""  # set once, on reaching a terminal state
        self.opened_at = now
        self.last_progress_at = now
        self.finished_at = 0.0
        self.window_full_at: float | None = None
        self.version = 0  # bumped on every change a watcher could see
        self.write_in_flight = False
        self.released = False
        self.lease_renewed_at = now  # the receiver's last call
        self.watchers = 0  # open Watch streams: each holds the lease
        self.senders = 0  # open sender streams (Push, Attach)
        # When the last sender stream ended with the transfer live; None once a sender called
        # again. It has the reconnect grace to come back (so has a reader: readers_left).
        self.sender_left_at: float | None = None
        # Readers (ranks) that read every window: the window moves on once all resumed it
        # (rule 4a), the transfer is released once all released it.
        self.readers = 1
        self.resumed_by: set[int] = set()  # readers that resumed the current window
        self.released_by: set[int] = set()
        self.reader_watchers: dict[int, int] = {}  # open Watch streams per reader
        # Readers whose last Watch opened until_done ended with the transfer live: when.
        self.readers_left: dict[int, float] = {}
        self.seq = 0  # order of opening, set by the coordinator
        # Which opening of this id this is (the coordinator numbers them, never reusing one): a
        # call that names another incarnation is for an opening that was released.
        self.incarnation = 0
        # Changes every time the window's blocks are given back (resume, failure, release), and
        # is unique across the server's life (the coordinator numbers them): a reader or writer
        # that planned against one epoch must not touch the blocks in another.
        self.window_epoch = 0
        self.opened_epoch = 0  # the first window's epoch: older ones belong to another opening
        # The epoch of the window lent to a one-sided writer (a grant not yet fully committed);
        # -1 when none is.
        self.lent_epoch = -1

    @property
    def window_filled_tokens(self) -> int:
        return self.sent_tokens - self.window_start_token

    @property
    def window_full(self) -> bool:
        return self.window_tokens > 0 and self.window_filled_tokens == self.window_tokens

    @property
    def waiting_for_blocks(self) -> bool:
        return self.blocks_wanted > 0


class Refusal(str):
    """Why an event may not happen: the text people read, with ``reason``, the stable code
    (``errors.Reason``) a program branches on."""

    reason: str

    def __new__(cls, reason: str, text: str) -> Refusal:
        self = super().__new__(cls, text)
        self.reason = reason
        return self


# Guards: a Refusal, or None when the event may happen. The coordinator turns a refusal into the
# error the caller sees, so each rule is written once, here.
Guard = Callable[..., "Refusal | None"]


def all_tokens_sent(t: Transfer) -> Refusal | None:
    if t.total_tokens == 0 or t.sent_tokens != t.total_tokens:
        return Refusal(Reason.WRONG_STATE, f"{t.sent_tokens} of {t.total_tokens or '?'} tokens delivered")
    return None


# Why ``every_reader_resumed`` holds a resume back: not an error, and never sent as one (the
# coordinator records the reader and answers ResumeResponse.readers_pending).
READERS_PENDING = "READERS_PENDING"


def every_reader_resumed(t: Transfer, sent_tokens: int) -> Refusal | None:
    if len(t.resumed_by) < t.readers:
        return Refusal(READERS_PENDING,
                       f"{len(t.resumed_by)} of {t.readers} readers resumed the window ending at "
                       f"token {t.sent_tokens}; it moves on once every reader has")
    return None


def resume_is_due(t: Transfer, sent_tokens: int) -> Refusal | None:
    if sent_tokens != t.sent_tokens:
        return Refusal(Reason.SENT_TOKENS_MISMATCH,
                       f"resume names sent_tokens={sent_tokens} but the transfer has delivered "
                       f"{t.sent_tokens}; resume with the sent_tokens that Poll or Watch reports "
                       f"once the window is full")
    if not t.window_full:
        return Refusal(Reason.WINDOW_NOT_FULL,
                       f"the window is not full yet ({t.window_filled_tokens} of "
                       f"{t.window_tokens} tokens from token {t.window_start_token}); wait until "
                       f"window_filled_tokens == window_tokens before resuming")
    if t.total_tokens and t.sent_tokens >= t.total_tokens:
        return Refusal(Reason.NOTHING_TO_RESUME, "every token is delivered; nothing to resume")
    return None


class Rule(NamedTuple):
    event: str
    sources: tuple[State, ...]
    dest: State
    guards: tuple[Guard, ...] = ()


TRANSITIONS: tuple[Rule, ...] = (
    Rule("attach", (State.BOOTSTRAPPING,), State.TRANSFERRING),
    Rule("resume", (State.TRANSFERRING,), State.RESUMING, (resume_is_due, every_reader_resumed)),
    Rule("deliver", (State.RESUMING,), State.TRANSFERRING),
    Rule("complete", (State.TRANSFERRING,), State.SUCCESS, (all_tokens_sent,)),
    Rule("fail", LIVE, State.FAILED),
)


# What each state means, for the reason given when an event has no row from it.
MEANING = {
    State.BOOTSTRAPPING: "no sender has attached yet",
    State.TRANSFERRING: "the sender is writing into the current window",
    State.RESUMING: "the last resume's window has received no rows yet",
    State.SUCCESS: "every token was delivered; it is finished",
    State.FAILED: "it failed; it is finished",
}


def _condition(guard: Guard) -> Callable[[EventData], bool]:
    def check(event: EventData) -> bool:
        kwargs = dict(event.kwargs)
        why: list[Refusal] = kwargs.pop("_why")
        reason = guard(event.model, **kwargs)
        if reason is None:
            return True
        why.append(reason)
        return False

    check.__name__ = guard.__name__
    return check


# transitions logs every trigger at DEBUG/INFO: measurable per event, and noise in a server's logs.
logging.getLogger("transitions").setLevel(logging.WARNING)

MACHINE = Machine(
    model=None,
    states=State,
    initial=State.BOOTSTRAPPING,
    transitions=[
        {"trigger": r.event, "source": list(r.sources), "dest": r.dest,
         "conditions": [_condition(g) for g in r.guards]}
        for r in TRANSITIONS
    ],
    send_event=True,
    auto_transitions=False,
)


class IllegalTransition(Exception):
    """An event the caller knew must happen was refused: a bug in the caller."""


_EVENTS = {name: MACHINE.events[name] for name in {r.event for r in TRANSITIONS}}
_SOURCES = {name: tuple(s for r in TRANSITIONS if r.event == name for s in r.sources)
            for name in _EVENTS}


def fire(event: str, t: Transfer, **kwargs: int) -> Refusal | None:
    """Fire ``event`` on ``t``: None when it happened, else why not (nothing changed)."""
    why: list[Refusal] = []
    try:
        if _EVENTS[event].trigger(t, _why=why, **kwargs):
            return None
    except MachineError:  # no row for this event from t's state
        allowed = " or ".join(s.name for s in _SOURCES[event])
        return Refusal(Reason.WRONG_STATE, f"{event} is allowed only in {allowed}, and the "
                       f"transfer is {t.state.name} ({MEANING[t.state]})")
    return why[0]


def must_fire(event: str, t: Transfer, **kwargs: int) -> None:
    """Fire an event the caller has already established is due; a refusal is a bug."""
    why = fire(event, t, **kwargs)
    if why is not None:
        raise IllegalTransition(f"{event} refused: {why}")

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
   is not above the last applied one is a duplicate (a retry, another tensor-parallel rank, a stale
   message): the coordinator answers it and this table never sees it.
5. The first rows ``deliver``-ed into the new window: RESUMING -> TRANSFERRING.
6. When ``sent_tokens == total_tokens`` the transfer is ``complete``: SUCCESS.
7. Any live state may ``fail`` (abort, timeout, lost lease, shutdown): FAILED.
8. SUCCESS and FAILED are terminal: no event leaves them.

``TRANSITIONS`` below is the single source of truth: the machine, the docs and the diagram are
generated from it. One shared ``transitions.Machine`` drives every transfer
(``MACHINE.events[name].trigger(transfer)``), so a transfer costs no per-model registration and
nothing has to be removed when it is released.
"""

from __future__ import annotations

import enum
from typing import Callable, NamedTuple

import logging

from transitions import EventData, Machine, MachineError


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
        "transfer_id", "state", "open_window_tokens", "total_tokens", "metadata", "sent_tokens",
        "window_start_token", "window_tokens", "blocks", "blocks_wanted", "resume_count",
        "last_resume_sent_tokens", "failure_reason", "outcome", "opened_at", "last_progress_at",
        "finished_at", "window_full_at", "version", "write_in_flight", "released",
        "lease_renewed_at", "watchers", "shell_cache", "seq",
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
        # The I/O shell's memo of what it derives from this transfer (keyed by ``version``);
        # the core never reads it. It goes when the transfer does.
        self.shell_cache: object = None
        self.seq = 0  # order of opening, set by the coordinator

    @property
    def window_filled_tokens(self) -> int:
        return self.sent_tokens - self.window_start_token

    @property
    def window_full(self) -> bool:
        return self.window_tokens > 0 and self.window_filled_tokens == self.window_tokens

    @property
    def waiting_for_blocks(self) -> bool:
        return self.blocks_wanted > 0


# Guards: a reason the event may not happen, or None when it may. The coordinator turns a reason
# into the error the caller sees, so each rule is written once, here.
Guard = Callable[..., "str | None"]


def all_tokens_sent(t: Transfer) -> str | None:
    if t.total_tokens == 0 or t.sent_tokens != t.total_tokens:
        return f"{t.sent_tokens} of {t.total_tokens or '?'} tokens delivered"
    return None


def delivered_into_window(t: Transfer) -> str | None:
    if t.sent_tokens <= t.window_start_token:
        return "nothing delivered into the new window yet"
    return None


def resume_is_due(t: Transfer, sent_tokens: int) -> str | None:
    if sent_tokens != t.sent_tokens:
        return (f"resume names sent_tokens={sent_tokens} but the transfer has delivered "
                f"{t.sent_tokens}; resume with the sent_tokens that Poll or Watch reports once "
                f"the window is full")
    if not t.window_full:
        return (f"the window is not full yet ({t.window_filled_tokens} of {t.window_tokens} "
                f"tokens from token {t.window_start_token}); wait until "
                f"window_filled_tokens == window_tokens before resuming")
    if t.total_tokens and t.sent_tokens >= t.total_tokens:
        return "every token is delivered; nothing to resume"
    return None


class Rule(NamedTuple):
    event: str
    sources: tuple[State, ...]
    dest: State
    guards: tuple[Guard, ...] = ()


TRANSITIONS: tuple[Rule, ...] = (
    Rule("attach", (State.BOOTSTRAPPING,), State.TRANSFERRING),
    Rule("resume", (State.TRANSFERRING,), State.RESUMING, (resume_is_due,)),
    Rule("deliver", (State.RESUMING,), State.TRANSFERRING, (delivered_into_window,)),
    Rule("complete", (State.TRANSFERRING, State.RESUMING), State.SUCCESS, (all_tokens_sent,)),
    Rule("fail", LIVE, State.FAILED),
)


def _condition(guard: Guard) -> Callable[[EventData], bool]:
    def check(event: EventData) -> bool:
        return guard(event.model, **event.kwargs) is None

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
    """An event was fired from a state the table has no row for: a bug in the caller."""


_EVENTS = {name: MACHINE.events[name] for name in {r.event for r in TRANSITIONS}}


def fire(event: str, t: Transfer, **kwargs: int) -> bool:
    """Fire ``event`` on ``t``. False when a guard refused (nothing changed)."""
    try:
        return bool(_EVENTS[event].trigger(t, **kwargs))
    except MachineError as e:  # no row for this event from t's state
        raise IllegalTransition(f"{event!r} is not allowed from {t.state.name}") from e

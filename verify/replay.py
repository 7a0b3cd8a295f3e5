"""Drive the real core (``Coordinator``) through the server steps of a run of ``resume.pml``.

Every server step of the model prints an ``EV`` line (``spin -t`` on a trail, or a random
simulation), and after it ``EV = st0 sent0 st1 sent1``: the state and sent_tokens of both ids as
the model has them. ``replay`` makes the same calls on a Coordinator configured like the model
(a pool of two one-token blocks, one-token windows, timeouts that only fire when the model's do)
and compares the states after every step. It stops at the first step where the two disagree, or
where the core refuses what the model did, and says which: for the model itself every run must
replay to the end; for a broken variant's trail, the step where the real core parts from it is
the regression the variant's bug would have been.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvferry.statemachine import Coordinator, Limits, TransferError

IDS = ("x", "y")
READERS = 2  # the model's RANKS: every opening is read by two ranks
NEVER = 1e9  # timeouts the model fires itself (as aborts) are never due in the replay
FENCE_TIMEOUT = 100.0


@dataclass
class Divergence:
    """Where the real core parted from the model: ``line`` (index into the events), the event,
    and what happened instead."""

    line: int
    event: str
    what: str
    error: TransferError | None = None


@dataclass
class Replay:
    coord: Coordinator = field(default_factory=lambda: Coordinator(Limits(
        num_blocks=2, block_tokens=1, default_window_tokens=1, bootstrap_timeout=NEVER,
        stall_timeout=NEVER, retention=NEVER, lease_timeout=NEVER, fence_timeout=FENCE_TIMEOUT)))
    incarnations: dict[int, int] = field(default_factory=dict)  # model's -> the core's
    epochs: dict[int, int] = field(default_factory=dict)  # model's lent epochs -> the core's
    now: float = 0.0
    steps: int = 0  # events replayed
    fenced_landings: int = 0  # writes that landed in a block the core held fenced for them

    def step(self, event: list[str]) -> str | None:
        """Apply one event; None when the core did what the model did, else what it did."""
        c, kind, args = self.coord, event[0], [int(a) for a in event[1:]]
        self.now += 1
        tid = IDS[args[0]] if args and kind not in ("fencetimeout", "land") else ""
        inc = self.incarnations.get(args[1], 0) if len(args) > 1 else 0
        if kind == "open":
            self.incarnations[args[1]] = c.open(tid, 1, self.now, READERS).incarnation
        elif kind == "attach":
            c.attach(tid, args[2], b"", self.now, incarnation=inc)
        elif kind == "grant":
            g = c.grant(tid, inc)
            if g is None or g.start_token != args[3]:
                return f"the core lends {g and (g.start_token, g.tokens)}, the model token {args[3]}"
            self.epochs[args[2]] = g.epoch
        elif kind == "commit":
            c.commit(tid, self.epochs[args[2]], args[3], 1, self.now, incarnation=inc)
        elif kind == "detach":
            c.detach(tid, self.epochs[args[2]], inc)
        elif kind == "resume":
            c.resume(tid, args[2], 0, self.now, incarnation=inc, reader=args[3])
        elif kind == "fail":
            c.abort(tid, "the model failed it", self.now, incarnation=inc)
        elif kind == "release":
            # The model's one release is its last rank's: each rank releases in turn, and the
            # core frees the blocks at the last.
            for reader in range(READERS):
                held = c.get(tid, inc)
                c.release(tid, incarnation=inc, reader=reader)
                if reader < READERS - 1 and (tid not in c.transfers or held.released):
                    return f"the core released it at reader {reader}'s Release, not the last"
        elif kind == "read":
            c.read_segments(tid, self.now, incarnation=inc)
        elif kind == "fencetimeout":
            fence = c.quarantine.get(self.epochs[args[0]])
            if fence is None:
                return "the core has no such fence"
            self.now = max(self.now, fence.deadline)
            c.expire(self.now)
        elif kind == "land":  # a write landing: where the core has its block
            return self._landing(args[0], args[1])
        else:
            raise ValueError(f"unknown model event {event}")
        return None

    def _landing(self, model_inc: int, block: int) -> str | None:
        """None when ``block`` is the writer's: in its window, or fenced for it."""
        writer = self.incarnations[model_inc]
        for fence in self.coord.quarantine:
            if block in fence.blocks:
                self.fenced_landings += 1
                return None
        for t in self.coord.transfers.values():
            if block in t.blocks:
                return None if t.incarnation == writer else (
                    f"a write of incarnation {writer} lands in block {block}, which the core "
                    f"gave to {t.transfer_id!r} (incarnation {t.incarnation})")
        return f"a write lands in block {block}, which the core holds free"

    def agrees(self, state: list[int]) -> str | None:
        """None when the core's two ids are as the model's ``EV =`` line says."""
        for slot, tid in enumerate(IDS):
            st, sent = state[2 * slot], state[2 * slot + 1]
            t = self.coord.transfers.get(tid)
            if st == 0:
                if t is not None:
                    return f"{tid}: the core holds it ({t.state.name}), the model released it"
            elif t is None or (t.state.value, t.sent_tokens) != (st, sent):
                core = None if t is None else (t.state.name, t.sent_tokens)
                return f"{tid}: the core has {core}, the model ({st}, {sent})"
        return None


def events(output: str) -> list[list[str]]:
    """The ``EV`` lines of spin's output, split into words (without the "EV")."""
    return [line.split()[1:] for line in output.splitlines() if line.strip().startswith("EV ")]


def replay(lines: list[list[str]]) -> tuple[Replay, Divergence | None]:
    r = Replay()
    for i, event in enumerate(lines):
        if event[0] == "=":
            what = r.agrees([int(x) for x in event[1:]])
            if what is not None:
                return r, Divergence(i, " ".join(lines[i - 1]), what)
            continue
        try:
            what = r.step(event)
        except TransferError as e:
            model_refused = event[0] in ("commit", "resume", "detach")
            if model_refused:
                # The model answers refusals and duplicates without changing anything; the core
                # raises. The state line that follows says whether they agree.
                r.steps += 1
                if i + 1 == len(lines):  # the trail ends here: the model's step was its violation
                    return r, Divergence(i, " ".join(event), e.message, e)
                continue
            return r, Divergence(i, " ".join(event), f"the core refused: {e.message}", e)
        r.steps += 1
        if what is not None:
            return r, Divergence(i, " ".join(event), what)
    return r, None

"""What the coordinator answers its callers: where rows go (``Segment``, ``WriteTicket``), a window
lent to a one-sided writer (``Grant``), and the results of commits and resumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kvferry.statemachine.lifecycle import Transfer


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
    duplicate_reason: str  # "" when applied or recorded
    # Readers still to resume this window before it moves on: 0 when this resume applied it
    # (or was a duplicate); else it was recorded and the window stays the readers'.
    pending: int = 0

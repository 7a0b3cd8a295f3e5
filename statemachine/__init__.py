"""kvferry's sans-IO core: the transfer lifecycle, its guards, the block allocator, the coordinator.

No grpc, asyncio or torch here: the server drives it, tests drive it in microseconds.
"""

from kvferry.statemachine import refusals
from kvferry.statemachine.allocator import AllocatorError, BlockAllocator
from kvferry.statemachine.answers import CommitResult, Grant, ResumeResult, Segment, WriteTicket
from kvferry.statemachine.coordinator import Coordinator
from kvferry.statemachine.deadlines import Deadlines
from kvferry.statemachine.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    TransferError,
    Unavailable,
)
from kvferry.statemachine.fence import Fence, Quarantine
from kvferry.statemachine.lifecycle import (
    LIVE,
    MEANING,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Refusal,
    Rule,
    State,
    Transfer,
    fire,
    must_fire,
)
from kvferry.statemachine.limits import MAX_ID_BYTES, MAX_REASON_BYTES, Limits
from kvferry.statemachine.reports import Listener, Outcome, Totals

__all__ = [
    "LIVE",
    "MAX_ID_BYTES",
    "MAX_REASON_BYTES",
    "MEANING",
    "TERMINAL",
    "TRANSITIONS",
    "Aborted",
    "AllocatorError",
    "AlreadyExists",
    "BlockAllocator",
    "CommitResult",
    "Coordinator",
    "Deadlines",
    "FailedPrecondition",
    "Fence",
    "Grant",
    "IllegalTransition",
    "InvalidArgument",
    "Limits",
    "Listener",
    "NotFound",
    "OutOfRange",
    "Outcome",
    "PermissionDenied",
    "Quarantine",
    "Reason",
    "Refusal",
    "ResourceExhausted",
    "ResumeResult",
    "Rule",
    "Segment",
    "State",
    "Totals",
    "Transfer",
    "TransferError",
    "Unavailable",
    "WriteTicket",
    "fire",
    "must_fire",
    "refusals",
]

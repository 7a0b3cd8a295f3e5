"""kvferry's sans-IO core: the transfer lifecycle, its guards, the block allocator, the coordinator.

No grpc, asyncio or torch here: the server drives it, tests drive it in microseconds.
"""

from kvferry.statemachine.allocator import AllocatorError, BlockAllocator
from kvferry.statemachine.coordinator import (
    MAX_ID_BYTES,
    MAX_REASON_BYTES,
    CommitResult,
    Coordinator,
    Grant,
    Limits,
    Listener,
    Outcome,
    ResumeResult,
    Segment,
    Totals,
    WriteTicket,
)
from kvferry.statemachine.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
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
    Rule,
    State,
    Transfer,
    fire,
    must_fire,
)

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
]

"""kvferry's sans-IO core: the transfer lifecycle, its guards, the block allocator, the coordinator.

No grpc, asyncio or torch here: the server drives it, tests drive it in microseconds.
"""

from kvferry.statemachine.allocator import AllocatorError, BlockAllocator
from kvferry.statemachine.coordinator import (
    MAX_ID_BYTES, Coordinator, Limits, Listener, Outcome, ResumeResult, Segment, Totals,
    WriteTicket,
)
from kvferry.statemachine.errors import (
    Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange,
    ResourceExhausted, TransferError, Unavailable,
)
from kvferry.statemachine.lifecycle import (
    LIVE, TERMINAL, TRANSITIONS, IllegalTransition, Rule, State, Transfer, fire,
)

__all__ = [
    "Aborted", "AllocatorError", "AlreadyExists", "BlockAllocator", "Coordinator",
    "FailedPrecondition", "IllegalTransition", "InvalidArgument", "LIVE", "Limits", "Listener",
    "MAX_ID_BYTES", "NotFound", "OutOfRange", "Outcome", "ResourceExhausted", "ResumeResult",
    "Rule", "Segment", "State", "TERMINAL", "TRANSITIONS", "Totals", "Transfer", "TransferError",
    "Unavailable", "WriteTicket", "fire",
]

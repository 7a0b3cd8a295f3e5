"""Every refusal the core makes, worded once: what went wrong and what to do about it.

Where the rules live (nothing refuses anywhere else in the core):
- The state transitions and their guards (resume is due, all tokens sent): the table in
  ``lifecycle.py``; ``refused_by_table`` turns its ``Refusal`` into the caller's error as it is.
- Everything checked before an event reaches the table: arguments (ids, sizes, reasons, token
  ranges), which opening a call is for (incarnations, window epochs), and room (transfers, blocks,
  queued resumes): the functions below, called by the coordinator.
- Who may touch a transfer (secrets, bearer tokens): the server's shell, which the core never sees.

Each refusal that concerns a transfer names it (``TransferError.transfer_id``), and one that says
the transfer failed carries why (``failure_reason``): the server sends both as ErrorInfo
metadata, so that programs never parse messages.
"""

from __future__ import annotations

from kvferry.statemachine.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from kvferry.statemachine.lifecycle import Refusal, Transfer
from kvferry.statemachine.limits import (
    MAX_ID_BYTES,
    MAX_READERS,
    MAX_REASON_BYTES,
    MAX_TOTAL_TOKENS,
    Limits,
)


def transfer_failed(t: Transfer) -> Aborted:
    """The transfer is FAILED: a sender's stream, write or commit ends with this."""
    return Aborted(f"transfer {t.transfer_id!r} failed: {t.failure_reason}",
                   Reason.TRANSFER_FAILED, t.transfer_id, t.failure_reason)


def refused_by_table(t: Transfer, event: str, why: Refusal) -> FailedPrecondition:
    return FailedPrecondition(f"cannot {event} transfer {t.transfer_id!r}: {why}", why.reason,
                              t.transfer_id)


# -- lookups --------------------------------------------------------------------------------------

def not_found(transfer_id: str) -> NotFound:
    return NotFound(f"no transfer {transfer_id!r}: it was never opened, or was released (by "
                    f"Release or after retention)", Reason.TRANSFER_NOT_FOUND, transfer_id)


def stale_incarnation(t: Transfer, incarnation: int) -> FailedPrecondition:
    return FailedPrecondition(f"transfer {t.transfer_id!r} was reopened: this call is for its "
                              f"incarnation {incarnation}, which was released; the one held now "
                              f"is {t.incarnation}", Reason.STALE_INCARNATION, t.transfer_id)


def check_id(transfer_id: str) -> None:
    if not transfer_id:
        raise InvalidArgument("transfer_id is empty; give every transfer a unique id",
                              Reason.BAD_TRANSFER_ID)
    if len(transfer_id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"transfer_id is {len(transfer_id.encode())} bytes; the limit is "
                              f"{MAX_ID_BYTES}", Reason.BAD_TRANSFER_ID)
    # Ids are echoed into logs, tables and metrics: no control or format characters (NUL,
    # newlines, bidi overrides, zero-width), no separators or spaces that would hide or forge
    # text there.
    bad = next((c for c in transfer_id if not c.isprintable() or c.isspace()), None)
    if bad is not None:
        raise InvalidArgument(f"transfer_id contains U+{ord(bad):04X} at index "
                              f"{transfer_id.index(bad)}: ids must be printable, with no spaces, "
                              f"control or formatting characters", Reason.BAD_TRANSFER_ID)


# -- room -----------------------------------------------------------------------------------------

def already_held(t: Transfer) -> AlreadyExists:
    return AlreadyExists(f"transfer {t.transfer_id!r} is already held ({t.state.name}); Release "
                         f"it first, or open a new id", Reason.TRANSFER_EXISTS, t.transfer_id)


def draining(transfer_id: str) -> Unavailable:
    return Unavailable("the server is shutting down and takes no new transfers; open on another "
                       "replica", Reason.DRAINING, transfer_id)


def too_many_transfers(transfer_id: str, held: int, limits: Limits) -> ResourceExhausted:
    return ResourceExhausted(f"{held} transfers are held, the limit (--max-transfers) is "
                             f"{limits.max_transfers}; Release finished transfers, or retry later",
                             Reason.TOO_MANY_TRANSFERS, transfer_id)


def resumes_queued(transfer_id: str, waiting: int) -> ResourceExhausted:
    return ResourceExhausted(f"{waiting} resume(s) are waiting for free blocks and are served "
                             f"before new transfers; retry later", Reason.RESUMES_QUEUED,
                             transfer_id)


def pool_exhausted(transfer_id: str, free: int, window: int, want: int,
                   limits: Limits) -> ResourceExhausted:
    return ResourceExhausted(f"the pool has {free} free blocks of {limits.block_tokens} tokens; "
                             f"a {window}-token window needs {want}; retry later or open a "
                             f"smaller window", Reason.POOL_EXHAUSTED, transfer_id)


def check_window(tokens: int, limits: Limits, transfer_id: str = "") -> None:
    if tokens > limits.pool_tokens:
        raise InvalidArgument(f"window_tokens={tokens} is larger than the whole pool "
                              f"({limits.num_blocks} blocks x {limits.block_tokens} tokens); ask "
                              f"for at most {limits.pool_tokens}", Reason.WINDOW_TOO_LARGE,
                              transfer_id)


def check_readers(readers: int, transfer_id: str = "") -> None:
    if not 1 <= readers <= MAX_READERS:
        raise InvalidArgument(f"readers={readers}: a transfer has 1 to {MAX_READERS} readers (its "
                              f"tensor-parallel ranks); 0 means 1", Reason.BAD_READER, transfer_id)


def check_reader(t: Transfer, reader: int) -> None:
    if not 0 <= reader < t.readers:
        raise InvalidArgument(f"reader={reader}, but transfer {t.transfer_id!r} was opened for "
                              f"{t.readers} reader(s): name yours from 0 to {t.readers - 1}",
                              Reason.BAD_READER, t.transfer_id)


# -- the receiver ---------------------------------------------------------------------------------

def nothing_to_read(t: Transfer) -> FailedPrecondition:
    return FailedPrecondition(f"transfer {t.transfer_id!r} failed ({t.failure_reason}); its "
                              f"blocks are freed, nothing to read", Reason.TRANSFER_FAILED,
                              t.transfer_id, t.failure_reason)


def nothing_to_resume(t: Transfer) -> FailedPrecondition:
    why = f": {t.failure_reason}" if t.failure_reason else ""
    return FailedPrecondition(f"transfer {t.transfer_id!r} is {t.state.name}{why}; there is "
                              f"nothing to resume", Reason.TRANSFER_FINISHED, t.transfer_id,
                              t.failure_reason)


def still_live(t: Transfer) -> FailedPrecondition:
    return FailedPrecondition(f"transfer {t.transfer_id!r} is live ({t.state.name}); Abort it, or "
                              f"wait for SUCCESS, before Release", Reason.TRANSFER_LIVE,
                              t.transfer_id)


def check_abort_reason(reason: str, transfer_id: str) -> None:
    if len(reason.encode()) > MAX_REASON_BYTES:
        raise InvalidArgument(f"the abort reason is {len(reason.encode())} bytes; the limit is "
                              f"{MAX_REASON_BYTES}: say why in a sentence",
                              Reason.REASON_TOO_LARGE, transfer_id)


# -- the sender -----------------------------------------------------------------------------------

def check_sender(total_tokens: int, metadata: bytes, limits: Limits, transfer_id: str = "") -> None:
    """What ``attach`` refuses whatever the transfer: a waiting sender learns of it at once."""
    if not 0 < total_tokens <= MAX_TOTAL_TOKENS:
        raise InvalidArgument(f"the sender must give total_tokens between 1 and "
                              f"{MAX_TOTAL_TOKENS} (in Attach, or a Push's first message), got "
                              f"{total_tokens}", Reason.BAD_TOTAL_TOKENS, transfer_id)
    if len(metadata) > limits.max_metadata_bytes:
        raise InvalidArgument(f"metadata is {len(metadata)} bytes; the limit "
                              f"(--max-metadata-bytes) is {limits.max_metadata_bytes}: send large "
                              f"side data as rows, or a reference to it",
                              Reason.METADATA_TOO_LARGE, transfer_id)


def total_tokens_mismatch(t: Transfer, total_tokens: int) -> FailedPrecondition:
    return FailedPrecondition(f"Push says total_tokens={total_tokens} but transfer "
                              f"{t.transfer_id!r} has total_tokens={t.total_tokens}",
                              Reason.TOTAL_TOKENS_MISMATCH, t.transfer_id)


def not_attached(t: Transfer) -> FailedPrecondition:
    return FailedPrecondition(f"transfer {t.transfer_id!r} has no sender attached; the first Push "
                              f"message must carry transfer_id and total_tokens",
                              Reason.NOT_ATTACHED, t.transfer_id)


def window_lent(t: Transfer) -> FailedPrecondition:
    return FailedPrecondition(f"the current window of {t.transfer_id!r} is lent to a one-sided "
                              f"writer (Attach): Push cannot write into it until that writer "
                              f"commits it or detaches", Reason.WINDOW_LENT, t.transfer_id)


def rows_past_total(t: Transfer, start: int, end: int) -> InvalidArgument:
    return InvalidArgument(f"rows [{start}, {end}) run past total_tokens={t.total_tokens}; send at "
                           f"most {t.total_tokens} tokens", Reason.ROWS_PAST_TOTAL, t.transfer_id)


def token_gap(t: Transfer, start: int, what: str) -> OutOfRange:
    """``what``: "start_token=N" (a Push) or "commit from token N"."""
    return OutOfRange(f"{what} leaves a gap: the next expected token is {t.sent_tokens}; "
                      f"{'commit' if what.startswith('commit') else 'send'} rows from there",
                      Reason.TOKEN_GAP, t.transfer_id)


# -- the one-sided writer -------------------------------------------------------------------------

def empty_commit(t: Transfer, tokens: int) -> InvalidArgument:
    return InvalidArgument(f"commit of {tokens} tokens: commit at least one row", Reason.BAD_COMMIT,
                           t.transfer_id)


def epoch_of_earlier_opening(t: Transfer, epoch: int) -> FailedPrecondition:
    return FailedPrecondition(f"window epoch {epoch} belongs to an earlier opening of "
                              f"{t.transfer_id!r}; this one began at epoch {t.opened_epoch}",
                              Reason.STALE_INCARNATION, t.transfer_id)


def grant_expired(t: Transfer, epoch: int, start: int, end: int) -> FailedPrecondition:
    return FailedPrecondition(f"window epoch {epoch} of {t.transfer_id!r} was resumed past (the "
                              f"current window is epoch {t.window_epoch}); rows [{start}, {end}) "
                              f"were not all delivered: write them into the current grant",
                              Reason.GRANT_EXPIRED, t.transfer_id)


def not_granted(t: Transfer, epoch: int) -> FailedPrecondition:
    return FailedPrecondition(f"window epoch {epoch} of {t.transfer_id!r} is not lent to a "
                              f"one-sided writer: Attach to get a grant before writing",
                              Reason.NOT_GRANTED, t.transfer_id)


def commit_past_window(t: Transfer, start: int, end: int) -> InvalidArgument:
    window_end = t.window_start_token + t.window_tokens
    return InvalidArgument(f"commit of rows [{start}, {end}) runs past the granted window, which "
                           f"ends at token {window_end}", Reason.BAD_COMMIT, t.transfer_id)


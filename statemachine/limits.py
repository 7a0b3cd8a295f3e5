"""The bounds the core enforces: the pool's geometry and timeouts (``Limits``, from the server's
flags), and the fixed limits on what a request may carry."""

from __future__ import annotations

from dataclasses import dataclass

MAX_ID_BYTES = 256
# An Abort's reason is echoed in every status of its transfer: it must stay small.
MAX_REASON_BYTES = 1024
# Any failure reason, the core's own included (one quoting an exception, say), is cut to this.
MAX_FAILURE_REASON_BYTES = 2048
# Far beyond any request (2^48 tokens), and well inside the wire's int64 fields.
MAX_TOTAL_TOKENS = 2**48
# Readers of one transfer (tensor-parallel ranks): far beyond any TP degree.
MAX_READERS = 64



@dataclass(frozen=True)
class Limits:
    num_blocks: int
    block_tokens: int
    default_window_tokens: int
    bootstrap_timeout: float
    stall_timeout: float
    retention: float
    # A receiver that makes no call (Poll, Watch, Read, Resume) for this long loses the transfer.
    lease_timeout: float = 30.0
    # A side whose stream ended early (the sender's Push or Attach before the last row; a
    # receiver's Watch opened until_done before the transfer ended) has this long to call again
    # before the transfer fails naming it. A client that retries does so at once; one that
    # vanished is gone.
    reconnect_grace: float = 2.0
    max_transfers: int = 100_000
    # How long blocks a one-sided writer may still write into stay fenced after their transfer
    # failed, if the writer never says it stopped.
    fence_timeout: float = 60.0
    # The sender's metadata is held and echoed in every status of its transfer: bounded, so that
    # memory is bounded by max_transfers and a status always fits a default client's 4 MiB.
    max_metadata_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_tokens", "default_window_tokens", "max_transfers",
                     "max_metadata_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("bootstrap_timeout", "stall_timeout", "retention", "lease_timeout", "fence_timeout",
                     "reconnect_grace"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")
        if self.default_window_tokens > self.pool_tokens:
            raise ValueError(f"default_window_tokens={self.default_window_tokens} exceeds the pool "
                             f"({self.pool_tokens} tokens)")

    @property
    def pool_tokens(self) -> int:
        return self.num_blocks * self.block_tokens

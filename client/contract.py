"""What both sides of the contract agree on beyond the messages of ``kvferry.v1``: message sizes,
the gRPC metadata keys, the error domain and its details, and the transports' one refusal.

The server imports these from here; nothing else defines them.
"""

from __future__ import annotations

from kvferry.v1 import transfer_pb2 as pb

# One message carrying rows (a Push from the client library, a Read from the server) stays inside
# gRPC's default 4 MiB receive limit, whatever the other side accepts; 1 KiB is left for the
# message's own framing (field tags and lengths).
MESSAGE_BUDGET = 4 * 1024 * 1024 - 1024

# Call metadata. The bearer token (--auth-token-file) goes as "authorization: Bearer <token>";
# per-transfer secrets as below (``kvferry.client.secrets``).
AUTHORIZATION_KEY = "authorization"
TRANSFER_SECRET_KEY = "kvferry-transfer-secret"
SENDER_SECRET_KEY = "kvferry-sender-secret"

# Every refusal's google.rpc.Status travels in this trailer; its ErrorInfo has this domain, a
# reason from ``ERROR_REASONS``, and, in its metadata, the facts a program needs: the transfer the
# refusal concerns, and why that transfer failed when it did.
DETAILS_KEY = "grpc-status-details-bin"
DOMAIN = "kvferry"
INFO_TRANSFER_ID = "transfer_id"
INFO_FAILURE_REASON = "failure_reason"

# Liveness of a connection, which both sides must agree on. Each side pings a connection's peer
# KEEPALIVE_S after the last ping, with or without calls in flight; a ping unanswered for
# KEEPALIVE_TIMEOUT_S closes the connection, which fails every call on it (UNAVAILABLE). So a
# partition, which no RST announces, is known within KEEPALIVE_S + KEEPALIVE_TIMEOUT_S (7 s): the
# streams that may legitimately wait long (Watch, Push, Attach) are bounded by this, not by
# deadlines. The server accepts a client's pings as often as every MIN_PING_INTERVAL_S (more often
# earns a GOAWAY "too_many_pings"): below the client's interval, so a healthy idle connection is
# never sent away. Unary calls get CALL_TIMEOUT_S as their deadline, retries and a connect to an
# unreachable server included: they take milliseconds on a live server, and a call issued into a
# partition must end within the same bound as the streams.
KEEPALIVE_S = 4.0
KEEPALIVE_TIMEOUT_S = 3.0
MIN_PING_INTERVAL_S = 1.0
CALL_TIMEOUT_S = 5.0
# After a connection is lost, gRPC reconnects with exponential backoff (up to 120 s by default),
# and a call between two attempts fails at once: after a partition heals, a client would fail
# for up to two minutes. Capped here, a healed link carries calls again within this long.
MAX_RECONNECT_BACKOFF_S = 5.0
# How a client's calls travel (AsyncClient(control=)): "auto" takes the server's same-host socket
# (PoolInfo.local_calls_path) where the server runs on the client's host, else gRPC.
CONTROLS = ("auto", "grpc", "local")

_PREFIX = "ERROR_REASON_"
# The stable refusal codes, as ErrorInfo.reason spells them: the contract's ErrorReason enum
# (kvferry.v1) without its prefix.
ERROR_REASONS: tuple[str, ...] = tuple(
    name.removeprefix(_PREFIX) for name in pb.ErrorReason.keys() if name != f"{_PREFIX}UNSPECIFIED")


def error_reason_code(reason: str) -> int:
    """The ErrorReason enum value of an ErrorInfo reason (0: unknown to this client)."""
    try:
        return int(pb.ErrorReason.Value(_PREFIX + reason))
    except ValueError:
        return 0


class TransportUnavailable(RuntimeError):
    """A transport a caller asked for cannot work from this process; the message says why."""

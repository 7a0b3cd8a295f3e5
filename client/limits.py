"""What both sides of the contract agree on: message sizes, and the transports' one refusal."""

# One message carrying rows (a Push from the client library, a Read from the server) stays inside
# gRPC's default 4 MiB receive limit, whatever the other side accepts; 1 KiB is left for the
# message's own framing (field tags and lengths).
MESSAGE_BUDGET = 4 * 1024 * 1024 - 1024


class TransportUnavailable(RuntimeError):
    """A transport a caller asked for cannot work from this process; the message says why."""

"""Per-transfer secrets: who may touch a transfer.

Whoever creates a request in a serving stack (the router) makes one secret per transfer with
``new_secret()`` and hands it to both sides. The receiver presents it as gRPC metadata
``kvferry-transfer-secret``; the sender presents ``sender_secret(secret)`` as
``kvferry-sender-secret``. The sender's secret is an HMAC of the transfer secret: the server can
check it against the transfer secret, but nobody can turn it back into the transfer secret, so a
sender can write and watch but never Read, Resume or Release. The client library does all this
when given ``secret=``; the server keeps hashes only (see "Security" in docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random

from kvferry.client.contract import SENDER_SECRET_KEY, TRANSFER_SECRET_KEY

# Shorter secrets could be guessed; the limit keeps gRPC metadata small.
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 256
_SENDER_LABEL = b"kvferry sender secret v1"


def new_secret() -> str:
    """A fresh random transfer secret (256 bits, URL-safe text: valid gRPC metadata)."""
    return _random.token_urlsafe(32)


def sender_secret(secret: str) -> str:
    """The sender's secret for a transfer secret: HMAC-SHA256 keyed by it, as hex."""
    return hmac.new(secret.encode(), _SENDER_LABEL, hashlib.sha256).hexdigest()


def derived_secret(shared: str, purpose: str, transfer_id: str) -> str:
    """One transfer's secret, derived from a secret that several parties share (engines that
    agree on no per-request secret, say): HMAC-SHA256 keyed by ``shared`` over ``purpose`` and
    the id, as hex. It opens that transfer only, so a secret seen on one transfer's calls is no
    key to the others; ``purpose`` keeps the secrets of two uses of one shared secret apart."""
    label = f"kvferry {purpose} v1 {transfer_id}".encode()
    return hmac.new(shared.encode(), label, hashlib.sha256).hexdigest()


def receiver_metadata(secret: str | None) -> tuple[tuple[str, str], ...]:
    return () if secret is None else ((TRANSFER_SECRET_KEY, secret),)


def sender_metadata(secret: str | None) -> tuple[tuple[str, str], ...]:
    return () if secret is None else ((SENDER_SECRET_KEY, sender_secret(secret)),)

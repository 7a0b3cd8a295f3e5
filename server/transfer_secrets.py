"""Which calls may touch a transfer bound to a secret (see ``kvferry.client.secrets``).

The first call that creates a transfer binds it: the receiver's Open with its transfer secret,
or a sender that arrives before the Open with its sender secret (a *claim*, held while it waits;
the Open must then present the transfer secret that sender secret derives from). Only hashes
are kept, compared in constant time. Roles:

- receiver calls (Read, Resume, Release) need the transfer secret;
- sender calls (Push, Attach, Commit, Detach) and calls either side makes (Poll, Watch, Abort)
  take the sender secret or the transfer secret.

Nothing here awaits: a check and the core call it guards run with no other call in between.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from kvferry.client.secrets import (
    MAX_SECRET_CHARS,
    MIN_SECRET_CHARS,
    SENDER_SECRET_KEY,
    TRANSFER_SECRET_KEY,
    sender_secret,
)
from kvferry.statemachine import InvalidArgument, PermissionDenied, Reason, Transfer


class Role(enum.Enum):
    RECEIVER = "receiver"
    SENDER = "sender"
    EITHER = "either side"


@dataclass(frozen=True, slots=True)
class Presented:
    """The secrets a call carried (gRPC metadata), as given."""

    transfer: str | None = None
    sender: str | None = None

    @classmethod
    def of(cls, metadata: Sequence[tuple[str, str | bytes]] | None) -> Presented:
        found: dict[str, str] = {}
        for key, value in metadata or ():
            if key in (TRANSFER_SECRET_KEY, SENDER_SECRET_KEY):
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                if not 0 < len(text) <= MAX_SECRET_CHARS:
                    raise InvalidArgument(f"metadata {key!r} must be 1 to {MAX_SECRET_CHARS} "
                                          f"characters", reason=Reason.BAD_SECRET)
                found[key] = text
        return cls(found.get(TRANSFER_SECRET_KEY), found.get(SENDER_SECRET_KEY))

    @property
    def any(self) -> bool:
        return self.transfer is not None or self.sender is not None

    def sender_digest(self) -> bytes | None:
        """Digest of the sender secret this call holds (derived from a transfer secret)."""
        if self.transfer is not None:
            return _digest(sender_secret(self.transfer))
        return None if self.sender is None else _digest(self.sender)


@dataclass(frozen=True, slots=True)
class Lock:
    receiver: bytes  # sha256 of the transfer secret
    sender: bytes  # sha256 of the sender secret derived from it


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_HOW = (f"send metadata '{TRANSFER_SECRET_KEY}' (the receiver) or '{SENDER_SECRET_KEY}' (the "
        f"sender: kvferry.client.secrets.sender_secret of it); the client library does this "
        f"when given secret=")


class SecretBook:
    def __init__(self, required: bool) -> None:
        self.required = required
        self._locks: dict[Transfer, Lock] = {}
        # Senders waiting for an Open: transfer id -> (sender digest, waiting senders).
        self._claims: dict[str, tuple[bytes, int]] = {}
        # Fenced windows of bound transfers, by epoch: only their writer may lift a fence by
        # Detach, even after the transfer was released (a stranger's Detach would hand blocks
        # on while a write can still land in them).
        self._fences: dict[int, Lock] = {}

    def locked(self, t: Transfer) -> bool:
        return t in self._locks

    # -- creating ------------------------------------------------------------------------------

    def check_open(self, transfer_id: str, presented: Presented) -> Lock | None:
        """The lock an Open with ``presented`` binds (None: unbound); PermissionDenied if the
        Open may not create the transfer. Bind it with ``bind`` once the core opened it."""
        if presented.transfer is None:
            if presented.sender is not None:
                raise PermissionDenied(f"Open of {transfer_id!r} carried a sender secret: the "
                                       f"receiver opens with the transfer secret "
                                       f"('{TRANSFER_SECRET_KEY}')", reason=Reason.RECEIVER_SECRET_REQUIRED)
            if self.required:
                raise PermissionDenied(f"this server requires a transfer secret on every Open "
                                       f"(--require-transfer-secrets): send metadata "
                                       f"'{TRANSFER_SECRET_KEY}' with the secret the router made "
                                       f"for {transfer_id!r}", reason=Reason.SECRET_REQUIRED)
            if transfer_id in self._claims:
                raise PermissionDenied(f"a sender holding a secret is waiting for {transfer_id!r}; "
                                       f"this Open carries none: send metadata "
                                       f"'{TRANSFER_SECRET_KEY}'", reason=Reason.ID_CLAIMED)
            return None
        if len(presented.transfer) < MIN_SECRET_CHARS:
            raise InvalidArgument(f"the transfer secret is {len(presented.transfer)} characters; "
                                  f"use at least {MIN_SECRET_CHARS} random ones "
                                  f"(kvferry.client.secrets.new_secret())", reason=Reason.BAD_SECRET)
        lock = Lock(_digest(presented.transfer), _digest(sender_secret(presented.transfer)))
        claim = self._claims.get(transfer_id)
        if claim is not None and not hmac.compare_digest(claim[0], lock.sender):
            raise PermissionDenied(f"a sender waiting for {transfer_id!r} holds a secret that "
                                   f"this Open's transfer secret does not match", reason=Reason.ID_CLAIMED)
        return lock

    def bind(self, t: Transfer, lock: Lock | None) -> None:
        if lock is not None:
            self._locks[t] = lock

    def claim(self, transfer_id: str, presented: Presented) -> bool:
        """A sender waits for the Open of ``transfer_id``: its secret binds the id until then.
        Returns whether it claimed (give it back with ``unclaim``)."""
        digest = presented.sender_digest()
        if digest is None:
            if self.required:
                raise PermissionDenied(self._required_for_senders(transfer_id), reason=Reason.SECRET_REQUIRED)
            return False
        held = self._claims.get(transfer_id)
        if held is not None and not hmac.compare_digest(held[0], digest):
            raise PermissionDenied(f"another sender holding a different secret waits for "
                                   f"{transfer_id!r}", reason=Reason.ID_CLAIMED)
        self._claims[transfer_id] = (digest, (held[1] if held else 0) + 1)
        return True

    def unclaim(self, transfer_id: str) -> None:
        digest, waiting = self._claims[transfer_id]
        if waiting > 1:
            self._claims[transfer_id] = (digest, waiting - 1)
        else:
            del self._claims[transfer_id]

    def forget(self, t: Transfer) -> None:
        self._locks.pop(t, None)

    def fenced(self, t: Transfer, epoch: int) -> None:
        lock = self._locks.get(t)
        if lock is not None:
            self._fences[epoch] = lock

    def lifted(self, epoch: int) -> None:
        self._fences.pop(epoch, None)

    # -- checking ------------------------------------------------------------------------------

    def check(self, t: Transfer, presented: Presented, role: Role, call: str) -> None:
        """PermissionDenied unless ``presented`` may make ``call`` on ``t`` in ``role``. The
        message says what is missing or wrong, never a secret."""
        lock = self._locks.get(t)
        if lock is None:
            if self.required and role is Role.SENDER and not presented.any:
                raise PermissionDenied(self._required_for_senders(t.transfer_id), reason=Reason.SECRET_REQUIRED)
            return
        self._check(lock, presented, role, f"{call} of transfer {t.transfer_id!r}", call)

    def check_fence(self, epoch: int, transfer_id: str, presented: Presented) -> None:
        """A Detach that would lift the fence of window ``epoch``: its writer's secret only."""
        lock = self._fences.get(epoch)
        if lock is not None:
            self._check(lock, presented, Role.SENDER, f"Detach of transfer {transfer_id!r}", "Detach")

    def _check(self, lock: Lock, presented: Presented, role: Role, what: str, call: str) -> None:
        if presented.transfer is not None:
            if hmac.compare_digest(_digest(presented.transfer), lock.receiver):
                return
            raise PermissionDenied(f"{what}: the transfer secret this call carried is not the "
                                   f"one the transfer is bound to", reason=Reason.SECRET_MISMATCH)
        if presented.sender is None:
            raise PermissionDenied(f"{what}: the transfer is bound to a secret and this call "
                                   f"carried none; {_HOW}", reason=Reason.SECRET_REQUIRED)
        if role is Role.RECEIVER:
            raise PermissionDenied(f"{what}: a sender secret cannot {call}; only the receiver's "
                                   f"transfer secret ('{TRANSFER_SECRET_KEY}') can",
                                   reason=Reason.RECEIVER_SECRET_REQUIRED)
        if not hmac.compare_digest(_digest(presented.sender), lock.sender):
            raise PermissionDenied(f"{what}: the sender secret this call carried is not the one "
                                   f"the transfer is bound to", reason=Reason.SECRET_MISMATCH)

    @staticmethod
    def _required_for_senders(transfer_id: str) -> str:
        return (f"this server requires a secret from every sender (--require-transfer-secrets): "
                f"send metadata '{SENDER_SECRET_KEY}' for {transfer_id!r} "
                f"(kvferry.client.secrets.sender_secret of the router's transfer secret)")

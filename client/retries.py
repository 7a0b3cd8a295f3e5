"""Which calls are repeated when the server answers UNAVAILABLE (an injected fault, a server
that is starting or draining), and how: one policy, which gRPC applies itself (as a service
config) and the same-host socket's calls apply in ``local_calls``. Each of these calls is safe
to repeat; Resume among them, because a repeat of an applied resume is answered as a duplicate,
which is the point of the guard."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

SERVICE = "kvferry.v1.TransferService"
RETRIED = ("GetPoolInfo", "Poll", "Read", "Resume", "Abort")
MAX_ATTEMPTS = 5
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
MULTIPLIER = 2.0


def service_config() -> str:
    """The policy as gRPC's ``grpc.service_config`` channel option."""
    return json.dumps({"methodConfig": [{
        "name": [{"service": SERVICE, "method": m} for m in RETRIED],
        "retryPolicy": {"maxAttempts": MAX_ATTEMPTS, "initialBackoff": f"{INITIAL_BACKOFF_S}s",
                        "maxBackoff": f"{MAX_BACKOFF_S:g}s", "backoffMultiplier": MULTIPLIER,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }]})


def backoffs() -> Iterator[float]:
    """Seconds to wait before each retry, as gRPC draws them: uniformly up to a bound that
    grows by MULTIPLIER from INITIAL_BACKOFF_S to MAX_BACKOFF_S (MAX_ATTEMPTS - 1 of them)."""
    bound = INITIAL_BACKOFF_S
    for _ in range(MAX_ATTEMPTS - 1):
        yield random.uniform(0, bound)
        bound = min(bound * MULTIPLIER, MAX_BACKOFF_S)

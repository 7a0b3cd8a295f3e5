"""What the vLLM connector reads from ``ec_connector_extra_config`` (docs/vllm.md lists it).

Every mistake is refused when the engine builds the connector, with the key and what to put
there: an engine that starts with a bad kvferry setting fails at 3 a.m. instead of at deploy time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvferry.client.contract import CALL_TIMEOUT_S, CONTROLS, KEEPALIVE_S, KEEPALIVE_TIMEOUT_S
from kvferry.client.secrets import MIN_SECRET_CHARS
from kvferry.client.transports import TRANSPORTS

PREFIX = "kvferry_"
# Every key the connector reads (docs/vllm.md lists each; a test holds the two together).
KEYS = tuple(PREFIX + k for k in ("target", "targets", "token_file", "secret_file", "window_tokens",
                                  "transport", "sender_wait_s", "on_failure",
                                  "transfer_id_prefix", "max_sends_in_flight", "keepalive_s",
                                  "keepalive_timeout_s", "call_timeout_s", "control"))
ON_FAILURE = ("encode", "fail")


class ConfigError(ValueError):
    """A setting in ec_connector_extra_config that cannot work, and what to put there instead."""


@dataclass(frozen=True)
class ConnectorConfig:
    target: str
    """host:port of the kvferry server both engines talk to."""
    targets: tuple[str, ...] = ()
    """Producer: the kvferry servers a request may name as its language instance's
    (``ec_transfer_params.kvferry_target``), besides ``target``; a name outside them is refused
    (the encoder never connects where a request alone tells it to)."""
    token: str | None = None
    """Bearer token, read from ``kvferry_token_file`` (the server's --token-file)."""
    secret: str | None = None
    """Shared secret, read from ``kvferry_secret_file``: each transfer's secret is derived from it
    (``transfer_secret``), so only engines holding it can send or receive an embedding."""
    window_tokens: int = 0
    """Rows per window on the consumer; 0: the server's default window."""
    transport: str = "auto"
    """How the producer's rows reach the pool (kvferry.client.transports)."""
    sender_wait_s: float = 2.0
    """Consumer: how long a request waits for an encoder to send one of its images before the
    consumer stops waiting (then ``on_failure`` decides). Short: a proxy forwards a request to
    the language engine after the encoder answered it, and the encoder's send starts before that
    answer, so the sender is normally waiting already; a miss (an image this engine evicted and
    the encoder did not send again) costs this much."""
    on_failure: str = "encode"
    """Consumer, when an embedding cannot arrive: ``encode`` it locally (the engine has the
    encoder), or ``fail`` the request (vLLM reports it as an error; re-issuing re-encodes)."""
    transfer_id_prefix: str = "ec-"
    """Transfer ids are this prefix and vLLM's content hash of the item, so both engines name the
    same transfer without talking, and a repeated image is one transfer."""
    max_sends_in_flight: int = 64
    """Producer: sends waiting for their consumer at once; more are refused (and logged) rather
    than holding encoder outputs without bound."""
    keepalive_s: float = KEEPALIVE_S
    """Both roles: the connector's client pings the server after this long, and gives a
    connection up when a ping goes unanswered ``keepalive_timeout_s``: a partitioned server fails
    the affected requests (or they are encoded locally) within the sum, and the engine serves on."""
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    call_timeout_s: float = CALL_TIMEOUT_S
    """The deadline of each unary call to the server."""
    control: str = "auto"
    """How the connector's calls travel (``AsyncClient(control=)``): ``auto`` over the server's
    same-host socket when the server runs on this host, else gRPC; ``grpc``; ``local``."""

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> ConnectorConfig:
        unknown = sorted(k for k in extra if k.startswith(PREFIX) and k not in KEYS)
        if unknown:
            raise ConfigError(f"ec_connector_extra_config: unknown key(s) {', '.join(unknown)}; "
                              f"the kvferry keys are {', '.join(KEYS)}")
        target = extra.get(f"{PREFIX}target")
        if not isinstance(target, str) or ":" not in target:
            raise ConfigError("ec_connector_extra_config.kvferry_target: give the kvferry "
                              f"server as \"host:port\" (got {target!r})")
        targets = _targets(extra.get(f"{PREFIX}targets", ""))
        transport = str(extra.get(f"{PREFIX}transport", cls.transport))
        if transport not in TRANSPORTS.names():
            raise ConfigError(f"ec_connector_extra_config.kvferry_transport: {transport!r} is not "
                              f"one of {', '.join(TRANSPORTS.names())}")
        control = str(extra.get(f"{PREFIX}control", cls.control))
        if control not in CONTROLS:
            raise ConfigError(f"ec_connector_extra_config.kvferry_control: {control!r} is not "
                              f"one of {', '.join(CONTROLS)}")
        on_failure = str(extra.get(f"{PREFIX}on_failure", cls.on_failure))
        if on_failure not in ON_FAILURE:
            raise ConfigError(f"ec_connector_extra_config.kvferry_on_failure: {on_failure!r} is "
                              f"not one of {', '.join(ON_FAILURE)}")
        secret = _read(extra, f"{PREFIX}secret_file")
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"ec_connector_extra_config.{PREFIX}secret_file: the secret is "
                              f"{len(secret)} characters; use at least {MIN_SECRET_CHARS}, e.g. "
                              "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return cls(
            target=target,
            targets=targets,
            token=_read(extra, f"{PREFIX}token_file"),
            secret=secret,
            window_tokens=_number(extra, f"{PREFIX}window_tokens", cls.window_tokens, int, minimum=0),
            transport=transport,
            sender_wait_s=_number(extra, f"{PREFIX}sender_wait_s", cls.sender_wait_s, float,
                                  minimum=0.0),
            on_failure=on_failure,
            transfer_id_prefix=str(extra.get(f"{PREFIX}transfer_id_prefix", cls.transfer_id_prefix)),
            max_sends_in_flight=_number(extra, f"{PREFIX}max_sends_in_flight",
                                        cls.max_sends_in_flight, int, minimum=1),
            keepalive_s=_number(extra, f"{PREFIX}keepalive_s", cls.keepalive_s, float,
                                minimum=0.1),
            keepalive_timeout_s=_number(extra, f"{PREFIX}keepalive_timeout_s",
                                        cls.keepalive_timeout_s, float, minimum=0.1),
            call_timeout_s=_number(extra, f"{PREFIX}call_timeout_s", cls.call_timeout_s, float,
                                   minimum=0.1),
            control=control,
        )

    def allows(self, target: str) -> bool:
        return target == self.target or target in self.targets


def _targets(raw: Any) -> tuple[str, ...]:
    """``"host:port,host:port"`` or a list of them."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"ec_connector_extra_config.{PREFIX}targets: give the language "
                          f"instances' kvferry servers as \"host:port,host:port\" (got {raw!r})")
    out = tuple(str(t).strip() for t in items if str(t).strip())
    for t in out:
        if ":" not in t:
            raise ConfigError(f"ec_connector_extra_config.{PREFIX}targets: {t!r} is not "
                              "\"host:port\"")
    return out


def _read(extra: Mapping[str, Any], key: str) -> str | None:
    path = extra.get(key)
    if path is None:
        return None
    try:
        text = Path(str(path)).read_text().strip()
    except OSError as e:
        raise ConfigError(f"ec_connector_extra_config.{key}: cannot read {path!r} ({e.strerror}); "
                          "give a file this engine can read") from e
    if not text:
        raise ConfigError(f"ec_connector_extra_config.{key}: {path!r} is empty")
    return text


def _number(extra: Mapping[str, Any], key: str, default: Any, kind: type, minimum: Any) -> Any:
    raw = extra.get(key, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"ec_connector_extra_config.{key}: {raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"ec_connector_extra_config.{key}: {value} is below {minimum}")
    return value

"""The server's log: one format on one stream (stdout). JSON lines by default, one object per
line with ``ts``, ``level``, ``event`` and the event's fields; ``--log-format text`` for people.

Events worth a line: serving (the ports: scripts and tests read this first line), stopping,
stopped, and every transfer that ends (``transfer_finished``: INFO when it succeeded or its
client aborted it, WARNING when a timeout, shutdown or error ended it).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

log = logging.getLogger("kvferry")

FORMATS = ("json", "text")


def event(level: int, name: str, **fields: Any) -> None:
    """Log ``name`` with ``fields`` (kept structured in JSON, ``key=value`` in text)."""
    log.log(level, name, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname,
                                "event": record.getMessage()}
        if record.name != "kvferry":
            line["logger"] = record.name
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                          for k, v in getattr(record, "fields", {}).items())
        text = f"{stamp} {record.levelname:<7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

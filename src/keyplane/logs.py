"""Logging: one line of JSON per record, with anything that looks like a secret redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRETS = re.compile(
    r"(sk-kp-(?:proj|svcacct|admin)-)[0-9A-Za-z]{46}([0-9A-Za-z]{4})"  # keyplane keys
    r"|(sk-(?!kp-)[A-Za-z0-9_-]{8})[A-Za-z0-9_-]{12,}"  # upstream provider keys
    r"|((?i:bearer)\s+)\S+"
)


def redact(text: str) -> str:
    def _sub(m: re.Match[str]) -> str:
        if m.group(1):
            return f"{m.group(1)}…{m.group(2)}"
        if m.group(3):
            return f"{m.group(3)}…"
        return f"{m.group(4)}[redacted]"

    return _SECRETS.sub(_sub, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every upstream request at INFO: that is per-request work on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)

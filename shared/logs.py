"""Structured (JSON lines) logs that never carry tokens, passwords or message bodies.

Our code logs metadata only (ids, types, kinds, counts). As a second line of defence every record
passes a redaction filter: invitation tokens and links, and the values of configured secrets, are
replaced before anything is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from shared.tracing import TraceIds

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_TOKEN_PATTERNS = [
    re.compile(r"(token=)[^&\s\"'<>]+", re.IGNORECASE),
    re.compile(r"\bcs1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
]


class Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        for pattern in _TOKEN_PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.clean(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.clean(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
        if record.exc_text:
            entry["error"] = record.exc_text
        elif record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(service: str, *, secrets: Iterable[str] = (), level: int = logging.INFO) -> Redactor:
    handler = logging.StreamHandler(sys.stderr)
    redactor = Redactor(secrets)
    handler.addFilter(redactor)
    handler.addFilter(TraceIds())  # trace_id and span_id on lines written while an event is processed
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd's "mail.log" writes every SMTP command at INFO: the senders' and recipients' addresses.
    for noisy in ("aiokafka", "uvicorn.access", "aiosqlite", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor

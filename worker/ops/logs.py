"""Logging: plain lines (``SEQPROC_LOG_FORMAT=text``, the default) or one JSON object per line (``json``).

Every line about one event (rejected, duplicate, dead-lettered, parked) is structured both ways: its message is
``key=value`` pairs (``outcome=rejected partition=3 key=product:7 idempotency_key=reserve:r1 type=reserve
reason=insufficient_stock``) and the same fields ride on the record (``extra``), so the JSON format emits them as
fields a log pipeline can index and alert on without parsing the message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: The per-event fields carried on log records (``extra``) and emitted by the JSON format.
EVENT_FIELDS = ("outcome", "partition", "key", "idempotency_key", "type", "reason", "first", "queue", "error")


def event_fields(**fields: Any) -> dict[str, Any]:
    """The ``extra`` of a per-event log line (None values left out)."""
    return {name: value for name, value in fields.items() if value is not None}


def logfmt(fields: dict[str, Any]) -> str:
    """``a=1 b=two c="with space"``: values with spaces, quotes or ``=`` are quoted (JSON string escaping)."""
    parts = []
    for name, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() or c in '"=\\' for c in text):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{name}={text}")
    return " ".join(parts)


def log_event(logger: logging.Logger, level: int, **fields: Any) -> None:
    """One structured line about one event: ``key=value`` message, the same fields on the record."""
    extra = event_fields(**fields)
    if logger.isEnabledFor(level):
        logger.log(level, "%s", logfmt(extra), extra=extra)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, and the event fields when present."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger once for the process (Celery is told not to hijack it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

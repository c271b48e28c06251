"""The monitoring guide's JSON log format, as a ``logging.Formatter``.

One object per line: ``timestamp`` (ISO 8601, UTC, milliseconds, ``Z``),
``level``, ``logger``, ``message``, then ``request_id``, ``user_id``,
``guild_id``, ``command``, ``execution_time_ms`` when the record carries them
(pass them with ``extra={...}``; the companion's own command log lines do),
and ``exception`` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

#: Context fields of the guide's format, taken from the record when present.
CONTEXT_FIELDS = ("request_id", "user_id", "guild_id", "command", "execution_time_ms")


class JsonFormatter(logging.Formatter):
    """``handler.setFormatter(JsonFormatter())`` writes the guide's format."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, tz=timezone.utc)
        out = {
            "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                # Snowflakes as strings, as the guide shows them (and as
                # JavaScript-based log tools can hold them exactly).
                out[field] = str(value) if field in ("request_id", "user_id", "guild_id") else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)

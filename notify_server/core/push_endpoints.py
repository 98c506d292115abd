"""Which push-service endpoints a subscription may name (`web_push.allowed_hosts`).

A subscription's endpoint is user input: whoever holds a session can POST any URL, and the worker would
then send requests to it. So an endpoint is accepted only on an allowed host, checked when the browser
subscribes and again before every send. An entry is one of:

- `fcm.googleapis.com`: HTTPS to that host, on port 443;
- `*.notify.windows.com`: HTTPS to any host under that domain (not the domain itself), on port 443;
- `https://host:port`: HTTPS to that origin;
- `http://host:port`: plain HTTP to that one origin (a push service inside the tests).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from yarl import URL

MAX_ENDPOINT_CHARS = 2048

_HOST = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
_ENTRY = re.compile(rf"(?:(?P<scheme>https?)://(?P<host>{_HOST})(?::(?P<port>\d{{1,5}}))?|(?P<wild>\*\.)?(?P<name>{_HOST}))")
ENTRY_FORMAT = "a host name, *.domain, https://host[:port] or http://host:port"


@dataclasses.dataclass(frozen=True, slots=True)
class _Rule:
    scheme: str
    host: str  # for a wildcard: the domain, matched as a suffix after a dot
    port: int
    wildcard: bool

    def matches(self, url: URL) -> bool:
        host = (url.host or "").lower()
        if url.scheme != self.scheme or url.port != self.port:
            return False
        return host.endswith("." + self.host) if self.wildcard else host == self.host


def parse_entry(entry: str) -> _Rule:
    """One `allowed_hosts` entry as a rule; ValueError naming the expected format."""
    match = _ENTRY.fullmatch(entry.strip().lower())
    if match is None:
        raise ValueError(f"{entry!r} is not {ENTRY_FORMAT}")
    if match["name"]:
        return _Rule("https", match["name"], 443, bool(match["wild"]))
    scheme = match["scheme"]
    if scheme == "http" and not match["port"]:
        raise ValueError(f"{entry!r}: plain http is allowed for one origin only: write http://host:port")
    port = int(match["port"]) if match["port"] else 443
    if not 0 < port <= 65535:
        raise ValueError(f"{entry!r}: port out of range")
    return _Rule(scheme, match["host"], port, False)


class AllowedHosts:
    """The parsed `web_push.allowed_hosts`: `problem(endpoint)` says why an endpoint is refused, or None."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._rules = tuple(parse_entry(entry) for entry in entries)

    def problem(self, endpoint: str | URL) -> str | None:
        """Why this endpoint is refused, or None; a URL already parsed is checked as it is (the sender
        parses once, checks, and sends to that same URL object)."""
        if len(str(endpoint)) > MAX_ENDPOINT_CHARS:
            return f"longer than {MAX_ENDPOINT_CHARS} characters"
        try:
            url = endpoint if isinstance(endpoint, URL) else URL(endpoint, encoded=False)
        except (ValueError, TypeError):
            return "not a URL"
        if not url.is_absolute() or url.scheme not in ("https", "http") or not url.host:
            return "must be an https:// URL"
        if url.user is not None or url.password is not None or url.fragment:
            return "must not carry credentials or a fragment"
        if any(rule.matches(url) for rule in self._rules):
            return None
        if url.scheme != "https":
            return "must be https (plain http only for an origin listed in web_push.allowed_hosts)"
        return f"host {url.host} is not a push service allowed by web_push.allowed_hosts"


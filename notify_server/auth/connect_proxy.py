"""The `proxy` auth method: ask the app's own endpoint who the client is.

The node POSTs to `auth.proxy_url` with the client's `Cookie` and `Authorization` headers and a JSON
body `{"transport": "websocket" | "rest"}`. The app answers 200 `{"user_id": "…", "expires_at":
ISO-8601 | null}` (a user), 401 or 403 (nobody); anything else — another status, a redirect (not
followed), a body that is not that JSON, no answer within `auth.proxy_timeout_s` — means the app cannot
tell now (close 1013, REST 503). The HTTP client keeps no cookies between calls (each call carries only
its own client's headers) and reads at most MAX_ANSWER_BYTES of an answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

import aiohttp
import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from notify_server.core.identity import PROXY, ForwardedHeaders, Identity
from notify_server.core.schemas import MAX_USER_ID_CHARS, first_error

MAX_ANSWER_BYTES = 16384
PROXY_CONNECTIONS = 100  # concurrent calls to the app's endpoint per node
USER_AGENT = "notify-server connect proxy"
REFUSED_STATUSES = frozenset((401, 403))


class ProxyRefused(Exception):
    """The app answered 401/403 (or vouched for nobody usable); the message says why, for the log."""


class ProxyUnavailable(Exception):
    """The app could not tell now; the message says why, for the log."""


class ProxyBusy(ProxyUnavailable):
    """The app was not asked: this node's budget of calls to it is spent for now (auth.proxy_node_*)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _AnswerSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # the app may say more than we need

    user_id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_USER_ID_CHARS))
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True, default_timezone=dt.UTC)


_ANSWER = _AnswerSchema()


def keep_cookies(header: str | None, names: Collection[str]) -> str | None:
    """The Cookie header reduced to the named cookies (all of them when `names` is empty)."""
    if not header or not names:
        return header or None
    kept = [part.strip() for part in header.split(";") if part.strip().split("=", 1)[0].strip() in names]
    return "; ".join(kept) or None


class ConnectProxy:
    """Calls the app's proxy endpoint over one pooled HTTP client (opened and closed by the app's
    cleanup context)."""

    def __init__(self, url: str, timeout_s: float, cookie_names: Collection[str]) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self.cookie_names = frozenset(cookie_names)
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=PROXY_CONNECTIONS),
            cookie_jar=aiohttp.DummyCookieJar(),  # a Set-Cookie for one user must never ride on another's call
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def ask(self, forwarded: ForwardedHeaders, transport: str) -> Identity:
        """Who the app says these headers belong to; raises ProxyRefused or ProxyUnavailable."""
        if self._http is None:
            raise ProxyUnavailable("the proxy client is not open")
        try:
            async with self._http.post(
                self._url, data=orjson.dumps({"transport": transport}), allow_redirects=False,
                headers={**forwarded.as_headers(), "Content-Type": "application/json", "Accept": "application/json"},
            ) as response:
                if response.status in REFUSED_STATUSES:
                    raise ProxyRefused(f"the app answered {response.status}")
                if response.status != 200:
                    hint = " (redirects are not followed: answer 401)" if 300 <= response.status < 400 else ""
                    raise ProxyUnavailable(f"the app answered {response.status}{hint}")
                body = await _read_bounded(response)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise ProxyUnavailable(f"no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ProxyUnavailable(f"unreachable ({type(exc).__name__})") from None
        return _identity(body, forwarded)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(4096):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise ProxyUnavailable(f"the app's answer is over {MAX_ANSWER_BYTES} bytes")
    return bytes(body)


def _identity(body: bytes, forwarded: ForwardedHeaders) -> Identity:
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProxyUnavailable("the app answered 200 without JSON") from None
    if not isinstance(raw, dict):
        raise ProxyUnavailable("the app answered 200 with JSON that is not an object")
    try:
        answer = _ANSWER.load(raw)
    except ValidationError as exc:
        raise ProxyUnavailable(f"the app's answer is unusable: {first_error(exc.messages)}") from None
    user_id: str = answer["user_id"]
    if "\x00" in user_id or not user_id.strip():
        raise ProxyUnavailable("the app's answer is unusable: user_id is blank or holds NUL")
    expires_at: dt.datetime | None = answer["expires_at"]
    if expires_at is not None:
        try:
            expires_at = expires_at.astimezone(dt.UTC)
        except OverflowError:  # 9999-12-31T23:59:59-01:00 is past the last date a datetime holds
            raise ProxyUnavailable("the app's answer is unusable: expires_at out of range") from None
        if expires_at <= dt.datetime.now(dt.UTC):
            raise ProxyRefused("the app answered an expires_at in the past")
    return Identity(user_id=user_id, method=PROXY, expires_at=expires_at, forwarded=forwarded)

"""Who a socket or a request is, by which auth method, and what re-checking it later needs.

An `Identity` is what authentication hands back (notify_server.auth.authenticator) and what the connection manager
records per socket. It keeps as little of the credential as re-validation needs:

- session: the token's sha256 (revocations and the periodic re-check go by it); never the token;
- jwt: nothing of the token: its `exp` is fixed, so the socket closes then unless refreshed in band;
- proxy: the client's forwarded `Cookie` / `Authorization` values, because the app's endpoint is asked
  again every `session.recheck_interval_s` and only those let it answer. They live in this process's
  memory for the socket's lifetime only (never written to Redis or Postgres), reduced to the cookies
  named in `auth.proxy_cookies` when that is set, and their repr is redacted so no log line or
  traceback can show them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

SESSION = "session"
JWT = "jwt"
PROXY = "proxy"
AUTH_METHODS = (SESSION, JWT, PROXY)


class ForwardedHeaders:
    """The `Cookie` and `Authorization` header values sent on to the app's proxy endpoint; redacted repr."""

    __slots__ = ("cookie", "authorization", "_digest")

    def __init__(self, cookie: str | None, authorization: str | None) -> None:
        self.cookie = cookie or None
        self.authorization = authorization or None
        material = f"{self.cookie or ''}\n{self.authorization or ''}".encode("utf-8", "surrogatepass")
        self._digest = hashlib.sha256(material).hexdigest()

    @property
    def digest(self) -> str:
        """sha256 of both values: sockets sharing a credential are re-asked once (a key, never logged)."""
        return self._digest

    def __bool__(self) -> bool:
        return bool(self.cookie or self.authorization)

    def as_headers(self) -> dict[str, str]:
        headers = {}
        if self.cookie:
            headers["Cookie"] = self.cookie
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    def __repr__(self) -> str:
        kept = [name for name, value in (("Cookie", self.cookie), ("Authorization", self.authorization)) if value]
        return f"ForwardedHeaders({', '.join(kept) or 'none'}: redacted)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ForwardedHeaders) and other._digest == self._digest

    def __hash__(self) -> int:
        return hash(self._digest)


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user, the method that vouched for them, and until when (None: no fixed end)."""

    user_id: str
    method: str
    expires_at: dt.datetime | None
    session_hash: str = ""  # session: sha256 of the token
    forwarded: ForwardedHeaders | None = dataclasses.field(default=None, repr=False)  # proxy: to re-ask

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or dt.datetime.now(dt.UTC))

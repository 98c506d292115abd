"""Authentication of users, WebSocket and REST alike: the methods of `auth.methods`, tried in order.

- session: the token's sha256 in the sessions table (notify_server.storage.sessions);
- jwt: a token the app signed (notify_server.auth.jwt_tokens);
- proxy: the app's endpoint answers for the client's Cookie / Authorization (notify_server.auth.connect_proxy).

The first method that accepts the credential wins. When none does, the client learns only that it is
not authenticated (4001 / 401); the log line says what each method found, never the credential. When a
method could not tell (Postgres away, the proxy endpoint down) and no other accepted, the caller answers
"try again" (1013 / 503).

Credentials come from the same places for every method: the `session_id` cookie, `?token=` (WebSocket)
and `Authorization: Bearer` (REST); the proxy gets the raw `Cookie` and `Authorization` headers (a
WebSocket's `?token=` as `Authorization: Bearer`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from aiohttp import web

from notify_server.auth.connect_proxy import ConnectProxy, ProxyBusy, ProxyRefused, ProxyUnavailable, keep_cookies
from notify_server.auth.jwt_tokens import JwtVerifier, TokenRefused
from notify_server.core.identity import JWT, PROXY, SESSION, ForwardedHeaders, Identity
from notify_server.core.ratelimit import Clock, KeyedBuckets, TokenBucket
from notify_server.core.settings import AuthSettings
from notify_server.core.stores import describe, unavailable
from notify_server.storage.sessions import SessionStore

logger = logging.getLogger("notify.auth")

SESSION_COOKIE = "session_id"
WEBSOCKET = "websocket"
REST = "rest"


class AuthUnavailable(Exception):
    """No method accepted and at least one could not tell (its store or the app's endpoint is away).
    retry_after_s: when the node knows how long (its proxy budget refills), for a Retry-After header."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyAttempts(AuthUnavailable):
    """No method accepted, and the proxy method was not asked: this client address has caused more calls
    to the app's endpoint than `auth.proxy_client_*` allow (close 4029, REST and SSE 429). A kind of
    AuthUnavailable, so a caller that knows no better answers "try again later"."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s)
        self.retry_after_s: int = retry_after_s


# Client addresses whose proxy calls are counted at once; past it the least recently seen are forgotten.
MAX_PROXY_CLIENTS = 50_000
PROXY_CLIENT = "proxy_client"
PROXY_NODE = "proxy_node"


class ProxyBudget:
    """How many calls to the app's endpoint incoming connects, requests and refreshes may cause: per
    client address and per node (auth.proxy_client_*, auth.proxy_node_*; 0 turns either off)."""

    def __init__(self, settings: AuthSettings, clock: Clock = time.monotonic) -> None:
        self._clients = (
            KeyedBuckets(settings.proxy_client_burst, settings.proxy_client_per_s, MAX_PROXY_CLIENTS, clock)
            if settings.proxy_client_burst and settings.proxy_client_per_s else None
        )
        self._node = (
            TokenBucket(settings.proxy_node_burst, settings.proxy_node_per_s, clock)
            if settings.proxy_node_burst and settings.proxy_node_per_s else None
        )
        self.on_limited: Callable[[str], None] = lambda limit: None  # the node counts it (a metric)

    def spend(self, client: str | None) -> None:
        """Take one call for this client; raises TooManyAttempts (this client) or ProxyBusy (this node)."""
        key = client or "unknown"
        if self._clients is not None and not self._clients.take(key):
            self.on_limited(PROXY_CLIENT)
            raise TooManyAttempts("too many calls to the app's endpoint from this address (auth.proxy_client_*)",
                                  self._clients.wait_s(key))
        if self._node is not None and not self._node.take():
            self.on_limited(PROXY_NODE)
            raise ProxyBusy("this node's calls to the app's endpoint are over auth.proxy_node_*", self._node.wait_s())


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """What a request or frame presented. `token`: the bearer, `?token=` or `session_id` value;
    `forwarded`: the headers the proxy method sends on. Never logged (redacted repr)."""

    token: str | None = dataclasses.field(repr=False)
    forwarded: ForwardedHeaders = dataclasses.field(repr=False)
    from_cookie: bool = False  # the token (if any) is the session_id cookie: CSRF rules apply to changes
    client: str | None = None  # the peer's address: what the proxy method's per-client limit counts by


def bearer_token(request: web.BaseRequest) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def websocket_credentials(request: web.BaseRequest, cookie_names: frozenset[str] = frozenset()) -> Credentials:
    """An upgrade's credentials: cookie `session_id`, else `?token=`."""
    query_token = request.query.get("token") or None
    token = request.cookies.get(SESSION_COOKIE) or query_token
    authorization = request.headers.get("Authorization") or (f"Bearer {query_token}" if query_token else None)
    cookie = keep_cookies(request.headers.get("Cookie"), cookie_names)
    return Credentials(token=token, forwarded=ForwardedHeaders(cookie, authorization), client=request.remote)


def rest_credentials(request: web.BaseRequest, cookie_names: frozenset[str] = frozenset()) -> Credentials:
    """A REST request's credentials: `Authorization: Bearer`, else cookie `session_id`."""
    bearer = bearer_token(request)
    token = bearer or request.cookies.get(SESSION_COOKIE) or None
    cookie = keep_cookies(request.headers.get("Cookie"), cookie_names)
    forwarded = ForwardedHeaders(cookie, request.headers.get("Authorization"))
    return Credentials(token=token, forwarded=forwarded, from_cookie=bearer is None, client=request.remote)


def refresh_credentials(token: str, client: str | None = None) -> Credentials:
    """A `refresh` frame's new credential, presented to every method as a bearer token."""
    return Credentials(token=token, forwarded=ForwardedHeaders(None, f"Bearer {token}"), client=client)


class Authenticator:
    """The configured methods, in order, over the node's session store and (for proxy) HTTP client."""

    def __init__(self, settings: AuthSettings, sessions: SessionStore) -> None:
        self.methods = tuple(settings.methods)
        self._sessions = sessions
        self._jwt = JwtVerifier(settings) if JWT in self.methods else None
        self.proxy = (
            ConnectProxy(settings.proxy_url, settings.proxy_timeout_s, settings.proxy_cookies)
            if PROXY in self.methods else None
        )
        self.proxy_budget = ProxyBudget(settings)

    @property
    def cookie_names(self) -> frozenset[str]:
        return self.proxy.cookie_names if self.proxy is not None else frozenset()

    async def open(self) -> None:
        if self.proxy is not None:
            await self.proxy.open()

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()

    async def authenticate(self, credentials: Credentials, transport: str) -> Identity | None:
        """The identity of the first method that accepts, or None (logged with each method's reason).
        Raises AuthUnavailable — or the store's own error, when only the store could not tell — when
        no method accepted and one could not tell."""
        refusals: list[str] = []
        cannot_tell: list[BaseException] = []
        limited: TooManyAttempts | None = None
        for method in self.methods:
            try:
                identity = await self._try(method, credentials, transport)
            except (TokenRefused, ProxyRefused) as exc:
                refusals.append(f"{method}: {exc}")
                continue
            except TooManyAttempts as exc:
                limited = exc
                refusals.append(f"{method}: not asked, {exc}")
                continue
            except ProxyUnavailable as exc:
                cannot_tell.append(exc)
                refusals.append(f"{method}: unavailable, {exc}")
                continue
            except Exception as exc:
                if not unavailable(exc):
                    raise
                cannot_tell.append(exc)
                refusals.append(f"{method}: store unreachable ({describe(exc)})")
                continue
            if identity is not None:
                return identity
            refusals.append(f"{method}: no credential")
        if limited is not None or any(isinstance(exc, ProxyBusy) for exc in cannot_tell):
            # A flood is what the limits are for: one line per refused request would be a flood of its own
            # (notify_rate_limited_total counts them).
            logger.debug("%s authentication limited: %s", transport, "; ".join(refusals))
        elif cannot_tell:
            logger.warning("%s authentication undecided: %s", transport, "; ".join(refusals))
        if cannot_tell:
            if not isinstance(cannot_tell[0], ProxyUnavailable):
                raise cannot_tell[0]
            busy = next((exc for exc in cannot_tell if isinstance(exc, ProxyBusy)), None)
            raise AuthUnavailable("; ".join(refusals), busy.retry_after_s if busy else None)
        if limited is not None:
            raise limited
        logger.info("%s authentication refused: %s", transport, "; ".join(refusals))
        return None

    async def _try(self, method: str, credentials: Credentials, transport: str) -> Identity | None:
        """One method: an identity, None when there is nothing for it to look at, or a *Refused error."""
        if method == SESSION:
            if not credentials.token:
                return None
            session = await self._sessions.validate(credentials.token)
            if session is None:
                raise TokenRefused("unknown, expired or revoked session")
            return Identity(user_id=session.user_id, method=SESSION, expires_at=session.expires_at,
                            session_hash=session.token_hash)
        if method == JWT and self._jwt is not None:
            return self._jwt.verify(credentials.token) if credentials.token else None
        if method == PROXY and self.proxy is not None:
            if not credentials.forwarded:
                return None  # nothing the app could recognise: not worth a call
            self.proxy_budget.spend(credentials.client)
            return await self.proxy.ask(credentials.forwarded, transport)
        return None

    async def revalidate(self, identity: Identity) -> Identity | None:
        """Whether a jwt or proxy socket's credential still holds: the (possibly new) identity, or None.
        A proxy that names another user now counts as None. Raises AuthUnavailable when the app's
        endpoint cannot tell. Session sockets are re-checked in bulk by the session watcher."""
        if identity.method == PROXY and self.proxy is not None and identity.forwarded is not None:
            try:
                fresh = await self.proxy.ask(identity.forwarded, WEBSOCKET)
            except ProxyRefused as exc:
                logger.info("proxied socket re-check refused: %s", exc)
                return None
            except ProxyUnavailable as exc:
                raise AuthUnavailable(str(exc)) from None
            if fresh.user_id != identity.user_id:
                logger.info("proxied socket re-check: the app now names another user")
                return None
            return fresh
        return None if identity.expired() else identity

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

from aiohttp import web

from notify_server.auth.connect_proxy import ConnectProxy, ProxyRefused, ProxyUnavailable, keep_cookies
from notify_server.auth.jwt_tokens import JwtVerifier, TokenRefused
from notify_server.core.identity import JWT, PROXY, SESSION, ForwardedHeaders, Identity
from notify_server.core.settings import AuthSettings
from notify_server.core.stores import describe, unavailable
from notify_server.storage.sessions import SessionStore

logger = logging.getLogger("notify.auth")

SESSION_COOKIE = "session_id"
WEBSOCKET = "websocket"
REST = "rest"


class AuthUnavailable(Exception):
    """No method accepted and at least one could not tell (its store or the app's endpoint is away)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """What a request or frame presented. `token`: the bearer, `?token=` or `session_id` value;
    `forwarded`: the headers the proxy method sends on. Never logged (redacted repr)."""

    token: str | None = dataclasses.field(repr=False)
    forwarded: ForwardedHeaders = dataclasses.field(repr=False)
    from_cookie: bool = False  # the token (if any) is the session_id cookie: CSRF rules apply to changes


def bearer_token(request: web.BaseRequest) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def websocket_credentials(request: web.BaseRequest, cookie_names: frozenset[str] = frozenset()) -> Credentials:
    """An upgrade's credentials: cookie `session_id`, else `?token=`."""
    query_token = request.query.get("token") or None
    token = request.cookies.get(SESSION_COOKIE) or query_token
    authorization = request.headers.get("Authorization") or (f"Bearer {query_token}" if query_token else None)
    cookie = keep_cookies(request.headers.get("Cookie"), cookie_names)
    return Credentials(token=token, forwarded=ForwardedHeaders(cookie, authorization))


def rest_credentials(request: web.BaseRequest, cookie_names: frozenset[str] = frozenset()) -> Credentials:
    """A REST request's credentials: `Authorization: Bearer`, else cookie `session_id`."""
    bearer = bearer_token(request)
    token = bearer or request.cookies.get(SESSION_COOKIE) or None
    cookie = keep_cookies(request.headers.get("Cookie"), cookie_names)
    forwarded = ForwardedHeaders(cookie, request.headers.get("Authorization"))
    return Credentials(token=token, forwarded=forwarded, from_cookie=bearer is None)


def refresh_credentials(token: str) -> Credentials:
    """A `refresh` frame's new credential, presented to every method as a bearer token."""
    return Credentials(token=token, forwarded=ForwardedHeaders(None, f"Bearer {token}"))


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
        for method in self.methods:
            try:
                identity = await self._try(method, credentials, transport)
            except (TokenRefused, ProxyRefused) as exc:
                refusals.append(f"{method}: {exc}")
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
        if cannot_tell:
            logger.warning("%s authentication undecided: %s", transport, "; ".join(refusals))
            if not isinstance(cannot_tell[0], ProxyUnavailable):
                raise cannot_tell[0]
            raise AuthUnavailable("; ".join(refusals))
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

"""A Web Push service on loopback that checks what a real one checks (tests and bench/webpush.py).

`subscribe()` makes a subscription as a browser does: a fresh P-256 key pair and a 16-byte auth secret,
with an endpoint on this service. A message is accepted (201) only when
- `Authorization: vapid t=<JWT>, k=<key>` names the configured VAPID public key, and the JWT's ES256
  signature verifies against it, its `aud` is this service's origin, its `exp` is in the future and no
  more than 24 h ahead, and its `sub` is a mailto: or https: contact (RFC 8292);
- `Content-Encoding: aes128gcm`, a `TTL` and a valid `Urgency` are present (RFC 8030), the body is at
  most 4,096 bytes (413 otherwise), and it DECRYPTS with the subscription's private key and auth secret
  (RFC 8291) — so a test sees the plaintext the browser would.
What was delivered is kept in `delivered` (and signalled on `arrived`); answers can be scripted per
subscription (`answer_next`) to play a 410, a 429 with Retry-After, a 5xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from notify_server.core.vapid_keys import b64url, b64url_decode, public_key_bytes
from notify_server.transport.webpush_encryption import RECORD_SIZE, DecryptionError, decrypt

URGENCIES = {"very-low", "low", "normal", "high"}
MAX_EXP_AHEAD_S = 24 * 3600


@dataclasses.dataclass
class BrowserSubscription:
    """What the browser keeps (the private key) and what it hands the app (`as_json`)."""

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    def as_json(self) -> dict[str, Any]:
        """`PushSubscription.toJSON()`."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": b64url(public_key_bytes(self.private_key)), "auth": b64url(self.auth)}}


@dataclasses.dataclass
class Delivered:
    token: str
    message: Any  # the decrypted plaintext, parsed as JSON
    ttl: int
    urgency: str
    at: float  # time.monotonic() on receipt
    wall: float  # time.time() on receipt (the benchmark compares it with created_at)


class PushService:
    def __init__(self, vapid_public_key: str, *, decrypt_every: int = 1) -> None:
        self.vapid_public_key = vapid_public_key
        self._verifier = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(vapid_public_key))
        self.origin = ""
        self.subscriptions: dict[str, BrowserSubscription] = {}
        self.delivered: list[Delivered] = []
        self.refused: list[tuple[int, str]] = []  # (status, why) of each message turned away
        self.requests = 0
        self.arrived = asyncio.Event()
        self._scripts: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._decrypt_every = decrypt_every  # the benchmark decrypts a sample, to leave the CPU to the worker
        self._seen = 0
        self._verified: dict[str, dict[str, Any]] = {}  # VAPID token -> its verified claims
        self.gate: asyncio.Event | None = None  # when set: requests wait for it (a hanging push service)
        self.held = asyncio.Event()  # a request is waiting at the gate

    def subscribe(self) -> BrowserSubscription:
        token = secrets.token_urlsafe(16)
        subscription = BrowserSubscription(token, f"{self.origin}/push/{token}",
                                           ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        self.subscriptions[token] = subscription
        return subscription

    def adopt(self, endpoint: str, private_key: ec.EllipticCurvePrivateKey, auth: bytes) -> BrowserSubscription:
        """A subscription a real browser made (its endpoint on this service, its keys handed over)."""
        token = endpoint.rsplit("/", 1)[-1]
        subscription = self.subscriptions[token] = BrowserSubscription(token, endpoint, private_key, auth)
        return subscription

    def answer_next(
        self, subscription: BrowserSubscription, status: int, headers: dict[str, str] | None = None
    ) -> None:
        """The next request to this subscription is answered `status` (after the checks pass)."""
        self._scripts.setdefault(subscription.token, []).append((status, headers or {}))

    def delivered_to(self, subscription: BrowserSubscription) -> list[Delivered]:
        return [d for d in self.delivered if d.token == subscription.token]

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Delivered]:
        """Until `count` messages were delivered in all (TimeoutError after timeout_s)."""
        async with asyncio.timeout(timeout_s):
            while len(self.delivered) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.delivered

    # ---------------------------------------------------------------- the HTTP side

    def _refuse(self, status: int, why: str) -> web.Response:
        self.refused.append((status, why))
        return web.json_response({"reason": why}, status=status)

    async def _push(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.gate is not None:
            self.held.set()
            await self.gate.wait()
        subscription = self.subscriptions.get(request.match_info["token"])
        if subscription is None:
            return self._refuse(404, "no such subscription")
        problem = self._check_vapid(request.headers.get("Authorization", ""))
        if problem:
            return self._refuse(403 if "key" in problem else 401, problem)
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return self._refuse(400, "Content-Encoding must be aes128gcm")
        ttl = request.headers.get("TTL", "")
        if not ttl.isdigit():
            return self._refuse(400, "TTL missing")
        urgency = request.headers.get("Urgency", "normal")
        if urgency not in URGENCIES:
            return self._refuse(400, f"Urgency {urgency!r}")
        body = await request.content.read(RECORD_SIZE + 1)
        if len(body) > RECORD_SIZE:
            return self._refuse(413, "body over 4096 bytes")
        self._seen += 1
        message: Any = None
        if self._seen % self._decrypt_every == 0 or self._decrypt_every == 1:
            try:
                message = orjson.loads(decrypt(body, subscription.private_key, subscription.auth))
            except (DecryptionError, orjson.JSONDecodeError) as exc:
                return self._refuse(400, f"cannot decrypt: {exc}")
        script = self._scripts.get(subscription.token)
        if script:
            status, headers = script.pop(0)
            if status >= 300:
                return web.Response(status=status, headers=headers)
        self.delivered.append(Delivered(subscription.token, message, int(ttl), urgency, time.monotonic(), time.time()))
        self.arrived.set()
        return web.Response(status=201, headers={"Location": f"{self.origin}/message/{len(self.delivered)}"})

    def _check_vapid(self, authorization: str) -> str | None:
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            return "Authorization is not vapid"
        values = dict(part.strip().split("=", 1) for part in params.split(",") if "=" in part)
        if values.get("k") != self.vapid_public_key:
            return "k is not the application server key of this subscription"
        token = values.get("t", "")
        claims = self._verified.get(token)
        if claims is None:
            # The signature of a token is checked once (a sender reuses one token per push service for
            # hours, and real push services remember them too); its claims are checked on every message.
            try:
                claims = jwt.decode(token, self._verifier, algorithms=["ES256"], audience=self.origin,
                                    options={"require": ["aud", "exp", "sub"]})
            except jwt.InvalidTokenError as exc:
                return f"JWT refused: {exc}"
            self._verified[token] = claims
        if claims["aud"] != self.origin or claims["exp"] <= time.time():
            return "JWT refused: wrong audience or expired"
        if claims["exp"] > time.time() + MAX_EXP_AHEAD_S:
            return "exp more than 24 h ahead"
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            return "sub is not a contact"
        return None

    @asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[PushService]:
        app = web.Application()
        app.router.add_post("/push/{token}", self._push)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()

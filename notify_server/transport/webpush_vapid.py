"""VAPID (RFC 8292): the `Authorization: vapid t=<JWT>, k=<public key>` header of each push request.

The JWT (ES256) names the push service's origin (`aud`), an expiry (`exp`, at most 24 h ahead) and our
contact (`sub`). One token per origin is signed and reused until an hour before it expires: a fan-out
to 5,000 browsers on one push service signs once, not 5,000 times.
"""

from __future__ import annotations

import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from notify_server.core.vapid_keys import application_server_key

TOKEN_LIFETIME_S = 12 * 3600  # RFC 8292 §2: no more than 24 h; push services refuse further
RENEW_BEFORE_S = 3600
MAX_CACHED_ORIGINS = 1000


def origin_of(endpoint: str | URL) -> str:
    """The `aud` of an endpoint: scheme://host[:port], the port only when it is not the default."""
    return str((endpoint if isinstance(endpoint, URL) else URL(endpoint)).origin())


class VapidSigner:
    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._key = private_key
        self._subject = subject
        self.public_key = application_server_key(private_key)
        self._tokens: dict[str, tuple[str, float]] = {}  # origin -> (header, renew at)

    def authorization(self, endpoint: str | URL, now: float | None = None) -> str:
        """The Authorization header value for a request to this endpoint."""
        now = time.time() if now is None else now
        origin = origin_of(endpoint)
        cached = self._tokens.get(origin)
        if cached is not None and now < cached[1]:
            return cached[0]
        expires_at = int(now) + TOKEN_LIFETIME_S
        token = jwt.encode({"aud": origin, "exp": expires_at, "sub": self._subject}, self._key, algorithm="ES256")
        header = f"vapid t={token}, k={self.public_key}"
        if len(self._tokens) >= MAX_CACHED_ORIGINS:  # push services are few; wildcard hosts could be many
            self._tokens.clear()
        self._tokens[origin] = (header, expires_at - RENEW_BEFORE_S)
        return header

"""The `jwt` auth method: tokens the app signs, verified with PyJWT.

Signature with an algorithm from `auth.jwt_algorithms` (never `none`), `exp` required, `nbf` and `iat`
checked, `aud` / `iss` when configured (a token that carries `aud` is refused when no audience is
configured: it was meant for someone else). The user is the `auth.jwt_user_claim` claim.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import jwt

from notify_server.core.identity import JWT, Identity
from notify_server.core.jwt_keys import HMAC_ALGORITHMS, hmac_secret_problem, load_public_key
from notify_server.core.schemas import MAX_USER_ID_CHARS
from notify_server.core.settings import AuthSettings, ConfigError

MAX_JWT_CHARS = 8192  # longer is no token of ours; refused before any parsing

# Why a token was refused, for the log line (never shown to the client, never holding the token).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not valid yet (nbf or iat in the future)"),
    (jwt.InvalidIssuedAtError, "iat is not a number"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidKeyError, "key unfit for the token's algorithm"),
    (jwt.DecodeError, "malformed"),
)


class TokenRefused(Exception):
    """The token does not authenticate anyone; the message says why, for the log."""


class JwtVerifier:
    """Verifies tokens with the configured secret (HS*) or public key (RS*, PS*, ES*)."""

    def __init__(self, settings: AuthSettings) -> None:
        self._algorithms = frozenset(settings.jwt_algorithms)
        hmac_algorithms = [a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS]
        other_algorithms = [a for a in settings.jwt_algorithms if a not in HMAC_ALGORITHMS]
        # The config loader refuses these already; settings built in code (Settings.replace) are checked here.
        problem = hmac_secret_problem(settings.jwt_secret, hmac_algorithms)
        if hmac_algorithms and (not settings.jwt_secret or problem):
            raise ConfigError(f"auth.jwt_secret: {problem or 'required for ' + hmac_algorithms[0]}")
        self._secret = settings.jwt_secret.encode("utf-8")
        self._public_key: Any = None
        if other_algorithms:
            try:
                self._public_key = load_public_key(settings.jwt_public_key_file, other_algorithms)
            except ValueError as exc:
                raise ConfigError(f"auth.jwt_public_key_file: {exc}") from None
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._user_claim = settings.jwt_user_claim
        self._leeway_s = settings.jwt_leeway_s

    def verify(self, token: str) -> Identity:
        """The identity this token vouches for; raises TokenRefused saying why not."""
        if len(token) > MAX_JWT_CHARS or token.count(".") != 2:
            raise TokenRefused("not a JWT")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if not isinstance(algorithm, str) or algorithm not in self._algorithms:
                shown = algorithm[:16] if isinstance(algorithm, str) else type(algorithm).__name__
                raise TokenRefused(f"algorithm {shown!r} not allowed")
            claims = jwt.decode(
                token,
                self._secret if algorithm in HMAC_ALGORITHMS else self._public_key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                # An integer user id in `sub` is common (and accepted below), so PyJWT's string-only
                # check of `sub` is left to _user_id.
                options={"require": ["exp"], "verify_sub": False, "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"missing claim {exc.claim}") from None
        except jwt.InvalidTokenError as exc:
            reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), type(exc).__name__)
            raise TokenRefused(reason) from None
        user_id = self._user_id(claims)
        try:
            # PyJWT has checked that exp is a number and not past; it may still be past any date
            # (1e20, 10**400, year 10000), which no timer or frame could carry.
            expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        except (OverflowError, ValueError, OSError):
            raise TokenRefused("exp out of range") from None
        return Identity(user_id=user_id, method=JWT, expires_at=expires_at)

    def _user_id(self, claims: dict[str, Any]) -> str:
        value = claims.get(self._user_claim)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise TokenRefused(f"claim {self._user_claim} holds no user id")
        try:
            value.encode("utf-8")  # a lone surrogate from a \ud800 escape cannot reach Postgres or Redis
        except UnicodeEncodeError:
            raise TokenRefused(f"claim {self._user_claim} is not a usable user id") from None
        if len(value) > MAX_USER_ID_CHARS or "\x00" in value:
            raise TokenRefused(f"claim {self._user_claim} is not a usable user id")
        return value

"""Real signed tokens for the auth tests: keys generated here, tokens minted with PyJWT as an app would."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from notify_server.core.settings import Settings

AUDIENCE = "notify-server"
ISSUER = "https://app.example"


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """What the app signs with (`signing`) and what notify-server is configured with (secret or PEM file)."""

    algorithm: str
    signing: Any
    secret: str = ""
    public_pem: bytes = b""

    def auth_settings(self, tmp_path: Path, **extra: Any) -> dict[str, Any]:
        """The `auth` keys that make a node accept this key's tokens (methods: session, then jwt)."""
        values: dict[str, Any] = {"methods": ("session", "jwt"), "jwt_algorithms": (self.algorithm,),
                                  "jwt_audience": AUDIENCE, "jwt_issuer": ISSUER}
        if self.secret:
            values["jwt_secret"] = self.secret
        else:
            path = tmp_path / f"{self.algorithm}.pem"
            path.write_bytes(self.public_pem)
            values["jwt_public_key_file"] = str(path)
        return {**values, **extra}

    def settings(self, settings: Settings, tmp_path: Path, **extra: Any) -> Settings:
        return settings.replace(auth=self.auth_settings(tmp_path, **extra))

    def mint(self, user_id: str | int | None = "alice", *, expires_in_s: float = 3600, **claims: Any) -> str:
        """A token as the app would issue it; claims override or (with None) remove the defaults."""
        now = int(time.time())
        payload: dict[str, Any] = {"sub": user_id, "exp": now + int(expires_in_s), "iat": now,
                                   "aud": AUDIENCE, "iss": ISSUER}
        payload.update(claims)
        payload = {key: value for key, value in payload.items() if value is not None}
        return jwt.encode(payload, self.signing, algorithm=self.algorithm)


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def hs256_key() -> SigningKey:
    secret = secrets.token_urlsafe(48)
    return SigningKey("HS256", secret.encode(), secret=secret)


def rs256_key() -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey("RS256", private, public_pem=_pem(private.public_key()))


def es256_key() -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey("ES256", private, public_pem=_pem(private.public_key()))


def unsigned_token(user_id: str = "alice", expires_in_s: int = 3600) -> str:
    """`alg: none`: a header and claims with an empty signature, as an attacker would forge one."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"sub": user_id, "exp": int(time.time()) + expires_in_s, "aud": AUDIENCE, "iss": ISSUER}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."

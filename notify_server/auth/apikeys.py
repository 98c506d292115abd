"""API keys of the HTTP publish API: made by `notify-server apikey create`, configured as SHA-256 digests.

Only digests are configured (`publish.api_key_hashes`), so a leaked config file publishes nothing. A
presented key is hashed and compared with every digest in constant time (no early exit, no timing hint
of how much of a digest matched).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

API_KEY_PREFIX = "nsk_"  # notify-server key: recognisable by secret scanners and in a leaked paste
API_KEY_BYTES = 32
MAX_API_KEY_CHARS = 256  # longer is no key of ours


def hash_api_key(key: str) -> str:
    """Lower-case hex SHA-256 of the key: what `publish.api_key_hashes` lists."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_key() -> tuple[str, str]:
    """(a new random key, its digest)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)
    return key, hash_api_key(key)


class ApiKeyRing:
    """The configured digests; `accepts(key)` in constant time over all of them."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = tuple(bytes.fromhex(d) for d in digests)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, key: str | None) -> bool:
        if not key or len(key) > MAX_API_KEY_CHARS:
            return False
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found

"""Web Push message encryption (RFC 8291: aes128gcm of RFC 8188, keyed by ECDH with the browser's key).

Each message gets a fresh ECDH key pair and salt; the body is one record:
`salt (16) || rs (4) || idlen (1) || our public key (65) || AES-128-GCM(plaintext || 0x02)`.
Written on `cryptography` directly: per message it costs what http_ece's does less its generic
record loop, and it needs nothing beyond what PyJWT[crypto] already installs (docs/benchmarks.md,
"Web Push", has the measurement behind the choice). `decrypt` is the browser's side, for the tests'
push service and the benchmark's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RECORD_SIZE = 4096
PUBLIC_KEY_BYTES = 65  # an uncompressed P-256 point
AUTH_SECRET_BYTES = 16
HEADER_BYTES = 16 + 4 + 1 + PUBLIC_KEY_BYTES
TAG_BYTES = 16
# Push services take bodies of at most 4096 bytes (RFC 8030 §7.2 says at least that; FCM says at most):
# the header, the tag and the padding delimiter leave this much for the plaintext.
MAX_PLAINTEXT_BYTES = RECORD_SIZE - HEADER_BYTES - TAG_BYTES - 1

_KEY_INFO = b"WebPush: info\x00"
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"
_LAST_RECORD = b"\x02"


class DecryptionError(ValueError):
    """The body is not an aes128gcm message for this key (the tests' push service says why)."""


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.sha256)


def _keys(shared: bytes, auth: bytes, ua_public: bytes, as_public: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(content encryption key, nonce) of RFC 8291 §3.4 and RFC 8188 §2.2 (HKDF with one block each)."""
    prk_key = _hmac(auth, shared)
    ikm = _hmac(prk_key, _KEY_INFO + ua_public + as_public + b"\x01")
    prk = _hmac(salt, ikm)
    return _hmac(prk, _CEK_INFO)[:16], _hmac(prk, _NONCE_INFO)[:12]


def ua_public_key(p256dh: bytes) -> ec.EllipticCurvePublicKey:
    """The browser's key as a point on P-256; ValueError when it is not one."""
    if len(p256dh) != PUBLIC_KEY_BYTES or p256dh[0] != 4:
        raise ValueError("not an uncompressed P-256 point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)


def encrypt(plaintext: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """The aes128gcm body of one push message to the browser holding (p256dh, auth)."""
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise ValueError(f"a push message holds at most {MAX_PLAINTEXT_BYTES} bytes")
    if len(auth) != AUTH_SECRET_BYTES:
        raise ValueError("the auth secret is 16 bytes")
    ours = ec.generate_private_key(ec.SECP256R1())
    as_public = ours.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    shared = ours.exchange(ec.ECDH(), ua_public_key(p256dh))
    salt = os.urandom(16)
    key, nonce = _keys(shared, auth, p256dh, as_public, salt)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext + _LAST_RECORD, None)
    return salt + struct.pack("!IB", RECORD_SIZE, PUBLIC_KEY_BYTES) + as_public + ciphertext


def decrypt(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth: bytes) -> bytes:
    """What the browser does on receipt: the plaintext, or DecryptionError."""
    if len(body) < HEADER_BYTES + TAG_BYTES + 1:
        raise DecryptionError("shorter than a header and a tag")
    salt, (record_size, id_length) = body[:16], struct.unpack("!IB", body[16:21])
    if id_length != PUBLIC_KEY_BYTES:
        raise DecryptionError(f"keyid of {id_length} bytes, not a P-256 point")
    as_public, ciphertext = body[21:HEADER_BYTES], body[HEADER_BYTES:]
    if len(ciphertext) > record_size:
        raise DecryptionError("more than one record")
    try:
        shared = ua_private.exchange(ec.ECDH(), ua_public_key(as_public))
    except ValueError:
        raise DecryptionError("keyid is not a P-256 point") from None
    ua_public = ua_private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    key, nonce = _keys(shared, auth, ua_public, as_public, salt)
    try:
        record = AESGCM(key).decrypt(nonce, ciphertext, None)
    except InvalidTag:
        raise DecryptionError("authentication tag does not match (wrong keys or altered body)") from None
    plaintext = record.rstrip(b"\x00")
    if not plaintext.endswith(_LAST_RECORD):
        raise DecryptionError("no last-record delimiter")
    return plaintext[:-1]

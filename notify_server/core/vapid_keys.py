"""The VAPID key pair (RFC 8292): created by `notify-server vapid create`, loaded with the config.

The private key is a PEM P-256 key in a file only its owner may read; the public key, as the browser's
`applicationServerKey` wants it, is the uncompressed point (65 bytes) in unpadded base64url. Loaded
when the config is (a missing or unfit file is a config error naming `web_push.vapid_private_key_file`).
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from notify_server.core.key_files import read_key_file

MAX_KEY_FILE_BYTES = 1 << 16
KEY_FILE_MODE = 0o600


class VapidKeyError(ValueError):
    """The key file cannot be used; the message says why (never any key material)."""


def b64url(data: bytes) -> str:
    """Unpadded base64url, as Web Push writes keys."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Padded or unpadded base64url (browsers send either); ValueError when it is not."""
    if not text.isascii() or any(c in text for c in "+/ \n\r\t"):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValueError("not base64url") from None


def public_key_bytes(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed point (0x04 || x || y, 65 bytes for P-256)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as the browser's `pushManager.subscribe({applicationServerKey})` takes it."""
    return b64url(public_key_bytes(key))


def load_private_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The PEM P-256 private key at `path`; VapidKeyError saying what is wrong."""
    pem = read_key_file(path, MAX_KEY_FILE_BYTES, "a PEM private key", VapidKeyError)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise VapidKeyError(f"{path} holds no unencrypted PEM private key (`notify-server vapid create` writes one)") \
            from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VapidKeyError(f"{path}: VAPID needs a P-256 (prime256v1) key")
    return key


def create_key_file(path: str) -> ec.EllipticCurvePrivateKey:
    """A new P-256 key written to `path` (PKCS#8 PEM, mode 0600). An existing file is never overwritten:
    every browser subscription is bound to the public key, and replacing it would orphan them all."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        # O_EXCL: refuse an existing file (or a link planted there); the mode is set at creation, so the
        # key is never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        raise VapidKeyError(f"{path} exists; not overwritten (subscriptions are bound to its key)") from None
    except OSError as exc:
        raise VapidKeyError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    os.chmod(path, KEY_FILE_MODE)  # whatever the umask said
    return key

"""The keys that verify JWTs: which algorithms exist, and the PEM public key for RS*/PS*/ES*.

Loaded when the config is (so a missing or unfit key file is a config error naming
`auth.jwt_public_key_file`) and again when a node starts.
"""

from __future__ import annotations

from collections.abc import Collection

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from notify_server.core.key_files import read_key_file

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
JWT_ALGORITHMS = HMAC_ALGORITHMS + RSA_ALGORITHMS + tuple(EC_CURVES)  # never "none"

# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MAX_KEY_FILE_BYTES = 1 << 20

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyFileError(ValueError):
    """The key file cannot verify the configured algorithms; the message says why (no key material)."""


def hmac_secret_problem(secret: str, algorithms: Collection[str]) -> str | None:
    """Why this secret is unfit for these HS* algorithms, or None."""
    needed = max((HMAC_MIN_SECRET_BYTES[a] for a in algorithms if a in HMAC_MIN_SECRET_BYTES), default=0)
    if needed and len(secret.encode("utf-8")) < needed:
        strongest = max((a for a in algorithms if a in HMAC_MIN_SECRET_BYTES), key=HMAC_MIN_SECRET_BYTES.__getitem__)
        return f"at least {needed} bytes for {strongest} (RFC 7518 §3.2); e.g. `openssl rand -base64 48`"
    return None


def load_public_key(path: str, algorithms: Collection[str]) -> PublicKey:
    """The PEM public key (or certificate) at `path`, checked against every asymmetric algorithm listed."""
    pem = read_key_file(path, MAX_KEY_FILE_BYTES, "a PEM public key", KeyFileError)
    loaded: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            loaded = x509.load_pem_x509_certificate(pem).public_key()
        else:
            loaded = load_pem_public_key(pem)
    except ValueError:
        hint = " (that is a private key: give the public one)" if b"PRIVATE KEY" in pem else ""
        raise KeyFileError(f"{path} holds no PEM public key or certificate{hint}") from None
    if not isinstance(loaded, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise KeyFileError(f"{path}: a {type(loaded).__name__} cannot verify RS*, PS* or ES* tokens")
    for algorithm in algorithms:
        if algorithm in RSA_ALGORITHMS and not isinstance(loaded, rsa.RSAPublicKey):
            raise KeyFileError(f"{path} holds an EC key; {algorithm} needs an RSA key")
        curve = EC_CURVES.get(algorithm)
        on_curve = isinstance(loaded, ec.EllipticCurvePublicKey) and isinstance(loaded.curve, curve or ())
        if curve is not None and not on_curve:
            raise KeyFileError(f"{path} is not a {curve.name} key, which {algorithm} needs")
    if isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size < 2048:
        raise KeyFileError(f"{path}: a {loaded.key_size}-bit RSA key is too weak (at least 2048 bits)")
    return loaded

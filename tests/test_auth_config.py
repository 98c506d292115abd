"""The `auth` and `publish` config sections (issue 12): a listed method without its keys, or with keys that
cannot work, stops start-up with one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from notify_server.core.settings import ConfigError, settings_from_mapping
from tests.tokens import es256_key, rs256_key

SECRET = "s" * 32


def load(auth: dict[str, Any] | None = None, environ: dict[str, str] | None = None, **sections: Any) -> Any:
    return settings_from_mapping({"auth": auth or {}, **sections}, environ or {})


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    files = {"rsa": rs256_key().public_pem, "ec": es256_key().public_pem}
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    files["rsa-1024"] = small.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    files["private"] = small.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    files["ec-p384"] = p384.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    files["junk"] = b"hello"
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(content)
    return paths


def test_the_defaults_keep_the_sessions_table_alone() -> None:
    settings = load()

    assert settings.auth.methods == ("session",)
    assert settings.auth.jwt_algorithms == ("HS256",)
    assert settings.publish.api_key_hashes == ()


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"methods": ["jwt"]}, "auth.jwt_secret: required when auth.methods lists jwt with HS256"),
        ({"methods": ["jwt"], "jwt_secret": "short"}, "auth.jwt_secret: at least 32 bytes for HS256"),
        ({"methods": ["jwt"], "jwt_algorithms": ["HS512"], "jwt_secret": SECRET},
         "auth.jwt_secret: at least 64 bytes for HS512"),
        ({"methods": ["jwt"], "jwt_algorithms": ["RS256"]},
         "auth.jwt_public_key_file: required when auth.methods lists jwt with RS256"),
        ({"methods": ["proxy"]}, "auth.proxy_url: required when auth.methods lists proxy"),
        ({"methods": ["session", "oauth"]}, "auth.methods.1: Must be one of: session, jwt, proxy."),
        ({"methods": []}, "auth.methods: Shorter than minimum length 1."),
        ({"methods": ["jwt", "jwt"], "jwt_secret": SECRET}, "auth.methods: each method at most once"),
        ({"jwt_algorithms": ["none"]}, "auth.jwt_algorithms.0: Must be one of: HS256"),
        ({"proxy_url": "ftp://app/auth"}, "auth.proxy_url: must be empty or start with one of http://, https://"),
        ({"proxy_timeout_s": 0}, "auth.proxy_timeout_s: Must be greater than 0"),
        ({"jwt_leeway_s": -1}, "auth.jwt_leeway_s: Must be greater than or equal to 0"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_a_method_without_usable_keys_is_a_config_error_naming_the_key(auth: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(auth)

    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("algorithms", "key", "message"),
    [
        (["RS256"], "ec", "holds an EC key; RS256 needs an RSA key"),
        (["ES256"], "rsa", "is not a secp256r1 key, which ES256 needs"),
        (["ES256"], "ec-p384", "is not a secp256r1 key, which ES256 needs"),
        (["RS256"], "rsa-1024", "a 1024-bit RSA key is too weak"),
        (["RS256"], "private", "holds no PEM public key or certificate (that is a private key"),
        (["RS256"], "junk", "holds no PEM public key or certificate"),
        (["RS256"], "missing", "cannot read"),
    ],
)
def test_an_unfit_public_key_file_is_a_config_error(
    pems: dict[str, Path], tmp_path: Path, algorithms: list[str], key: str, message: str
) -> None:
    path = pems.get(key, tmp_path / "missing.pem")

    with pytest.raises(ConfigError) as caught:
        load({"methods": ["jwt"], "jwt_algorithms": algorithms, "jwt_public_key_file": str(path)})

    assert str(caught.value).startswith("auth.jwt_public_key_file: ") and message in str(caught.value)


def test_every_method_configured_from_the_environment(pems: dict[str, Path]) -> None:
    settings = load(environ={
        "NOTIFY_AUTH_METHODS": "jwt,proxy,session",
        "NOTIFY_AUTH_JWT_ALGORITHMS": "HS256,RS256",
        "NOTIFY_AUTH_JWT_SECRET": SECRET,
        "NOTIFY_AUTH_JWT_PUBLIC_KEY_FILE": str(pems["rsa"]),
        "NOTIFY_AUTH_PROXY_URL": "https://app.example/notify-auth",
        "NOTIFY_AUTH_PROXY_COOKIES": "sessionid,csrftoken",
        "NOTIFY_PUBLISH_API_KEY_HASHES": "A" * 64 + "," + "b" * 64,
    })

    assert settings.auth.methods == ("jwt", "proxy", "session")
    assert settings.auth.proxy_cookies == ("sessionid", "csrftoken")
    assert settings.publish.api_key_hashes == ("a" * 64, "b" * 64)  # lower-cased


def test_the_jwt_secret_stays_out_of_the_settings_repr() -> None:
    settings = load({"methods": ["jwt"], "jwt_secret": SECRET + "-unique"})

    assert "-unique" not in repr(settings) and "-unique" not in repr(settings.auth)


@pytest.mark.parametrize("digest", ["abc", "g" * 64, "a" * 65])
def test_an_api_key_hash_must_be_a_sha256_hex_digest(digest: str) -> None:
    with pytest.raises(ConfigError, match=r"^publish\.api_key_hashes\.0: a hex SHA-256 digest"):
        load(publish={"api_key_hashes": [digest]})

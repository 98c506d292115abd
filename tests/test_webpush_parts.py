"""Web Push's parts on their own (issue 20): message encryption against RFC 8291's own example, the VAPID
header, which endpoints are allowed, Retry-After, messages that do not fit, the queue's entries, the
`web_push` config section and `notify-server vapid create`."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from notify_server.core.push_endpoints import AllowedHosts, parse_entry
from notify_server.core.settings import ConfigError, settings_from_mapping
from notify_server.core.vapid_keys import (
    application_server_key,
    b64url,
    b64url_decode,
    create_key_file,
    load_private_key,
    public_key_bytes,
)
from notify_server.storage.notifications import Notification
from notify_server.transport.webpush_encryption import (
    MAX_PLAINTEXT_BYTES,
    RECORD_SIZE,
    DecryptionError,
    decrypt,
    encrypt,
)
from notify_server.transport.webpush_queue import RECIPIENTS_PER_ENTRY, decode_entry, encode_entries
from notify_server.transport.webpush_sender import message_for, retry_after_s
from notify_server.transport.webpush_vapid import TOKEN_LIFETIME_S, VapidSigner

# ---------------------------------------------------------------- encryption (RFC 8291)


def test_the_example_message_of_rfc_8291_decrypts() -> None:
    """RFC 8291 Appendix A: the user agent's keys, the auth secret and the message body it gives."""
    ua_private = ec.derive_private_key(
        int.from_bytes(b64url_decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"), "big"), ec.SECP256R1())
    body = b64url_decode(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6P"
        "Bru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")

    plaintext = decrypt(body, ua_private, b64url_decode("BTBZMqHH6r4Tts7J_aSIgg"))

    assert plaintext == b"When I grow up, I want to be a watermelon"


def browser_keys() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, public_key_bytes(private), os.urandom(16)


def test_a_message_decrypts_with_the_browsers_keys_only() -> None:
    private, p256dh, auth = browser_keys()
    other, _, other_auth = browser_keys()
    body = encrypt(b'{"type":"notification"}', p256dh, auth)

    assert decrypt(body, private, auth) == b'{"type":"notification"}'
    assert body != encrypt(b'{"type":"notification"}', p256dh, auth)  # a fresh key and salt per message
    for key, secret in ((other, auth), (private, other_auth)):
        with pytest.raises(DecryptionError):
            decrypt(body, key, secret)
    altered = body[:-1] + bytes([body[-1] ^ 1])
    with pytest.raises(DecryptionError):
        decrypt(altered, private, auth)


def test_the_largest_message_fits_in_the_4096_bytes_push_services_take() -> None:
    private, p256dh, auth = browser_keys()
    body = encrypt(b"x" * MAX_PLAINTEXT_BYTES, p256dh, auth)

    assert len(body) == RECORD_SIZE
    assert decrypt(body, private, auth) == b"x" * MAX_PLAINTEXT_BYTES
    with pytest.raises(ValueError):
        encrypt(b"x" * (MAX_PLAINTEXT_BYTES + 1), p256dh, auth)


def test_keys_that_are_not_a_browsers_are_refused() -> None:
    _, p256dh, auth = browser_keys()
    with pytest.raises(ValueError):
        encrypt(b"m", b"\x04" + b"\x01" * 64, auth)  # not a point on the curve
    with pytest.raises(ValueError):
        encrypt(b"m", p256dh, auth[:15])


# ---------------------------------------------------------------- VAPID (RFC 8292)


def test_the_vapid_header_carries_a_jwt_for_the_endpoints_origin_signed_by_the_configured_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = VapidSigner(key, "mailto:ops@example.com")
    now = time.time()

    header = signer.authorization("https://fcm.googleapis.com/fcm/send/abc:def", now=now)
    elsewhere = signer.authorization("http://127.0.0.1:8443/push/x", now=now)

    scheme, _, params = header.partition(" ")
    values = dict(part.strip().split("=", 1) for part in params.split(","))
    assert scheme == "vapid" and values["k"] == application_server_key(key)
    claims = jwt.decode(values["t"], key.public_key(), algorithms=["ES256"], audience="https://fcm.googleapis.com")
    assert claims["sub"] == "mailto:ops@example.com"
    assert now < claims["exp"] <= now + 24 * 3600
    assert "t=" in elsewhere and jwt.decode(elsewhere.split("t=")[1].split(",")[0], key.public_key(),
                                            algorithms=["ES256"], audience="http://127.0.0.1:8443")


def test_one_token_per_origin_is_reused_until_an_hour_before_it_expires() -> None:
    signer = VapidSigner(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com")
    now = 1_800_000_000.0
    first = signer.authorization("https://fcm.googleapis.com/a", now=now)

    assert signer.authorization("https://fcm.googleapis.com/b", now=now + 60) == first
    assert signer.authorization("https://fcm.googleapis.com/c", now=now + TOKEN_LIFETIME_S - 1800) != first


# ---------------------------------------------------------------- allowed endpoints


@pytest.mark.parametrize(("endpoint", "allowed"), [
    ("https://fcm.googleapis.com/fcm/send/abc", True),
    ("https://FCM.googleapis.com/fcm/send/abc", True),
    ("https://fcm.googleapis.com:443/fcm/send/abc", True),
    ("https://fcm.googleapis.com:8443/fcm/send/abc", False),
    ("http://fcm.googleapis.com/fcm/send/abc", False),
    ("https://fcm.googleapis.com.evil.example/x", False),
    ("https://evilfcm.googleapis.com/x", False),
    ("https://wns2-par02p.notify.windows.com/w/?token=x", True),
    ("https://notify.windows.com/w", False),  # *.domain: a host under it, not the domain itself
    ("https://evilnotify.windows.com/w", False),
    ("https://web.push.apple.com/QGuQ", True),
    ("http://127.0.0.1:9000/push/1", True),
    ("http://127.0.0.1:9001/push/1", False),
    ("https://127.0.0.1:9000/push/1", False),
    ("https://user@fcm.googleapis.com/x", False),
    ("ftp://fcm.googleapis.com/x", False),
    ("/relative/path", False),
    ("https://fcm.googleapis.com/" + "a" * 3000, False),
])
def test_only_endpoints_on_an_allowed_host_are_accepted(endpoint: str, allowed: bool) -> None:
    hosts = AllowedHosts(["fcm.googleapis.com", "*.notify.windows.com", "*.push.apple.com", "http://127.0.0.1:9000"])

    assert (hosts.problem(endpoint) is None) == allowed


@pytest.mark.parametrize("entry", ["http://127.0.0.1", "*.", "https://", "fcm.googleapis.com/path", "a b", "*x.com"])
def test_a_malformed_allowed_hosts_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_entry(entry)


# ---------------------------------------------------------------- answers and messages


@pytest.mark.parametrize(("value", "seconds"), [
    ("1", 1.0), (" 120 ", 120.0), (None, None), ("", None), ("soon", None), ("-5", None),
])
def test_retry_after_is_read_as_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_s(value) == seconds


def test_retry_after_as_an_http_date_is_the_time_until_then() -> None:
    now = 1_800_000_000.0
    date = dt.datetime.fromtimestamp(now + 30, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")

    assert retry_after_s(date, now=now) == pytest.approx(30, abs=1)


def frame_data(**changes: Any) -> dict[str, Any]:
    data = {"notification_id": "4f0c3f7e-8a4b-4c55-9d1e-6a3f0b2f1c9d", "title": "t", "body": "b", "priority": "LOW",
            "action_url": None, "event_type": "E", "metadata": {}, "created_at": "2026-12-06T10:00:00.000Z"}
    return {**data, **changes}


def size(data: dict[str, Any]) -> int:
    return len(orjson.dumps({"type": "notification", "data": data}))


def test_a_notification_that_fits_is_sent_as_it_is() -> None:
    data = frame_data(metadata={"k": "v" * 1000})
    assert message_for(data) == data


def test_a_notification_too_large_for_a_push_loses_its_metadata_then_the_end_of_its_body() -> None:
    with_metadata = frame_data(body="short", metadata={"k": "v" * 4000})
    long_body = frame_data(body="é" * 3000, metadata={"k": 1})

    assert message_for(with_metadata) == {**with_metadata, "metadata": {}}
    shortened = message_for(long_body)
    assert shortened is not None and shortened["metadata"] == {}
    assert shortened["body"].endswith("…") and long_body["body"].startswith(shortened["body"][:-1])
    assert MAX_PLAINTEXT_BYTES - 8 <= size(shortened) <= MAX_PLAINTEXT_BYTES


def test_the_queue_holds_each_event_in_entries_of_at_most_500_recipients() -> None:
    created = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    rows = [Notification(i, f"id-{i}", f"u{i}", "secret@example.com", "evt", "E", "t", "b", "HIGH", "/x", {},
                         created, None) for i in range(RECIPIENTS_PER_ENTRY + 1)]

    entries = encode_entries(rows)

    assert len(entries) == 2
    assert b"secret@example.com" not in b"".join(entries)
    first = decode_entry(b"1-0", {b"j": entries[0]})
    assert (first.event_type, first.priority, len(first.recipients)) == ("E", "HIGH", RECIPIENTS_PER_ENTRY)
    assert first.recipients[0] == ("u0", "id-0") and set(first.data) >= {"title", "body", "created_at"}


# ---------------------------------------------------------------- config


def test_web_push_defaults_are_off_and_away_with_the_big_push_services_allowed() -> None:
    web_push = settings_from_mapping({}, environ={}).web_push

    assert (web_push.enabled, web_push.when, web_push.ttl_s, web_push.max_subscriptions_per_user) == (
        False, "away", 86400, 10)
    assert "fcm.googleapis.com" in web_push.allowed_hosts


@pytest.mark.parametrize(("section", "message"), [
    ({"enabled": True, "subject": "mailto:a@b.c"}, "web_push.vapid_private_key_file: required"),
    ({"enabled": True, "vapid_private_key_file": "/nonexistent.pem", "subject": "mailto:a@b.c"},
     "web_push.vapid_private_key_file: cannot read"),
    ({"subject": "ops@example.com"}, "web_push.subject: must start with mailto:"),
    ({"when": "sometimes"}, "web_push.when"),
    ({"allowed_hosts": ["http://localhost"]}, "web_push.allowed_hosts"),
    ({"ttl_s": -1}, "web_push.ttl_s"),
])
def test_an_unusable_web_push_section_is_a_config_error_naming_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping({"web_push": section}, environ={})


def test_web_push_needs_a_key_and_a_subject_and_takes_the_environment(tmp_path: Path) -> None:
    key_file = str(tmp_path / "vapid.pem")
    create_key_file(key_file)
    environ = {"NOTIFY_WEB_PUSH_ENABLED": "true", "NOTIFY_WEB_PUSH_VAPID_PRIVATE_KEY_FILE": key_file,
               "NOTIFY_WEB_PUSH_ALLOWED_HOSTS": "fcm.googleapis.com,http://127.0.0.1:9000"}

    with pytest.raises(ConfigError, match="web_push.subject: required"):
        settings_from_mapping({}, environ=environ)
    web_push = settings_from_mapping({}, environ={**environ, "NOTIFY_WEB_PUSH_SUBJECT": "mailto:a@b.c"}).web_push
    assert web_push.enabled and web_push.allowed_hosts == ("fcm.googleapis.com", "http://127.0.0.1:9000")


def test_a_key_file_that_is_no_p256_private_key_is_refused(tmp_path: Path) -> None:
    public_only = tmp_path / "public.pem"
    public_only.write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="no unencrypted PEM private key"):
        load_private_key(str(public_only))


# ---------------------------------------------------------------- notify-server vapid create


def test_vapid_create_writes_a_private_key_only_its_owner_reads_and_prints_the_public_key(
    python: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "vapid.pem"
    # A config that turns web push on with a key still to be made: the command reads no config.
    env = {**cli_env, "NOTIFY_WEB_PUSH_ENABLED": "true", "NOTIFY_WEB_PUSH_VAPID_PRIVATE_KEY_FILE": str(out)}

    created = subprocess.run([python, "-m", "notify_server", "vapid", "create", "--out", str(out)], env=env,
                             capture_output=True, text=True, timeout=60)
    again = subprocess.run([python, "-m", "notify_server", "vapid", "create", "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=60)

    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public_key = created.stdout.strip()
    assert public_key == application_server_key(load_private_key(str(out)))
    assert len(b64url_decode(public_key)) == 65 and b64url(b64url_decode(public_key)) == public_key
    assert "PRIVATE" not in created.stdout and "PRIVATE" not in created.stderr
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip() == f"notify-server: {out} exists; not overwritten (subscriptions are bound to its key)"

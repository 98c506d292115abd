"""`auth.methods: jwt` (issue 12): the app's own signed tokens on the WebSocket and the REST API.

Real tokens, signed in the test with keys generated in the test (HS256, RS256, ES256); a real node.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from aiohttp.test_utils import TestClient

from notify_server.core.constants import CLOSE_UNAUTHORIZED
from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore
from notify_server.web import appkeys
from tests.fakes import assert_nothing_arrives, connect_and_count, expect_close, open_tab, start_node, wait_until
from tests.tokens import SigningKey, es256_key, hs256_key, rs256_key, unsigned_token

KEYS: dict[str, Callable[[], SigningKey]] = {"HS256": hs256_key, "RS256": rs256_key, "ES256": es256_key}
REFUSAL = {"error": {"code": "unauthorized",
                     "message": "a valid session is required (cookie session_id or Bearer token)"}}


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    """One key per algorithm, generated once for the module (RSA generation takes a moment)."""
    return {algorithm: make() for algorithm, make in KEYS.items()}


@pytest.fixture
def hs(keys: dict[str, SigningKey]) -> SigningKey:
    return keys["HS256"]


@pytest.fixture
async def node(aiohttp_client, settings: Settings, hs: SigningKey, tmp_path: Path) -> TestClient:
    return await start_node(aiohttp_client, hs.settings(settings, tmp_path))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def the_socket(client: TestClient, user_id: str):  # type: ignore[no-untyped-def]
    (ws,) = client.app[appkeys.MANAGER].connections[user_id]
    return ws


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize("algorithm", list(KEYS))
async def test_a_valid_token_opens_the_websocket_and_the_rest_api(
    aiohttp_client, settings: Settings, keys: dict[str, SigningKey], tmp_path: Path, algorithm: str
) -> None:
    key = keys[algorithm]
    client = await start_node(aiohttp_client, key.settings(settings, tmp_path))
    token = key.mint("alice")

    ws, count = await connect_and_count(client, token, via="query")
    response = await client.get("/api/notifications/unread-count", headers=bearer(token))

    assert count == 0
    assert response.status == 200 and await response.json() == {"count": 0}
    state = client.app[appkeys.MANAGER].state_of(the_socket(client, "alice"))
    assert state is not None and state.identity is not None
    assert (state.identity.method, state.identity.user_id, state.session_hash) == ("jwt", "alice", "")
    await ws.close()


async def test_the_token_may_come_in_the_session_id_cookie(node: TestClient, hs: SigningKey) -> None:
    ws, count = await connect_and_count(node, hs.mint("alice"), via="cookie")

    assert count == 0
    await ws.close()


async def test_an_integer_user_claim_is_the_users_decimal_id(node: TestClient, hs: SigningKey) -> None:
    response = await node.get("/api/notifications/unread-count", headers=bearer(hs.mint(42)))

    assert response.status == 200


async def test_the_user_claim_is_configurable(
    aiohttp_client, settings: Settings, hs: SigningKey, tmp_path: Path
) -> None:
    client = await start_node(aiohttp_client, hs.settings(settings, tmp_path, jwt_user_claim="uid"))

    ws, _ = await connect_and_count(client, hs.mint(None, uid="bob"), via="query")

    assert client.app[appkeys.MANAGER].count("bob") == 1
    await ws.close()


async def test_session_tokens_keep_working_beside_jwt(node: TestClient, sessions: SessionStore) -> None:
    session = await sessions.create("carol", ttl_s=3600)

    ws, count = await connect_and_count(node, session.token)

    assert count == 0
    await ws.close()


# ---------------------------------------------------------------- refused, the same answer whatever the reason


def forged_hs256(secret: bytes, claims: dict[str, object]) -> str:
    """An HS256 token signed with `secret` by hand (PyJWT refuses to use a PEM key as an HMAC secret)."""
    def part(raw: bytes) -> str:
        return jwt.utils.base64url_encode(raw).decode()

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + part(signature)


BAD_TOKENS: dict[str, tuple[Callable[[SigningKey], str], str]] = {
    # case: (the token, the reason the log gives)
    "expired": (lambda key: key.mint(expires_in_s=-30), "expired"),
    "wrong-signature": (lambda key: hs256_key().mint(), "bad signature"),
    "alg-none": (lambda key: unsigned_token(), "algorithm 'none' not allowed"),
    "wrong-audience": (lambda key: key.mint(aud="another-service"), "wrong audience"),
    "wrong-issuer": (lambda key: key.mint(iss="https://evil.example"), "wrong issuer"),
    "no-exp": (lambda key: key.mint(exp=None), "missing claim exp"),
    "not-yet-valid": (lambda key: key.mint(nbf=int(time.time()) + 600), "not valid yet"),
    "no-user-claim": (lambda key: key.mint(None), "claim sub holds no user id"),
    "garbage": (lambda key: "abc.def.ghi", "malformed"),
    # Numbers no clock reaches, or no numbers at all: refused like any bad token, never a 500.
    "exp-1e20": (lambda key: key.mint(exp=1e20), "exp out of range"),
    "exp-huge-integer": (lambda key: key.mint(exp=10**400), "exp out of range"),
    "exp-year-10000": (lambda key: key.mint(exp=253402300800), "exp out of range"),
    "exp-infinity": (lambda key: key.mint(exp=float("inf")), "malformed"),
    "exp-nan": (lambda key: key.mint(exp=float("nan")), "malformed"),
    "exp-negative": (lambda key: key.mint(exp=-1e20), "expired"),
    "exp-text": (lambda key: key.mint(exp="soon"), "malformed"),
    "iat-text": (lambda key: key.mint(iat="yesterday"), "iat is not a number"),
    "iat-infinity": (lambda key: key.mint(iat=float("inf")), "iat is not a number"),
    "iat-huge": (lambda key: key.mint(iat=1e300), "not valid yet"),
    "nbf-nan": (lambda key: key.mint(nbf=float("nan")), "malformed"),
    "nbf-negative-infinity": (lambda key: key.mint(nbf=float("-inf")), "malformed"),
}


async def test_bad_tokens_are_refused_without_saying_why_and_the_log_says_why(
    node: TestClient, hs: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notify.auth")
    for case, (make, reason) in BAD_TOKENS.items():  # one node for all the cases: each is one socket
        caplog.clear()
        token = make(hs)

        ws = await open_tab(node, token, via="query")
        await expect_close(ws, CLOSE_UNAUTHORIZED)
        response = await node.get("/api/notifications", headers=bearer(token))

        assert response.status == 401, case
        assert await response.json() == REFUSAL, case  # the same body for every reason
        assert f"jwt: {reason}" in caplog.text, (case, caplog.text)
        assert token not in caplog.text and token.split(".")[1] not in caplog.text, case
        assert node.app[appkeys.MANAGER].connections == {}, case


async def test_an_hs256_token_signed_with_the_rs256_public_key_is_refused(
    aiohttp_client, settings: Settings, keys: dict[str, SigningKey], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Algorithm confusion: the public key is public, so an HMAC over it proves nothing. The attack needs
    a node that accepts both kinds (HS256 with its secret, RS256 with the public key): a verifier that
    let the token's `alg` pick how the one configured key is used would accept the forgery."""
    caplog.set_level(logging.INFO, logger="notify.auth")
    hs, rs = keys["HS256"], keys["RS256"]
    mixed = {**rs.auth_settings(tmp_path), "jwt_algorithms": ("HS256", "RS256"), "jwt_secret": hs.secret}
    client = await start_node(aiohttp_client, settings.replace(auth=mixed))
    claims = json.loads(jwt.utils.base64url_decode(rs.mint("alice").split(".")[1]))
    # Both kinds are accepted as such: the node is the one the attack aims at.
    for genuine in (hs.mint("alice"), rs.mint("alice")):
        assert (await client.get("/api/notifications", headers=bearer(genuine))).status == 200

    for secret in (rs.public_pem, rs.public_pem.strip()):
        forged = forged_hs256(secret, claims)

        await expect_close(await open_tab(client, forged, via="query"), CLOSE_UNAUTHORIZED)
        assert (await client.get("/api/notifications", headers=bearer(forged))).status == 401
    assert caplog.text.count("jwt: bad signature") == 4
    assert client.app[appkeys.MANAGER].connections == {}


async def test_a_token_carrying_an_audience_is_refused_when_none_is_configured(
    aiohttp_client, settings: Settings, hs: SigningKey, tmp_path: Path
) -> None:
    client = await start_node(aiohttp_client, hs.settings(settings, tmp_path, jwt_audience=""))

    refused = await client.get("/api/notifications", headers=bearer(hs.mint()))
    accepted = await client.get("/api/notifications", headers=bearer(hs.mint(aud=None)))

    assert (refused.status, accepted.status) == (401, 200)


async def test_leeway_accepts_a_token_just_past_exp(
    aiohttp_client, settings: Settings, hs: SigningKey, tmp_path: Path
) -> None:
    client = await start_node(aiohttp_client, hs.settings(settings, tmp_path, jwt_leeway_s=60))

    response = await client.get("/api/notifications", headers=bearer(hs.mint(expires_in_s=-5)))

    assert response.status == 200


# ---------------------------------------------------------------- the socket follows the token


@pytest.mark.slow  # waits for a real exp (whole seconds): up to 2 s
async def test_a_jwt_socket_closes_with_4001_at_exp(node: TestClient, hs: SigningKey) -> None:
    token = hs.mint("alice", expires_in_s=2)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    ws, _ = await connect_and_count(node, token, via="query")

    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=4.0)

    assert time.time() >= exp - 0.1
    await wait_until(lambda: node.app[appkeys.MANAGER].connections == {}, what="the socket to be removed")


async def test_the_periodic_session_recheck_leaves_jwt_sockets_alone(
    aiohttp_client, settings: Settings, hs: SigningKey, tmp_path: Path
) -> None:
    fast = hs.settings(settings, tmp_path).replace(session={"recheck_interval_s": 0.1})
    client = await start_node(aiohttp_client, fast)
    ws, _ = await connect_and_count(client, hs.mint("alice"), via="query")

    await assert_nothing_arrives(ws, timeout_s=0.6)

    assert client.app[appkeys.MANAGER].count("alice") == 1
    await ws.close()

"""`auth.methods: proxy` (issue 12): the node asks the app's own endpoint who the client is.

The app is a real aiohttp application on a real port, with its own cookie sessions; the node is real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from notify_server.core.constants import CLOSE_TOO_MANY_CONNECTIONS, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED
from notify_server.core.identity import ForwardedHeaders
from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore
from notify_server.web import appkeys
from tests.fakes import (
    WS_PATH,
    assert_nothing_arrives,
    connect_and_count,
    expect_close,
    receive_frame,
    start_node,
    wait_until,
)

APP_COOKIE = "app_session"


@dataclasses.dataclass
class WebApp:
    """The application notify-server serves: its sessions (cookie or bearer value -> user, expiry) and
    its proxy endpoint, which answers as the issue's contract says unless `answer` is set to misbehave."""

    sessions: dict[str, tuple[str, dt.datetime | None]] = dataclasses.field(default_factory=dict)
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    answer: str = "contract"  # or: 500, redirect, not-json, no-user, past-the-last-date, slow

    def sign_in(self, value: str, user_id: str, expires_in_s: float | None = 3600) -> None:
        expires_at = None if expires_in_s is None else dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in_s)
        self.sessions[value] = (user_id, expires_at)

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        self.calls.append({"cookie": request.headers.get("Cookie"),
                           "authorization": request.headers.get("Authorization"),
                           "body": await request.json()})
        if self.answer == "500":
            return web.Response(status=500, text="boom")
        if self.answer == "redirect":
            raise web.HTTPFound("/login")
        if self.answer == "not-json":
            return web.Response(text="<html>welcome</html>", content_type="text/html")
        if self.answer == "no-user":
            return web.json_response({"name": "alice"})
        if self.answer == "past-the-last-date":  # 9999-12-31 23:59 at UTC-1 is in the year 10000 at UTC
            return web.json_response({"user_id": "alice", "expires_at": "9999-12-31T23:59:59-01:00"})
        if self.answer == "slow":
            await asyncio.sleep(1)
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        value = request.cookies.get(APP_COOKIE) or (bearer if scheme == "Bearer" else "")
        found = self.sessions.get(value)
        if found is None:
            return web.json_response({"error": "not signed in"}, status=401 if value else 403)
        user_id, expires_at = found
        return web.json_response({"user_id": user_id, "expires_at": expires_at.isoformat() if expires_at else None})

    def calls_since(self, start: int) -> list[dict[str, Any]]:
        return self.calls[start:]


@pytest.fixture
async def webapp(aiohttp_server) -> tuple[WebApp, TestServer]:
    webapp = WebApp()
    app = web.Application()
    app.router.add_post("/notify-auth", webapp.endpoint)
    return webapp, await aiohttp_server(app)


def proxied(settings: Settings, server: TestServer, **auth: Any) -> Settings:
    values = {"methods": ("proxy",), "proxy_url": str(server.make_url("/notify-auth")), "proxy_timeout_s": 0.25}
    return settings.replace(auth={**values, **auth})


@pytest.fixture
async def node(aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]) -> TestClient:
    return await start_node(aiohttp_client, proxied(settings, webapp[1]))


async def open_with_cookie(client: TestClient, cookie: str, **kwargs: Any) -> Any:
    return await client.ws_connect(WS_PATH, headers={"Cookie": cookie}, **kwargs)


# ---------------------------------------------------------------- the contract


async def test_the_apps_cookie_opens_the_websocket_and_the_rest_api(
    node: TestClient, webapp: tuple[WebApp, TestServer]
) -> None:
    app, _ = webapp
    app.sign_in("c-alice", "alice")

    ws = await open_with_cookie(node, f"{APP_COOKIE}=c-alice")
    first = await receive_frame(ws)
    response = await node.get("/api/notifications/unread-count", headers={"Cookie": f"{APP_COOKIE}=c-alice",
                                                                        "Authorization": "Basic eDp5"})

    assert first["type"] == "unread_count"
    assert node.app[appkeys.MANAGER].count("alice") == 1
    assert response.status == 200 and await response.json() == {"count": 0}
    assert app.calls == [
        {"cookie": f"{APP_COOKIE}=c-alice", "authorization": None, "body": {"transport": "websocket"}},
        {"cookie": f"{APP_COOKIE}=c-alice", "authorization": "Basic eDp5", "body": {"transport": "rest"}},
    ]
    await ws.close()


async def test_a_websocket_token_parameter_is_forwarded_as_a_bearer(
    node: TestClient, webapp: tuple[WebApp, TestServer]
) -> None:
    app, _ = webapp
    app.sign_in("t-bob", "bob")

    ws, _ = await connect_and_count(node, "t-bob", via="query")

    assert app.calls[-1]["authorization"] == "Bearer t-bob"
    assert node.app[appkeys.MANAGER].count("bob") == 1
    await ws.close()


async def test_only_the_configured_cookies_are_forwarded_and_kept(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]
) -> None:
    app, server = webapp
    app.sign_in("c-alice", "alice")
    client = await start_node(aiohttp_client, proxied(settings, server, proxy_cookies=(APP_COOKIE,)))

    ws = await open_with_cookie(client, f"tracking=t-123; {APP_COOKIE}=c-alice; theme=dark")
    await receive_frame(ws)

    assert app.calls[-1]["cookie"] == f"{APP_COOKIE}=c-alice"
    (socket,) = client.app[appkeys.MANAGER].connections["alice"]
    state = client.app[appkeys.MANAGER].state_of(socket)
    assert state is not None and state.identity is not None and state.identity.forwarded is not None
    assert state.identity.forwarded.as_headers() == {"Cookie": f"{APP_COOKIE}=c-alice"}
    assert "c-alice" not in repr(state) and "c-alice" not in repr(state.identity.forwarded)
    await ws.close()


@pytest.mark.parametrize("cookie", [f"{APP_COOKIE}=unknown", "other=1"], ids=["401", "403"])
async def test_a_refusal_by_the_app_is_4001_and_401(
    node: TestClient, webapp: tuple[WebApp, TestServer], cookie: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notify.auth")

    ws = await open_with_cookie(node, cookie)
    await expect_close(ws, CLOSE_UNAUTHORIZED)
    response = await node.get("/api/notifications", headers={"Cookie": cookie})

    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert "proxy: the app answered" in caplog.text
    assert "unknown" not in caplog.text.replace("unknown, expired", "")


async def test_an_app_that_cannot_tell_is_1013_and_503(
    node: TestClient, webapp: tuple[WebApp, TestServer], caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = webapp
    app.sign_in("c-alice", "alice")
    caplog.set_level(logging.WARNING, logger="notify.auth")
    for answer in ("500", "redirect", "not-json", "no-user", "past-the-last-date", "slow"):
        app.answer = answer
        caplog.clear()

        ws = await open_with_cookie(node, f"{APP_COOKIE}=c-alice")
        await expect_close(ws, CLOSE_TRY_AGAIN)
        response = await node.get("/api/notifications", headers={"Cookie": f"{APP_COOKIE}=c-alice"})

        assert response.status == 503, answer
        body = await response.json()
        assert body["error"]["code"] == "unavailable" and "proxy" not in body["error"]["message"], answer
        assert "authentication undecided: proxy: unavailable" in caplog.text, (answer, caplog.text)
        assert "c-alice" not in caplog.text, answer


async def test_an_unreachable_endpoint_is_1013_and_503(aiohttp_client, settings: Settings) -> None:
    dead = settings.replace(auth={"methods": ("proxy",), "proxy_url": "http://127.0.0.1:1/auth"})
    client = await start_node(aiohttp_client, dead)

    await expect_close(await open_with_cookie(client, "a=b"), CLOSE_TRY_AGAIN)
    assert (await client.get("/api/notifications", headers={"Cookie": "a=b"})).status == 503


async def test_nothing_to_forward_is_refused_without_asking_the_app(
    node: TestClient, webapp: tuple[WebApp, TestServer]
) -> None:
    ws = await node.ws_connect(WS_PATH)

    await expect_close(ws, CLOSE_UNAUTHORIZED)
    assert (await node.get("/api/notifications")).status == 401
    assert webapp[0].calls == []


async def test_a_session_token_is_taken_before_the_proxy_is_asked(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer], sessions: SessionStore
) -> None:
    client = await start_node(aiohttp_client, proxied(settings, webapp[1], methods=("session", "proxy")))
    session = await sessions.create("carol", ttl_s=3600)

    ws, _ = await connect_and_count(client, session.token)

    assert webapp[0].calls == []
    await ws.close()


# ---------------------------------------------------------------- how often the app is asked


async def test_one_address_past_its_proxy_allowance_gets_4029_and_429_without_a_call(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]
) -> None:
    """Every unknown cookie would be a call to the app: one client address may cause proxy_client_burst
    of them back to back, then proxy_client_per_s."""
    app, server = webapp
    app.sign_in("c-alice", "alice")
    client = await start_node(aiohttp_client, proxied(settings, server, proxy_client_burst=3,
                                                      proxy_client_per_s=0.001, proxy_node_burst=0))
    ws = await open_with_cookie(client, f"{APP_COOKIE}=c-alice")  # one call: a real user, before the flood
    await receive_frame(ws)
    for n in range(2):
        assert (await client.get("/api/notifications", headers={"Cookie": f"{APP_COOKIE}=guess-{n}"})).status == 401
    assert len(app.calls) == 3

    rest = await client.get("/api/notifications", headers={"Cookie": f"{APP_COOKIE}=guess-3"})
    sse = await client.get("/sse/notifications", headers={"Cookie": f"{APP_COOKIE}=guess-4"})
    socket = await open_with_cookie(client, f"{APP_COOKIE}=guess-5")

    for response in (rest, sse):
        assert response.status == 429
        assert (await response.json())["error"]["code"] == "too_many_requests"
        assert int(response.headers["Retry-After"]) >= 1
    await expect_close(socket, CLOSE_TOO_MANY_CONNECTIONS)
    assert len(app.calls) == 3  # none of them reached the app
    closed = await client.app[appkeys.SESSION_WATCHER].recheck(None)  # re-checks of open sockets still ask
    assert closed == 0 and len(app.calls) == 4
    metrics = await (await client.get("/metrics")).text()
    assert 'notify_rate_limited_total{limit="proxy_client"} 3.0' in metrics
    await ws.close()


async def test_a_node_past_its_proxy_allowance_answers_1013_and_503_without_a_call(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]
) -> None:
    app, server = webapp
    client = await start_node(aiohttp_client, proxied(settings, server, proxy_client_burst=0,
                                                      proxy_node_burst=2, proxy_node_per_s=0.001))
    for n in range(2):
        assert (await client.get("/api/notifications", headers={"Cookie": f"{APP_COOKIE}=guess-{n}"})).status == 401

    rest = await client.get("/api/notifications", headers={"Cookie": f"{APP_COOKIE}=guess-2"})
    socket = await open_with_cookie(client, f"{APP_COOKIE}=guess-3")

    assert rest.status == 503 and int(rest.headers["Retry-After"]) >= 1
    await expect_close(socket, CLOSE_TRY_AGAIN)
    assert len(app.calls) == 2
    metrics = await (await client.get("/metrics")).text()
    assert 'notify_rate_limited_total{limit="proxy_node"} 2.0' in metrics


# ---------------------------------------------------------------- re-asked while open


async def test_logging_out_in_the_app_closes_the_socket_within_the_recheck_interval(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]
) -> None:
    app, server = webapp
    app.sign_in("c-alice", "alice")
    client = await start_node(aiohttp_client, proxied(settings, server).replace(session={"recheck_interval_s": 0.15}))
    ws = await open_with_cookie(client, f"{APP_COOKIE}=c-alice")
    await receive_frame(ws)
    await assert_nothing_arrives(ws, timeout_s=0.4)  # re-asked (twice or so) and kept

    del app.sessions["c-alice"]  # the user logs out in the app

    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=2.0)
    assert len(app.calls) >= 3
    assert all(call["body"] == {"transport": "websocket"} for call in app.calls)


async def test_two_tabs_on_one_cookie_cost_one_call_per_recheck(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]
) -> None:
    app, server = webapp
    app.sign_in("c-alice", "alice")
    client = await start_node(aiohttp_client, proxied(settings, server))
    tabs = [await open_with_cookie(client, f"{APP_COOKIE}=c-alice") for _ in range(2)]
    for tab in tabs:
        await receive_frame(tab)
    before = len(app.calls)

    closed = await client.app[appkeys.SESSION_WATCHER].recheck(None)

    assert closed == 0 and len(app.calls) == before + 1
    for tab in tabs:
        await tab.close()


async def test_the_app_naming_another_user_on_recheck_closes_the_socket(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]
) -> None:
    app, server = webapp
    app.sign_in("c-shared", "alice")
    client = await start_node(aiohttp_client, proxied(settings, server))
    ws = await open_with_cookie(client, f"{APP_COOKIE}=c-shared")
    await receive_frame(ws)

    app.sign_in("c-shared", "bob")
    await client.app[appkeys.SESSION_WATCHER].recheck(None)

    await expect_close(ws, CLOSE_UNAUTHORIZED)


async def test_sockets_are_kept_while_the_app_cannot_answer_a_recheck(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer], caplog: pytest.LogCaptureFixture
) -> None:
    app, server = webapp
    app.sign_in("c-alice", "alice")
    client = await start_node(aiohttp_client, proxied(settings, server).replace(session={"recheck_interval_s": 0.1}))
    ws = await open_with_cookie(client, f"{APP_COOKIE}=c-alice")
    await receive_frame(ws)
    caplog.set_level(logging.WARNING, logger="notify.sessions")

    app.answer = "500"
    await assert_nothing_arrives(ws, timeout_s=0.4)

    assert client.app[appkeys.MANAGER].count("alice") == 1
    assert "kept 1 proxied socket(s) unchecked" in caplog.text
    app.answer = "contract"
    del app.sessions["c-alice"]
    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=2.0)


@pytest.mark.slow  # waits through two expiries: about 1 s
async def test_the_socket_is_re_asked_at_the_expiry_the_app_gave(
    aiohttp_client, settings: Settings, webapp: tuple[WebApp, TestServer]
) -> None:
    app, server = webapp
    app.sign_in("c-alice", "alice", expires_in_s=0.4)
    client = await start_node(aiohttp_client, proxied(settings, server))  # periodic re-check: 60 s
    ws = await open_with_cookie(client, f"{APP_COOKIE}=c-alice")
    await receive_frame(ws)

    app.sign_in("c-alice", "alice", expires_in_s=3600)  # extended before it ran out: kept
    await assert_nothing_arrives(ws, timeout_s=0.6)
    assert len(app.calls) == 2  # the connect, and the re-ask at the first expiry
    app.sign_in("c-alice", "alice", expires_in_s=0.3)
    await client.app[appkeys.SESSION_WATCHER].recheck(None)  # the app shortens it: timer moved earlier

    del app.sessions["c-alice"]
    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=2.0)


async def test_a_proxied_socket_can_refresh_with_a_bearer_credential(
    node: TestClient, webapp: tuple[WebApp, TestServer]
) -> None:
    app, _ = webapp
    app.sign_in("c-alice", "alice")
    app.sign_in("t-alice-2", "alice")
    ws = await open_with_cookie(node, f"{APP_COOKIE}=c-alice")
    await receive_frame(ws)

    await ws.send_json({"type": "refresh", "token": "t-alice-2"})

    assert (await receive_frame(ws))["type"] == "refreshed"
    assert app.calls[-1] == {"cookie": None, "authorization": "Bearer t-alice-2", "body": {"transport": "websocket"}}
    await node.app[appkeys.SESSION_WATCHER].recheck(None)  # re-asked with the new credential
    assert app.calls[-1]["authorization"] == "Bearer t-alice-2"
    await ws.close()


async def test_a_refresh_the_app_cannot_answer_closes_with_1013(
    node: TestClient, webapp: tuple[WebApp, TestServer]
) -> None:
    app, _ = webapp
    app.sign_in("c-alice", "alice")
    ws = await open_with_cookie(node, f"{APP_COOKIE}=c-alice")
    await receive_frame(ws)

    app.answer = "500"
    await ws.send_json({"type": "refresh", "token": "t-anything"})

    await expect_close(ws, CLOSE_TRY_AGAIN)
    await wait_until(lambda: node.app[appkeys.MANAGER].connections == {}, what="the socket to be removed")


def test_forwarded_headers_never_show_their_values() -> None:
    forwarded = ForwardedHeaders("app_session=secret-cookie", "Bearer secret-token")

    shown = repr(forwarded) + str(forwarded)

    assert "secret" not in shown and "Cookie" in shown and "Authorization" in shown

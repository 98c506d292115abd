"""The dev-only demo routes (`notify-server dev`): they sign anyone in and emit anything, so a foreign
page must not be able to use them, and `dev` says loudly when it listens beyond loopback."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from notify_server.core.settings import Settings
from notify_server.web.app import create_app
from notify_server.web.demo import add_demo_routes
from tests.processes import free_port

ALLOWED = "http://localhost:8080"  # in config.yaml's websocket.allowed_origins


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings) -> Any:
    return await aiohttp_client(create_app(settings, node_id="demo", extra_routes=add_demo_routes))


async def test_sign_in_from_the_page_itself_works(demo: Any) -> None:
    response = await demo.post("/dev/session", json={"user_id": "alice"}, headers={"Origin": ALLOWED})
    assert response.status == 200
    assert "session_id" in response.cookies


@pytest.mark.parametrize("path, body", [("/dev/session", {"user_id": "mallory"}), ("/dev/logout", {}),
                                        ("/dev/emit", {"event_type": "CLAIM_REJECTED", "to": ["alice"]})])
async def test_a_foreign_origin_is_refused(demo: Any, path: str, body: dict[str, Any]) -> None:
    response = await demo.post(path, json=body, headers={"Origin": "https://evil.example"})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "forbidden"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_a_body_a_cross_site_form_could_send_is_refused(demo: Any, content_type: str) -> None:
    """A form posts without a CORS preflight; JSON cannot be sent that way."""
    response = await demo.post("/dev/session", data='{"user_id": "mallory"}', headers={"Content-Type": content_type})
    assert response.status == 415
    assert "session_id" not in response.cookies


def test_dev_on_a_non_loopback_address_warns_loudly(python: str, cli_env: dict[str, str]) -> None:
    """The warning is the first thing dev says, before anything starts."""
    dev = subprocess.Popen(
        [python, "-m", "notify_server", "dev", "--host", "0.0.0.0", "--port", str(free_port())],
        env=cli_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        assert dev.stderr is not None
        first = dev.stderr.readline()
    finally:
        dev.terminate()
        dev.communicate(timeout=30)  # drains and closes the pipe
    assert "WARNING" in first and "0.0.0.0" in first and "not on loopback" in first

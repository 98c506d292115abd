"""Issue 12 end to end with real processes, as the README shows it: `notify-server apikey create`, a
`serve` node configured from the environment (API key digest, JWT secret), a `worker`; a producer
publishes over HTTP and a JWT-authenticated client sees the notification live and over REST."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from pathlib import Path

import aiohttp
import jwt

from tests.processes import REPO_ROOT, Process, free_port, wait_http_ok


def test_apikey_create_prints_a_new_key_once_and_its_digest(python: str, cli_env: dict[str, str]) -> None:
    runs = [subprocess.run([python, "-m", "notify_server", "apikey", "create"], env=cli_env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60) for _ in range(2)]

    keys = []
    for run in runs:
        assert run.returncode == 0, run.stderr
        key_line, digest_line = run.stdout.strip().splitlines()
        key, digest = key_line.removeprefix("key: "), digest_line.removeprefix("sha256: ")
        assert key.startswith("nsk_") and len(key) > 40
        assert digest == hashlib.sha256(key.encode()).hexdigest()
        assert "publish.api_key_hashes" in run.stderr and key not in run.stderr
        keys.append(key)
    assert keys[0] != keys[1]


async def test_publish_over_http_to_a_jwt_user_on_real_processes(
    python: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    created = subprocess.run([python, "-m", "notify_server", "apikey", "create"], env=cli_env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    key, digest = (line.split(": ", 1)[1] for line in created.stdout.strip().splitlines())
    secret = secrets.token_urlsafe(48)
    port = free_port()
    env = dict(cli_env, NOTIFY_WORKER_POLL_DELAY_S="0.01", NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S="2",
               NOTIFY_PUBLISH_API_KEY_HASHES=digest, NOTIFY_AUTH_METHODS="jwt,session",
               NOTIFY_AUTH_JWT_SECRET=secret, NOTIFY_AUTH_JWT_AUDIENCE="notify")
    node = Process(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    worker = Process(["worker"], env, tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    token = jwt.encode({"sub": "dana", "aud": "notify", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    try:
        await wait_http_ok(base + "/readyz", node)
        async with aiohttp.ClientSession() as http:
            tab = await http.ws_connect(base + "/ws/notifications", params={"token": token})
            assert (await tab.receive_json(timeout=5))["type"] == "unread_count"
            event = {"event_id": "http-1", "event_type": "PAYMENT_FAILED", "recipients": [{"user_id": "dana"}],
                     "data": {"last4": "4242"}}
            async with http.post(base + "/api/events", json=event, headers={"X-API-Key": key}) as response:
                assert response.status == 202, await response.text()
                assert await response.json() == {"event_id": "http-1", "status": "queued"}

            frame = await tab.receive_json(timeout=10)
            assert frame["type"] == "notification" and "4242" in frame["data"]["body"]
            async with http.get(base + "/api/notifications", headers={"Authorization": f"Bearer {token}"}) as listed:
                assert [item["event_type"] for item in (await listed.json())["items"]] == ["PAYMENT_FAILED"]
            await tab.close()
        for process in (node, worker):
            assert key not in process.output() and token not in process.output() and secret not in process.output()
    finally:
        node.stop()
        worker.stop()

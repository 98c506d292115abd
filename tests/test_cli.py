"""The command line (SPEC §3), run as a user would: `python -m notify_server …` in a subprocess.

Expected failures must print one clear line on stderr, exit non-zero, and show no traceback.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from notify_server.core.constants import SESSION_REVOKED_CHANNEL
from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore, hash_token
from tests.helpers import run_worker_burst
from tests.test_migrations import empty_database

REPO_ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/x"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"


def run_cli(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "notify_server", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of an expected failure (and proof there was no traceback)."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def argparse_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """argparse's own failure: usage, then one `error:` line, exit 2."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last
    return last


async def queued_jobs(redis_client: Redis, settings: Settings) -> int:
    return int(await redis_client.zcard(settings.queues.events))


async def stored_bodies(db_pool: Any) -> list[tuple[str, str, str]]:
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT event_id, recipient_id, body FROM notifications ORDER BY recipient_id")
        return [tuple(row) for row in await cur.fetchall()]


# ---------------------------------------------------------------- migrate / check


def test_migrate_applies_on_a_fresh_database_then_is_up_to_date(
    python: str, cli_env: dict[str, str], database_url: str
) -> None:
    with empty_database(database_url) as fresh_url:
        env = {**cli_env, "NOTIFY_DATABASE_URL": fresh_url}

        first = run_cli(python, env, "migrate")
        second = run_cli(python, env, "migrate")

    assert first.returncode == 0, first.stderr
    assert "0001_sessions" in first.stdout and "0002_notifications" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


def test_check_passes_against_the_test_stores(python: str, cli_env: dict[str, str]) -> None:
    result = run_cli(python, cli_env, "check")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_check_with_unreachable_database_fails_with_one_line(python: str, cli_env: dict[str, str]) -> None:
    result = run_cli(python, {**cli_env, "NOTIFY_DATABASE_URL": UNREACHABLE_DATABASE_URL}, "check")

    assert "Postgres" in one_error_line(result)


def test_check_with_unreachable_redis_fails_with_one_line(python: str, cli_env: dict[str, str]) -> None:
    result = run_cli(python, {**cli_env, "NOTIFY_REDIS_URL": UNREACHABLE_REDIS_URL}, "check")

    assert "Redis" in one_error_line(result)


def test_check_on_an_unmigrated_database_says_to_migrate(
    python: str, cli_env: dict[str, str], database_url: str
) -> None:
    with empty_database(database_url) as fresh_url:
        result = run_cli(python, {**cli_env, "NOTIFY_DATABASE_URL": fresh_url}, "check")

    assert "migrate" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "env", "service"),
    [
        (["migrate"], {"NOTIFY_DATABASE_URL": UNREACHABLE_DATABASE_URL}, "Postgres"),
        (["session", "create", "--user", "u1"], {"NOTIFY_DATABASE_URL": UNREACHABLE_DATABASE_URL}, "Postgres"),
        (["session", "revoke", "tok"], {"NOTIFY_DATABASE_URL": UNREACHABLE_DATABASE_URL}, "Postgres"),
        (["emit", "PAYMENT_FAILED", "--to", "u1", "--data", '{"last4": "4242"}'],
         {"NOTIFY_REDIS_URL": UNREACHABLE_REDIS_URL}, "Redis"),
    ],
    ids=["migrate", "session-create", "session-revoke", "emit"],
)
def test_unreachable_service_fails_with_one_line_naming_it(
    python: str, cli_env: dict[str, str], args: list[str], env: dict[str, str], service: str
) -> None:
    result = run_cli(python, {**cli_env, **env}, *args)

    assert service in one_error_line(result)


@pytest.mark.parametrize(
    "args", [["session", "create", "--user", "u1"], ["session", "revoke", "tok"]], ids=["create", "revoke"]
)
def test_session_command_on_an_unmigrated_database_says_to_migrate(
    python: str, cli_env: dict[str, str], database_url: str, args: list[str]
) -> None:
    with empty_database(database_url) as fresh_url:
        result = run_cli(python, {**cli_env, "NOTIFY_DATABASE_URL": fresh_url}, *args)

    assert "migrate" in one_error_line(result)


@pytest.mark.parametrize(
    "args",
    [["check"], ["migrate"], ["session", "create", "--user", "u1"], ["emit", "CLAIM_REJECTED", "--to", "u1"]],
    ids=["check", "migrate", "session-create", "emit"],
)
def test_missing_database_url_names_notify_database_url(
    python: str, cli_env: dict[str, str], args: list[str]
) -> None:
    env = {k: v for k, v in cli_env.items() if k != "NOTIFY_DATABASE_URL"}

    result = run_cli(python, env, *args)

    assert "NOTIFY_DATABASE_URL" in one_error_line(result)


def test_missing_redis_url_names_notify_redis_url(python: str, cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "NOTIFY_REDIS_URL"}

    assert "NOTIFY_REDIS_URL" in one_error_line(run_cli(python, env, "check"))


def test_invalid_config_env_value_names_the_key(python: str, cli_env: dict[str, str]) -> None:
    result = run_cli(python, {**cli_env, "NOTIFY_HEARTBEAT_INTERVAL_S": "-1"}, "check")

    assert "heartbeat.interval_s" in one_error_line(result)


def test_config_option_reads_that_file(python: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 70000\n", encoding="utf-8")

    result = run_cli(python, cli_env, "check", "--config", str(bad))

    assert "server.port" in one_error_line(result)


def test_notify_config_env_names_the_file(python: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("templates:\n  ONLY_ONE:\n    title: t\n    body: b\n", encoding="utf-8")

    result = run_cli(python, {**cli_env, "NOTIFY_CONFIG": str(good)}, "check")

    assert result.returncode == 0, result.stderr
    assert "1 templates" in result.stdout


def test_missing_config_file_fails_with_one_line(python: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(python, cli_env, "check", "--config", str(tmp_path / "absent.yaml"))

    assert "absent.yaml" in one_error_line(result)


def test_bad_port_is_an_argparse_error(python: str, cli_env: dict[str, str]) -> None:
    assert "--port" in argparse_error_line(run_cli(python, cli_env, "serve", "--port", "abc"))


def test_unknown_command_is_an_argparse_error(python: str, cli_env: dict[str, str]) -> None:
    argparse_error_line(run_cli(python, cli_env, "explode"))


# ---------------------------------------------------------------- session


async def test_session_create_prints_the_token_alone_and_it_validates(
    python: str, cli_env: dict[str, str], sessions: SessionStore
) -> None:
    result = run_cli(python, cli_env, "session", "create", "--user", "u1")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert token == token.strip() and token
    session = await sessions.validate(token)
    assert session is not None and session.user_id == "u1"


async def test_session_create_uses_ttl_s(python: str, cli_env: dict[str, str], db_pool: Any) -> None:
    result = run_cli(python, cli_env, "session", "create", "--user", "u1", "--ttl-s", "120")

    assert result.returncode == 0, result.stderr
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT extract(epoch FROM expires_at - created_at) FROM sessions WHERE token_hash = %s",
            (hash_token(result.stdout.strip()),),
        )
        (seconds,) = await cur.fetchone()
    assert 119 <= float(seconds) <= 121


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_session_create_refuses_a_bad_ttl(python: str, cli_env: dict[str, str], ttl: str) -> None:
    result = run_cli(python, cli_env, "session", "create", "--user", "u1", "--ttl-s", ttl)

    assert "--ttl-s" in argparse_error_line(result)


async def test_session_revoke_invalidates_the_token_and_announces_its_hash(
    python: str, cli_env: dict[str, str], sessions: SessionStore, redis_client: Redis
) -> None:
    new = await sessions.create("u1", ttl_s=60)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(SESSION_REVOKED_CHANNEL)
    try:
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"

        result = run_cli(python, cli_env, "session", "revoke", new.token)

        assert result.returncode == 0, result.stderr
        assert await sessions.validate(new.token) is None
        # Pub/sub channels are shared by every Redis db: other runs on this server may publish too.
        published: list[str] = []
        deadline = time.monotonic() + 10
        while hash_token(new.token) not in published and time.monotonic() < deadline:
            # None both on a quiet second and on a (skipped) subscribe reply: keep listening.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                published.append(message["data"].decode())
        assert hash_token(new.token) in published, published
        assert new.token not in published  # the hash, never the token
    finally:
        await pubsub.aclose()


async def test_session_revoke_of_an_unknown_or_revoked_token_fails_with_one_line(
    python: str, cli_env: dict[str, str], sessions: SessionStore
) -> None:
    new = await sessions.create("u1", ttl_s=60)
    await sessions.revoke(new.token)

    one_error_line(run_cli(python, cli_env, "session", "revoke", new.token))
    one_error_line(run_cli(python, cli_env, "session", "revoke", "never-issued"))


# ---------------------------------------------------------------- emit


async def test_emit_prints_the_event_id_and_a_worker_stores_it(
    python: str, cli_env: dict[str, str], settings: Settings, db_pool: Any
) -> None:
    result = run_cli(
        python, cli_env, "emit", "CLAIM_REJECTED", "--to", "u1", "--to", "u2",
        "--data", '{"provider_name": "Dr. Smith", "claim_id": "abc123"}',
    )

    assert result.returncode == 0, result.stderr
    [event_id] = result.stdout.splitlines()
    await run_worker_burst(settings)
    body = "Your claim for Dr. Smith has been rejected."
    assert await stored_bodies(db_pool) == [(event_id, "u1", body), (event_id, "u2", body)]


async def test_emit_uses_the_given_event_id_and_refuses_it_twice(
    python: str, cli_env: dict[str, str], settings: Settings, redis_client: Redis
) -> None:
    args = ["emit", "PAYMENT_FAILED", "--to", "u1", "--data", '{"last4": "4242"}', "--event-id", "evt-cli-1"]

    first = run_cli(python, cli_env, *args)
    second = run_cli(python, cli_env, *args)

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "evt-cli-1"
    assert "evt-cli-1" in one_error_line(second)
    assert await queued_jobs(redis_client, settings) == 1


@pytest.mark.parametrize(
    ("data", "expected"),
    [("{bad", "--data"), ("[1, 2]", "--data"), ('"text"', "--data")],
    ids=["not-json", "json-list", "json-string"],
)
async def test_emit_with_bad_data_json_fails_clearly(
    python: str, cli_env: dict[str, str], settings: Settings, redis_client: Redis, data: str, expected: str
) -> None:
    result = run_cli(python, cli_env, "emit", "CLAIM_REJECTED", "--to", "u1", "--data", data)

    assert expected in argparse_error_line(result)
    assert await queued_jobs(redis_client, settings) == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["NO_SUCH_EVENT", "--to", "u1"], "event_type"),
        (["CLAIM_REJECTED", "--to", "u1", "--data", '{"claim_id": "abc123"}'], "provider_name"),
        (["CLAIM_REJECTED", "--to", "", "--data", '{"provider_name": "p", "claim_id": "c"}'], "user_id"),
    ],
    ids=["unknown-event-type", "missing-template-variable", "empty-recipient"],
)
async def test_emit_of_an_event_the_worker_would_reject_fails_with_one_line_and_queues_nothing(
    python: str, cli_env: dict[str, str], settings: Settings, redis_client: Redis, args: list[str], expected: str
) -> None:
    result = run_cli(python, cli_env, "emit", *args)

    assert expected in one_error_line(result)
    assert await queued_jobs(redis_client, settings) == 0


def test_emit_without_recipient_is_an_argparse_error(python: str, cli_env: dict[str, str]) -> None:
    assert "--to" in argparse_error_line(run_cli(python, cli_env, "emit", "CLAIM_REJECTED"))

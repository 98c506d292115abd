"""The `notify-server` command line (SPEC §3). Expected failures print one line on stderr, exit 1."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg2
import psycopg2.errors
import redis.exceptions

from notify_server.auth.apikeys import new_api_key
from notify_server.auth.revocations import publish_revocation
from notify_server.core.logs import configure_logging
from notify_server.core.redis_client import redis_client
from notify_server.core.settings import ConfigError, Settings, load_settings
from notify_server.core.vapid_keys import VapidKeyError, application_server_key, create_key_file
from notify_server.ingest.events import EventRejected, parse_event
from notify_server.ingest.producer import EventProducer, NotReplicated
from notify_server.ops.dev import run_dev
from notify_server.ops.processes import cpu_count, reserve_port, run_group
from notify_server.ops.worker_program import WorkerProgram, WorkerProgramMissing, worker_program
from notify_server.storage.db import Database
from notify_server.storage.migrations import apply_migrations
from notify_server.storage.retention import Pruner, PruneResult
from notify_server.storage.sessions import SessionStore
from notify_server.transport.routing import PushRouter
from notify_server.web.app import run_node
from notify_server.web.health import check_postgres, check_redis

logger = logging.getLogger("notify.cli")


class CommandError(Exception):
    """An expected failure: its message is printed as the one line on stderr."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"claim_id\": \"abc\"}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notify-server", description="Real-time notification service.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="config file (default: NOTIFY_CONFIG or config.yaml)")
    common.add_argument("--log-format", choices=["text", "json"], help="overrides log.format")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", parents=[common], help="apply pending database migrations")

    serve = commands.add_parser("serve", parents=[common], help="run one server node (WebSocket + REST)")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=_port, help="overrides server.port")
    add_process_arguments(serve)

    worker = commands.add_parser("worker", parents=[common], help="run one event worker")
    add_process_arguments(worker)

    dev = commands.add_parser("dev", parents=[common], help="first run: embedded services, a node, a worker, a demo")
    dev.add_argument("--host", help="overrides server.host")
    dev.add_argument("--port", type=_port, help="overrides server.port")

    session = commands.add_parser("session", help="create or revoke a session")
    session_commands = session.add_subparsers(dest="session_command", required=True, metavar="ACTION")
    create = session_commands.add_parser("create", parents=[common], help="create a session, print its token")
    create.add_argument("--user", required=True, help="user id")
    create.add_argument("--ttl-s", type=_positive_int, help="lifetime in seconds (default: session.default_ttl_s)")
    revoke = session_commands.add_parser("revoke", parents=[common], help="revoke a session")
    revoke.add_argument("token")

    emit = commands.add_parser("emit", parents=[common], help="enqueue an event as a producer would")
    emit.add_argument("event_type")
    emit.add_argument("--to", action="append", required=True, metavar="USER_ID", help="recipient (repeatable)")
    emit.add_argument("--data", type=_json_object, default={}, metavar="JSON", help="template variables")
    emit.add_argument("--event-id", help="idempotency key (default: a new random id)")

    commands.add_parser("check", parents=[common], help="validate config, reach Postgres and Redis")

    prune = commands.add_parser("prune", parents=[common], help="delete what retention.* no longer keeps")
    prune.add_argument("--dry-run", action="store_true", help="count the rows it would delete, delete none")

    apikey = commands.add_parser("apikey", help="API keys of the HTTP publish API (POST /api/events)")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    apikey_commands.add_parser("create", parents=[common],
                               help="print a new key (once) and the SHA-256 to add to publish.api_key_hashes")
    _add_vapid_parser(commands, common)
    return parser


# ---------------------------------------------------------------- `notify-server vapid create --out PATH`
def _add_vapid_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    vapid = commands.add_parser("vapid", help="the VAPID key pair of Web Push")
    vapid_commands = vapid.add_subparsers(dest="vapid_command", required=True, metavar="ACTION")
    create = vapid_commands.add_parser("create", parents=[common],
                                       help="write a new private key (mode 0600), print the public key")
    create.add_argument("--out", required=True, metavar="PATH", help="where to write the PEM private key")


def cmd_vapid(settings: Settings, args: argparse.Namespace) -> int:
    """Writes the private key to --out (never over an existing file) and prints the public key, base64url,
    alone on stdout (the browser's applicationServerKey)."""
    try:
        key = create_key_file(args.out)
    except VapidKeyError as exc:
        raise CommandError(str(exc)) from None
    print(application_server_key(key))
    print(f"notify-server: private key written to {args.out}; set web_push.vapid_private_key_file to it, "
          "web_push.subject to a mailto: or https:// contact, and web_push.enabled: true", file=sys.stderr)
    return 0


CONFIG_FREE = {"vapid"}  # a new key is needed before the config can name it: no config is read


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if overrides:
        settings = settings.replace(server=overrides)
    if args.log_format:
        settings = settings.replace(log={"format": args.log_format})
    return settings


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_services()
    applied = apply_migrations(settings.database.url)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ": up to date"))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_services()
    where = f"{settings.server.host}:{settings.server.port}"
    try:
        if args.processes > 1:
            return serve_processes(settings, args)
        run_node(as_process(settings, args.process_index), reuse_port=args.process_index is not None)
    except OSError as exc:  # bind: unknown host, address in use, no permission
        raise CommandError(f"cannot listen on {where} (server.host/server.port): {exc.strerror or exc}") from None
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    if args.processes > 1:
        settings.require_services()
        return worker_processes(settings, args)
    settings.require_services()
    return _worker_program().run(as_process(settings, args.process_index))


# ---------------------------------------------------------------- several processes
# --processes N, supervised by notify_server.ops.processes


def _processes(text: str) -> int:
    if text == "auto":
        return cpu_count()
    return _positive_int(text)


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=_processes, default=1, metavar="N",
                        help="run N supervised processes (auto: one per core); default 1")
    parser.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)  # set for children


def as_process(settings: Settings, index: int | None) -> Settings:
    """A child of a group: node id `<server.node_id>-<index>` when one is configured (else a random one),
    its own metrics port `<metrics_port> + index` for nodes and workers alike (when one is configured)."""
    if index is None:
        return settings
    server: dict[str, Any] = {}
    if settings.server.node_id:
        server["node_id"] = f"{settings.server.node_id}-{index}"
    if settings.server.metrics_port:
        server["metrics_port"] = settings.server.metrics_port + index
    worker = {"metrics_port": settings.worker.metrics_port + index} if settings.worker.metrics_port else {}
    return settings.replace(server=server, worker=worker)


def _common_child_args(args: argparse.Namespace) -> list[str]:
    return ([f"--config={args.config}"] if args.config else []) + (
        [f"--log-format={args.log_format}"] if args.log_format else [])


def serve_processes(settings: Settings, args: argparse.Namespace) -> int:
    """The port is bound here first (SO_REUSEPORT, never listening): a port in use fails before any child
    starts, port 0 becomes one port for all, and no other program takes it between two restarts."""
    with reserve_port(settings.server.host, settings.server.port) as port:
        logger.info("serving on %s:%d with %d node processes", settings.server.host, port, args.processes)
        child_args = [*_common_child_args(args), f"--host={settings.server.host}", f"--port={port}"]
        return run_group("serve", child_args, args.processes, stop_timeout_s=settings.server.shutdown_timeout_s + 10)


def worker_processes(settings: Settings, args: argparse.Namespace) -> int:
    logger.info("running %d worker processes", args.processes)
    return run_group("worker", _common_child_args(args), args.processes,
                     stop_timeout_s=settings.worker.job_timeout_s + 10)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    return run_dev(settings, _worker_program().in_process)


def _worker_program() -> WorkerProgram:
    try:
        return worker_program()
    except WorkerProgramMissing as exc:
        raise CommandError(str(exc)) from None


async def _with_db(settings: Settings, action: Any) -> Any:
    db = Database(dataclasses.replace(settings.database, pool_min_size=1, pool_max_size=2))
    try:
        return await action(db)
    finally:
        await db.close()


def cmd_session(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_services()
    if args.session_command == "create":
        ttl_s = args.ttl_s or settings.session.default_ttl_s

        async def create(db: Any) -> Any:
            return await SessionStore(db).create(args.user, ttl_s)

        new = asyncio.run(_with_db(settings, create))
        print(new.token)
        return 0

    async def revoke(db: Any) -> str | None:
        token_hash = await SessionStore(db).revoke(args.token)
        if token_hash is not None:
            client = redis_client(settings.redis)
            try:
                await publish_revocation(client, token_hash)
            finally:
                await client.aclose()
        return token_hash

    if asyncio.run(_with_db(settings, revoke)) is None:
        raise CommandError("no live session has this token (unknown, expired or already revoked)")
    print("revoked", file=sys.stderr)
    return 0


def cmd_emit(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_services()
    event = {
        "event_id": args.event_id or f"evt-{uuid.uuid4().hex}",
        "event_type": args.event_type,
        "recipients": [{"user_id": user_id} for user_id in args.to],
        "data": args.data,
    }
    try:
        parse_event(event, settings.templates)  # the worker's own check, before anything is queued
    except EventRejected as exc:
        raise CommandError(f"event refused: {exc}") from None

    async def enqueue() -> Any:
        async with EventProducer.from_settings(settings) as producer:
            return await producer.enqueue_event(event)

    try:
        job = asyncio.run(enqueue())
    except NotReplicated as exc:
        raise CommandError(f"event {event['event_id']} queued but not confirmed by enough Redis replicas "
                           f"({exc.acked} of {exc.required}): run emit again with --event-id "
                           f"{event['event_id']}") from None
    if job is None:
        raise CommandError(f"event {event['event_id']} is already queued or was processed recently")
    print(event["event_id"])
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_services()

    async def check() -> tuple[str | None, tuple[str | None, list[str]]]:
        return await asyncio.gather(check_postgres(settings.database.url), check_redis(settings.redis))

    postgres_problem, (redis_problem, warnings) = asyncio.run(check())
    problems = [problem for problem in (postgres_problem, redis_problem) if problem]
    if problems:
        raise CommandError("; ".join(problems))
    for warning in warnings:  # after the problems are fixed: one line at a time
        print(f"notify-server: warning: {warning}", file=sys.stderr)
    print(f"ok: config valid ({len(settings.templates)} templates), postgres migrated and redis reachable")
    return 0


def cmd_apikey(settings: Settings, args: argparse.Namespace) -> int:
    """Prints the key and its digest on stdout (`key: …`, `sha256: …`); the key is stored nowhere."""
    key, digest = new_api_key()
    print(f"key: {key}")
    print(f"sha256: {digest}")
    print("notify-server: give the key to the producer now (it is not shown again) and add the sha256 to "
          "publish.api_key_hashes (or NOTIFY_PUBLISH_API_KEY_HASHES, comma-separated) on every node",
          file=sys.stderr)
    return 0


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    """Prints `deleted read=N unread=N archived=N sessions=N` (`would delete …` with --dry-run) on stdout."""
    settings.require_services()

    async def prune() -> PruneResult | None:
        redis = redis_client(settings.redis)
        db = Database(dataclasses.replace(settings.database, pool_min_size=1, pool_max_size=2))
        try:
            pruner = Pruner(db, settings.retention, push_counts=PushRouter.writer(redis, settings).push_unread_counts)
            return await (pruner.count() if args.dry_run else pruner.prune())
        finally:
            await db.close()
            await redis.aclose()

    result = asyncio.run(prune())
    if result is None:
        raise CommandError("another prune is running (a worker or another `prune`); nothing deleted")
    print(("would delete " if result.dry_run else "deleted ") + result.summary())
    return 0


COMMANDS = {
    "migrate": cmd_migrate,
    "serve": cmd_serve,
    "worker": cmd_worker,
    "dev": cmd_dev,
    "session": cmd_session,
    "emit": cmd_emit,
    "check": cmd_check,
    "prune": cmd_prune,
    "apikey": cmd_apikey,
    "vapid": cmd_vapid,  # issue 20
}


def use_uvloop() -> None:
    """uvloop's event loop, where installed: the same asyncio code, markedly less CPU per socket and
    per Redis or Postgres round trip (docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "worker", "dev"):
        use_uvloop()
    try:
        settings = Settings() if args.command in CONFIG_FREE else _settings(args)
        configure_logging(settings.log.level, settings.log.format)
        return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"notify-server: config error: {exc}", file=sys.stderr)
    except CommandError as exc:
        print(f"notify-server: {exc}", file=sys.stderr)
    except psycopg2.errors.UndefinedTable:
        print("notify-server: the database is not migrated: run `notify-server migrate`", file=sys.stderr)
    except psycopg2.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"notify-server: cannot reach Postgres: {first_line}", file=sys.stderr)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        print(f"notify-server: cannot reach Redis: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1

"""Configuration: YAML file + NOTIFY_* environment -> marshmallow validation -> frozen dataclasses.

Loaded once by the CLI (or a test) and passed explicitly to the app and the worker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from notify_server.constants import PRIORITIES
from notify_server.schemas import first_error
from notify_server.templates import Template, TemplateError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.yaml"

# Short environment names that SPEC §4 promises besides NOTIFY_<SECTION>_<KEY>.
ENV_ALIASES = {
    "NOTIFY_DATABASE_URL": ("database", "url"),
    "NOTIFY_REDIS_URL": ("redis", "url"),
    "NOTIFY_HOST": ("server", "host"),
    "NOTIFY_PORT": ("server", "port"),
}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


# ---------------------------------------------------------------- dataclasses (what the code reads)


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""
    pool_min_size: int = 1
    pool_max_size: int = 10


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    url: str = ""


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    node_id: str = ""  # empty: a random id per process
    shutdown_timeout_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class HeartbeatSettings:
    interval_s: float = 30.0
    timeout_s: float = 10.0


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    recheck_interval_s: float = 60.0
    default_ttl_s: int = 86400


@dataclasses.dataclass(frozen=True)
class WebSocketSettings:
    allowed_origins: tuple[str, ...] = ("http://localhost:8080", "http://127.0.0.1:8080")
    max_frame_bytes: int = 4096


@dataclasses.dataclass(frozen=True)
class LimitSettings:
    max_connections_per_user: int = 20
    send_queue_max: int = 256
    list_max: int = 100
    request_max_bytes: int = 16384


@dataclasses.dataclass(frozen=True)
class QueueSettings:
    events: str = "notify:events"


@dataclasses.dataclass(frozen=True)
class PushSettings:
    job_expiry_s: float = 30.0
    stream_maxlen: int = 10000
    read_batch: int = 256
    read_block_ms: int = 1000


@dataclasses.dataclass(frozen=True)
class PresenceSettings:
    ttl_s: int = 30
    refresh_interval_s: float = 10.0


@dataclasses.dataclass(frozen=True)
class RecoverySettings:
    max_replay: int = 100


@dataclasses.dataclass(frozen=True)
class WorkerSettingsConfig:
    poll_delay_s: float = 0.25
    batch_max: int = 200
    max_jobs: int = 50
    job_timeout_s: float = 60.0
    max_tries: int = 20
    retry_backoff_max_s: float = 60.0
    metrics_port: int = 0  # 0: no metrics endpoint


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    format: str = "text"


@dataclasses.dataclass(frozen=True)
class DevSettings:
    data_dir: str = ".notify-dev"


@dataclasses.dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    server: ServerSettings = ServerSettings()
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    session: SessionSettings = SessionSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    limits: LimitSettings = LimitSettings()
    queues: QueueSettings = QueueSettings()
    push: PushSettings = PushSettings()
    presence: PresenceSettings = PresenceSettings()
    recovery: RecoverySettings = RecoverySettings()
    worker: WorkerSettingsConfig = WorkerSettingsConfig()
    log: LogSettings = LogSettings()
    dev: DevSettings = DevSettings()
    templates: Mapping[str, Template] = dataclasses.field(default_factory=dict)

    def replace(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some keys of some sections changed: `s.replace(heartbeat={"interval_s": 1})`."""
        changed = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changed)

    def require_services(self) -> None:
        """Stop with a clear message when the database or Redis URL is missing."""
        if not self.database.url:
            raise ConfigError("database.url is empty: set it in the config or NOTIFY_DATABASE_URL")
        if not self.redis.url:
            raise ConfigError("redis.url is empty: set it in the config or NOTIFY_REDIS_URL")


# ---------------------------------------------------------------- schemas (what the file may say)

_positive = validate.Range(min=0, min_inclusive=False)
_non_negative = validate.Range(min=0)


class _Section(Schema):
    class Meta:
        unknown = RAISE

    dataclass: type = object

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Any:
        return self.dataclass(**data)


def _url(schemes: tuple[str, ...]) -> validate.Validator:
    def check(value: str) -> None:
        if value and not value.startswith(tuple(s + "://" for s in schemes)):
            raise ValidationError(f"must be empty or start with one of {', '.join(s + '://' for s in schemes)}")

    return check


class DatabaseSchema(_Section):
    dataclass = DatabaseSettings
    url = fields.String(validate=_url(("postgresql", "postgres")))
    pool_min_size = fields.Integer(validate=_non_negative)
    pool_max_size = fields.Integer(validate=validate.Range(min=1))

    @validates_schema
    def _sizes(self, data: dict[str, Any], **_: Any) -> None:
        low = data.get("pool_min_size", DatabaseSettings.pool_min_size)
        high = data.get("pool_max_size", DatabaseSettings.pool_max_size)
        if low > high:
            raise ValidationError("must not exceed pool_max_size", "pool_min_size")


class RedisSchema(_Section):
    dataclass = RedisSettings
    url = fields.String(validate=_url(("redis", "rediss", "unix")))


class ServerSchema(_Section):
    dataclass = ServerSettings
    host = fields.String(validate=validate.Length(min=1))
    port = fields.Integer(validate=validate.Range(min=0, max=65535))
    node_id = fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.-]{0,64}$", error="letters, digits, _.- only"))
    shutdown_timeout_s = fields.Float(validate=_positive)


class HeartbeatSchema(_Section):
    dataclass = HeartbeatSettings
    interval_s = fields.Float(validate=_positive)
    timeout_s = fields.Float(validate=_positive)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Any:
        # The pong must come before the next ping: timeout_s is capped at interval_s (so
        # NOTIFY_HEARTBEAT_INTERVAL_S=2 alone is enough).
        interval = data.get("interval_s", HeartbeatSettings.interval_s)
        data["timeout_s"] = min(data.get("timeout_s", HeartbeatSettings.timeout_s), interval)
        return HeartbeatSettings(**data)


class SessionSchema(_Section):
    dataclass = SessionSettings
    recheck_interval_s = fields.Float(validate=_positive)
    default_ttl_s = fields.Integer(validate=validate.Range(min=1))


class WebSocketSchema(_Section):
    dataclass = WebSocketSettings
    allowed_origins = fields.List(fields.String(validate=validate.Length(min=1)))
    max_frame_bytes = fields.Integer(validate=validate.Range(min=64))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Any:
        if "allowed_origins" in data:
            data["allowed_origins"] = tuple(o.rstrip("/") for o in data["allowed_origins"])
        return WebSocketSettings(**data)


class LimitSchema(_Section):
    dataclass = LimitSettings
    max_connections_per_user = fields.Integer(validate=validate.Range(min=1))
    send_queue_max = fields.Integer(validate=validate.Range(min=1))
    list_max = fields.Integer(validate=validate.Range(min=1, max=1000))
    request_max_bytes = fields.Integer(validate=validate.Range(min=256))


class QueueSchema(_Section):
    dataclass = QueueSettings
    events = fields.String(validate=validate.Length(min=1, max=200))


class PushSchema(_Section):
    dataclass = PushSettings
    job_expiry_s = fields.Float(validate=_positive)
    stream_maxlen = fields.Integer(validate=validate.Range(min=10))
    read_batch = fields.Integer(validate=validate.Range(min=1, max=10000))
    read_block_ms = fields.Integer(validate=validate.Range(min=1, max=60000))


class PresenceSchema(_Section):
    dataclass = PresenceSettings
    ttl_s = fields.Integer(validate=validate.Range(min=1))
    refresh_interval_s = fields.Float(validate=_positive)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Any:
        # A refresh slower than the expiry would let live users look offline between refreshes:
        # cap it at a third of the TTL (so NOTIFY_PRESENCE_TTL_S=5 alone is enough).
        ttl = data.get("ttl_s", PresenceSettings.ttl_s)
        refresh = data.get("refresh_interval_s", PresenceSettings.refresh_interval_s)
        data["refresh_interval_s"] = min(refresh, ttl / 3)
        return PresenceSettings(**data)


class RecoverySchema(_Section):
    dataclass = RecoverySettings
    max_replay = fields.Integer(validate=validate.Range(min=0, max=10000))


class WorkerSchema(_Section):
    dataclass = WorkerSettingsConfig
    poll_delay_s = fields.Float(validate=_positive)
    batch_max = fields.Integer(validate=validate.Range(min=1, max=5000))
    max_jobs = fields.Integer(validate=validate.Range(min=1))
    job_timeout_s = fields.Float(validate=_positive)
    max_tries = fields.Integer(validate=validate.Range(min=1))
    retry_backoff_max_s = fields.Float(validate=_positive)
    metrics_port = fields.Integer(validate=validate.Range(min=0, max=65535))


class LogSchema(_Section):
    dataclass = LogSettings
    level = fields.String(validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]))
    format = fields.String(validate=validate.OneOf(["text", "json"]))


class DevSchema(_Section):
    dataclass = DevSettings
    data_dir = fields.String(validate=validate.Length(min=1))


class TemplateSchema(Schema):
    class Meta:
        unknown = RAISE

    title = fields.String(required=True, validate=validate.Length(min=1, max=500))
    body = fields.String(required=True, validate=validate.Length(min=1, max=5000))
    priority = fields.String(load_default="NORMAL", validate=validate.OneOf(PRIORITIES))
    action_url = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


SECTION_SCHEMAS: dict[str, type[_Section]] = {
    "database": DatabaseSchema,
    "redis": RedisSchema,
    "server": ServerSchema,
    "heartbeat": HeartbeatSchema,
    "session": SessionSchema,
    "websocket": WebSocketSchema,
    "limits": LimitSchema,
    "queues": QueueSchema,
    "push": PushSchema,
    "presence": PresenceSchema,
    "recovery": RecoverySchema,
    "worker": WorkerSchema,
    "log": LogSchema,
    "dev": DevSchema,
}


# ---------------------------------------------------------------- loading


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """NOTIFY_<SECTION>_<KEY> and the short aliases, as {section: {key: raw string}}."""
    found: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith("NOTIFY_") or name == "NOTIFY_CONFIG":
            continue
        target = ENV_ALIASES.get(name)
        if target is None:
            rest = name[len("NOTIFY_") :].lower()
            section = next((s for s in SECTION_SCHEMAS if rest.startswith(s + "_")), None)
            if section is None:
                continue  # not ours (NOTIFY_TEST_*, …)
            key = rest[len(section) + 1 :]
            if key not in SECTION_SCHEMAS[section]().fields:
                raise ConfigError(f"{name}: unknown key {section}.{key}")
            target = (section, key)
        section, key = target
        field = SECTION_SCHEMAS[section]().fields[key]
        found.setdefault(section, {})[key] = _env_value(f"{section}.{key} ({name})", value, field)
    return found


def _env_value(where: str, raw: str, field: fields.Field) -> Any:
    if isinstance(field, fields.List):
        raw = raw.strip()
        if raw.startswith("["):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = None
            if not isinstance(value, list):
                raise ConfigError(f"{where}: not a valid list (write a,b or [a, b])")
            return value
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw  # marshmallow coerces numbers and booleans from strings


def load_templates(raw: Any) -> dict[str, Template]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("templates: must be a mapping of event type to template")
    templates: dict[str, Template] = {}
    for event_type, body in raw.items():
        if not isinstance(event_type, str) or not event_type:
            raise ConfigError(f"templates: event type {event_type!r} must be a non-empty string")
        if not isinstance(body, dict):
            raise ConfigError(f"templates.{event_type}: must be a mapping with title and body")
        try:
            data = TemplateSchema().load(body)
        except ValidationError as exc:
            raise ConfigError(first_error(exc.messages, f"templates.{event_type}")) from None
        try:
            templates[event_type] = Template.compile(event_type, **data)
        except TemplateError as exc:
            raise ConfigError(f"templates.{event_type}.{exc.field}: {exc}") from None
    return templates


def settings_from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed config (plus environment overrides) into Settings; raises ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config: the file must hold a mapping of sections")
    raw = dict(raw)
    unknown = sorted(set(raw) - set(SECTION_SCHEMAS) - {"templates"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section")
    overrides = _env_overrides(os.environ if environ is None else environ)
    sections: dict[str, Any] = {}
    for name, schema in SECTION_SCHEMAS.items():
        data = raw.get(name) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{name}: must be a mapping")
        data = {**data, **overrides.get(name, {})}
        try:
            sections[name] = schema().load(data)
        except ValidationError as exc:
            raise ConfigError(first_error(exc.messages, name)) from None
    return Settings(**sections, templates=load_templates(raw.get("templates")))


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (argument, NOTIFY_CONFIG, or the repository's config.yaml) and validate it."""
    env = os.environ if environ is None else environ
    config_path = Path(path or env.get("NOTIFY_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {config_path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {config_path}{where}: not valid YAML") from None
    return settings_from_mapping(raw, env)

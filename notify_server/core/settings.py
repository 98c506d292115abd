"""Configuration: owns every setting (declared once, as a frozen dataclass field) and loads them.

Each section is a frozen dataclass; each key is declared with `setting(default, validate=...)`.
The marshmallow schema that checks the YAML file and the NOTIFY_* environment is derived from those
declarations (`_schema_for`), so a key is declared in one place here and documented in config.yaml
(tests/test_settings.py holds the two together). Loaded once by the CLI (or a test) and passed
explicitly to the app and the worker.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

from notify_server.core.constants import PRIORITIES
from notify_server.core.identity import AUTH_METHODS, JWT, PROXY
from notify_server.core.jwt_keys import (
    HMAC_ALGORITHMS,
    JWT_ALGORITHMS,
    KeyFileError,
    hmac_secret_problem,
    load_public_key,
)
from notify_server.core.push_endpoints import parse_entry
from notify_server.core.schemas import first_error
from notify_server.core.templates import DEFAULT_CATEGORY, Template, TemplateError
from notify_server.core.vapid_keys import VapidKeyError, load_private_key

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config.yaml"

# Short environment names that SPEC §4 promises besides NOTIFY_<SECTION>_<KEY>.
ENV_ALIASES = {
    "NOTIFY_DATABASE_URL": ("database", "url"),
    "NOTIFY_REDIS_URL": ("redis", "url"),
    "NOTIFY_HOST": ("server", "host"),
    "NOTIFY_PORT": ("server", "port"),
}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


# ---------------------------------------------------------------- how a key is declared

_T = TypeVar("_T")
_S = TypeVar("_S")
Validator = Callable[[Any], Any]
Validators = Validator | Sequence[Validator] | None


def setting(
    default: _T, *, validate: Validators = None, item_validate: Validators = None, secret: bool = False, **options: Any
) -> _T:
    """One key of a section: its default and how a value from the file or the environment is checked.

    validate: marshmallow validator(s) for the value. item_validate: validator(s) for each item of a
    `tuple[str, ...]` key. options: any other keyword of the marshmallow field (e.g. allow_nan=True).
    The field itself follows the annotation: int, float, str, bool or tuple[str, ...].
    secret=True keeps the value out of the section's repr (a JWT secret must not reach a log line).
    """
    metadata = {"validate": validate, "item_validate": item_validate, "options": options}
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


_AFTER_LOAD: dict[type, Callable[[Any], Any]] = {}


def after_load(section: type[_S]) -> Callable[[Callable[[_S], _S]], Callable[[_S], _S]]:
    """Register a section's rule that spans keys (a cap, a cross check); it runs once every key is valid.

    The hook gets the loaded section and returns it, changed with dataclasses.replace if need be, or
    raises ValidationError(message, key) to refuse the config under that key's name. Like the
    per-key checks it applies to loaded config only, not to Settings.replace().
    """

    def register(hook: Callable[[_S], _S]) -> Callable[[_S], _S]:
        _AFTER_LOAD[section] = hook
        return hook

    return register


_positive = validate.Range(min=0, min_inclusive=False)
_non_negative = validate.Range(min=0)
_port = validate.Range(min=0, max=65535)


def _url(*schemes: str) -> Validator:
    """Empty (not configured) or a URL with one of these schemes."""
    prefixes = tuple(scheme + "://" for scheme in schemes)

    def check(value: str) -> None:
        if value and not value.startswith(prefixes):
            raise ValidationError(f"must be empty or start with one of {', '.join(prefixes)}")

    return check


# ---------------------------------------------------------------- sections (what the code reads)


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting("", validate=_url("postgresql", "postgres"))
    pool_min_size: int = setting(1, validate=_non_negative)
    pool_max_size: int = setting(10, validate=validate.Range(min=1))


@after_load(DatabaseSettings)
def _pool_sizes_in_order(section: DatabaseSettings) -> DatabaseSettings:
    if section.pool_min_size > section.pool_max_size:
        raise ValidationError("must not exceed pool_max_size", "pool_min_size")
    return section


def _host_port(value: str) -> None:
    """`host:port` (a sentinel's address); an IPv6 host in brackets: `[::1]:26379`."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", value)
    if match is None or not 0 < int(match[2]) <= 65535:
        raise ValidationError("must be host:port, e.g. 10.0.0.5:26379")


# ---------------------------------------------------------------- Redis: Sentinel and replica acknowledgements
@dataclasses.dataclass(frozen=True)
class RedisSettings:
    url: str = setting("", validate=_url("redis", "rediss", "unix"))
    sentinels: tuple[str, ...] = setting((), item_validate=_host_port)  # empty: url names the server itself
    sentinel_master: str = setting("mymaster", validate=validate.Length(min=1, max=200))
    sentinel_password: str = setting("", secret=True)
    min_replicas_acked: int = setting(0, validate=validate.Range(min=0, max=100))
    replica_ack_timeout_ms: int = setting(1000, validate=validate.Range(min=1, max=60000))


@after_load(RedisSettings)
def _sentinels_need_a_network_url(section: RedisSettings) -> RedisSettings:
    # With sentinels the URL gives db, password and TLS; a socket path has no place there.
    if section.sentinels and section.url.startswith("unix://"):
        raise ValidationError("must be redis:// or rediss:// when redis.sentinels is set", "url")
    return section


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", validate=validate.Length(min=1))
    port: int = setting(8080, validate=_port)
    node_id: str = setting(  # empty: a random id per process
        "", validate=validate.Regexp(r"^[A-Za-z0-9_.-]{0,64}$", error="letters, digits, _.- only")
    )
    shutdown_timeout_s: float = setting(5.0, validate=_positive)
    metrics_port: int = setting(0, validate=_port)  # 0: /metrics only on the main port (issue 21)


@after_load(ServerSettings)
def _metrics_port_apart(section: ServerSettings) -> ServerSettings:
    if section.metrics_port and section.metrics_port == section.port:
        raise ValidationError("must differ from server.port (0 = none)", "metrics_port")
    return section


@dataclasses.dataclass(frozen=True)
class HeartbeatSettings:
    interval_s: float = setting(30.0, validate=_positive)
    timeout_s: float = setting(10.0, validate=_positive)


@after_load(HeartbeatSettings)
def _timeout_within_interval(section: HeartbeatSettings) -> HeartbeatSettings:
    # The pong must come before the next ping: timeout_s is capped at interval_s (so
    # NOTIFY_HEARTBEAT_INTERVAL_S=2 alone is enough).
    return dataclasses.replace(section, timeout_s=min(section.timeout_s, section.interval_s))


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    recheck_interval_s: float = setting(60.0, validate=_positive)
    default_ttl_s: int = setting(86400, validate=validate.Range(min=1))


@dataclasses.dataclass(frozen=True)
class WebSocketSettings:
    allowed_origins: tuple[str, ...] = setting(
        ("http://localhost:8080", "http://127.0.0.1:8080"), item_validate=validate.Length(min=1)
    )
    max_frame_bytes: int = setting(4096, validate=validate.Range(min=64))
    # In-band refresh frames (notify_server.web.refresh), per socket: refresh_burst back to back, then one
    # more each refresh_interval_s; over that the socket is closed with 4029.
    refresh_burst: int = setting(5, validate=validate.Range(min=1, max=1000))
    refresh_interval_s: float = setting(10.0, validate=_positive)


@after_load(WebSocketSettings)
def _origins_without_trailing_slash(section: WebSocketSettings) -> WebSocketSettings:
    # An Origin header never ends in "/": "http://host/" in the config means "http://host".
    return dataclasses.replace(section, allowed_origins=tuple(o.rstrip("/") for o in section.allowed_origins))


@dataclasses.dataclass(frozen=True)
class LimitSettings:
    max_connections_per_user: int = setting(20, validate=validate.Range(min=1))
    send_queue_max: int = setting(256, validate=validate.Range(min=1))
    list_max: int = setting(100, validate=validate.Range(min=1, max=1000))
    request_max_bytes: int = setting(16384, validate=validate.Range(min=256))


@dataclasses.dataclass(frozen=True)
class QueueSettings:
    events: str = setting("notify:events", validate=validate.Length(min=1, max=200))


@dataclasses.dataclass(frozen=True)
class PushSettings:
    job_expiry_s: float = setting(30.0, validate=_positive)
    stream_maxlen: int = setting(10000, validate=validate.Range(min=10))
    read_batch: int = setting(256, validate=validate.Range(min=1, max=10000))
    read_block_ms: int = setting(1000, validate=validate.Range(min=1, max=60000))


@dataclasses.dataclass(frozen=True)
class PresenceSettings:
    ttl_s: int = setting(30, validate=validate.Range(min=1))
    refresh_interval_s: float = setting(10.0, validate=_positive)


@after_load(PresenceSettings)
def _refresh_well_within_ttl(section: PresenceSettings) -> PresenceSettings:
    # A refresh slower than the expiry would let live users look offline between refreshes:
    # cap it at a third of the TTL (so NOTIFY_PRESENCE_TTL_S=5 alone is enough).
    return dataclasses.replace(section, refresh_interval_s=min(section.refresh_interval_s, section.ttl_s / 3))


@dataclasses.dataclass(frozen=True)
class RecoverySettings:
    max_replay: int = setting(100, validate=validate.Range(min=0, max=10000))


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    """How long old rows are kept (notify_server.storage.retention) and how often a worker prunes them."""

    read_days: int = setting(90, validate=_non_negative)  # 0: read ones go at the next prune
    unread_days: int = setting(365, validate=_non_negative)  # 0: unread ones are never deleted
    sessions_days: int = setting(7, validate=_non_negative)
    interval_s: float = setting(3600.0, validate=_non_negative)  # 0: workers never prune
    batch_rows: int = setting(5000, validate=validate.Range(min=1, max=100000))


@dataclasses.dataclass(frozen=True)
class WorkerSettingsConfig:
    poll_delay_s: float = setting(0.25, validate=_positive)
    batch_max: int = setting(200, validate=validate.Range(min=1, max=5000))
    job_timeout_s: float = setting(60.0, validate=_positive)
    max_tries: int = setting(20, validate=validate.Range(min=1))
    retry_backoff_max_s: float = setting(60.0, validate=_positive)
    metrics_port: int = setting(0, validate=_port)  # 0: no metrics endpoint


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    """How users are authenticated, on the WebSocket and the user REST API alike (README "Authentication")."""

    methods: tuple[str, ...] = setting(
        ("session",), validate=validate.Length(min=1), item_validate=validate.OneOf(AUTH_METHODS)
    )
    jwt_algorithms: tuple[str, ...] = setting(
        ("HS256",), validate=validate.Length(min=1), item_validate=validate.OneOf(JWT_ALGORITHMS)
    )
    jwt_secret: str = setting("", secret=True)
    jwt_public_key_file: str = setting("")
    jwt_audience: str = setting("")
    jwt_issuer: str = setting("")
    jwt_user_claim: str = setting("sub", validate=validate.Length(min=1, max=200))
    jwt_leeway_s: float = setting(0.0, validate=validate.Range(min=0, max=300))
    proxy_url: str = setting("", validate=_url("http", "https"))
    proxy_timeout_s: float = setting(2.0, validate=validate.Range(min=0, max=60, min_inclusive=False))
    proxy_cookies: tuple[str, ...] = setting((), item_validate=validate.Length(min=1))
    # Calls to proxy_url on behalf of incoming connects, requests and refreshes (never the re-checks of
    # open sockets): per client address (over: 4029 / 429) and per node (over: 1013 / 503). 0 = no limit.
    proxy_client_burst: int = setting(30, validate=_non_negative)
    proxy_client_per_s: float = setting(5.0, validate=_non_negative)
    proxy_node_burst: int = setting(500, validate=_non_negative)
    proxy_node_per_s: float = setting(250.0, validate=_non_negative)


@after_load(AuthSettings)
def _auth_methods_have_their_keys(section: AuthSettings) -> AuthSettings:
    # A method listed without what it needs would refuse every user at run time: refuse the config.
    if len(set(section.methods)) != len(section.methods):
        raise ValidationError("each method at most once", "methods")
    if JWT in section.methods:
        hmac_algorithms = [a for a in section.jwt_algorithms if a in HMAC_ALGORITHMS]
        other_algorithms = [a for a in section.jwt_algorithms if a not in HMAC_ALGORITHMS]
        if hmac_algorithms and not section.jwt_secret:
            raise ValidationError(
                f"required when auth.methods lists jwt with {hmac_algorithms[0]} (set NOTIFY_AUTH_JWT_SECRET)",
                "jwt_secret",
            )
        problem = hmac_secret_problem(section.jwt_secret, hmac_algorithms)
        if problem:
            raise ValidationError(problem, "jwt_secret")
        if other_algorithms and not section.jwt_public_key_file:
            raise ValidationError(
                f"required when auth.methods lists jwt with {other_algorithms[0]} (a PEM public key)",
                "jwt_public_key_file",
            )
        if other_algorithms:
            try:
                load_public_key(section.jwt_public_key_file, other_algorithms)
            except KeyFileError as exc:
                raise ValidationError(str(exc), "jwt_public_key_file") from None
    if PROXY in section.methods and not section.proxy_url:
        raise ValidationError("required when auth.methods lists proxy (the app's endpoint)", "proxy_url")
    return section


@dataclasses.dataclass(frozen=True)
class PublishSettings:
    """The HTTP publish API (POST /api/events): who may call it and how large a body may be."""

    api_key_hashes: tuple[str, ...] = setting(
        (), item_validate=validate.Regexp(
            r"^[0-9a-fA-F]{64}$", error="a hex SHA-256 digest (64 characters) as `notify-server apikey create` prints"
        )
    )
    max_body_bytes: int = setting(1048576, validate=validate.Range(min=1024, max=64 * 1048576))


@after_load(PublishSettings)
def _api_key_hashes_lower_case(section: PublishSettings) -> PublishSettings:
    return dataclasses.replace(section, api_key_hashes=tuple(h.lower() for h in section.api_key_hashes))


# ---------------------------------------------------------------- web push (issue 20)

WEB_PUSH_AWAY = "away"  # only users with no open connection on any node
WEB_PUSH_ALWAYS = "always"
PUSH_SERVICE_HOSTS = (  # FCM (Chrome, Edge on Android), Mozilla autopush, WNS (Edge), Apple (Safari)
    "fcm.googleapis.com", "updates.push.services.mozilla.com", "*.notify.windows.com", "*.push.apple.com",
)


def _allowed_host_entry(value: str) -> None:
    try:
        parse_entry(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class WebPushSettings:
    """Standard Web Push (RFC 8030/8291/8292) to users who are away (notify_server.transport.webpush_sender)."""

    enabled: bool = setting(False)
    vapid_private_key_file: str = setting("")
    subject: str = setting("", validate=validate.Length(max=500))
    when: str = setting(WEB_PUSH_AWAY, validate=validate.OneOf([WEB_PUSH_AWAY, WEB_PUSH_ALWAYS]))
    allowed_hosts: tuple[str, ...] = setting(PUSH_SERVICE_HOSTS, item_validate=_allowed_host_entry)
    ttl_s: int = setting(86400, validate=validate.Range(min=0, max=2419200))  # 28 days: FCM's longest
    max_subscriptions_per_user: int = setting(10, validate=validate.Range(min=1, max=1000))
    timeout_s: float = setting(10.0, validate=validate.Range(min=0, max=300, min_inclusive=False))
    max_attempts: int = setting(3, validate=validate.Range(min=1, max=20))
    retry_after_max_s: float = setting(60.0, validate=_non_negative)
    concurrency: int = setting(200, validate=validate.Range(min=1, max=10000))
    queue_maxlen: int = setting(100000, validate=validate.Range(min=100))


@after_load(WebPushSettings)
def _web_push_has_its_keys(section: WebPushSettings) -> WebPushSettings:
    # Enabled without a key or a contact, every push would be refused by the push services: refuse the config.
    if section.subject and not section.subject.startswith(("mailto:", "https://")):
        raise ValidationError("must start with mailto: or https:// (RFC 8292 contact)", "subject")
    if not section.enabled:
        return section
    if not section.vapid_private_key_file:
        raise ValidationError("required when web_push.enabled (create one: notify-server vapid create --out PATH)",
                              "vapid_private_key_file")
    try:
        load_private_key(section.vapid_private_key_file)
    except VapidKeyError as exc:
        raise ValidationError(str(exc), "vapid_private_key_file") from None
    if not section.subject:
        raise ValidationError("required when web_push.enabled (mailto: or https:// contact)", "subject")
    return section


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = setting("INFO", validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]))
    format: str = setting("text", validate=validate.OneOf(["text", "json"]))


@dataclasses.dataclass(frozen=True)
class DevSettings:
    data_dir: str = setting(".notify-dev", validate=validate.Length(min=1))


# ---------------------------------------------------------------- digests
# (the template keys are TemplateSchema's, below)
MAX_DIGEST_WINDOW_S = 7 * 86400


@dataclasses.dataclass(frozen=True)
class DigestSettings:
    """How workers end the digest windows of templates with digest_window_s > 0 (workers/digests.py)."""

    poll_interval_s: float = setting(0.25, validate=validate.Range(min=0.01, max=10))
    batch_max: int = setting(500, validate=validate.Range(min=1, max=10000))  # digests per flush transaction


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
    retention: RetentionSettings = RetentionSettings()
    worker: WorkerSettingsConfig = WorkerSettingsConfig()
    log: LogSettings = LogSettings()
    dev: DevSettings = DevSettings()
    auth: AuthSettings = AuthSettings()
    publish: PublishSettings = PublishSettings()
    web_push: WebPushSettings = WebPushSettings()
    digests: DigestSettings = DigestSettings()
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


# ---------------------------------------------------------------- schemas (derived: what the file may say)

_SCALAR_FIELDS: dict[object, type[fields.Field[Any]]] = {
    int: fields.Integer,
    float: fields.Float,
    str: fields.String,
    bool: fields.Boolean,
}


def _field_for(section: type, key: dataclasses.Field[Any], annotation: object) -> fields.Field[Any]:
    """The marshmallow field that checks one key, from its annotation and its setting(...) metadata."""
    where, meta = f"{section.__name__}.{key.name}", key.metadata
    options = {"validate": meta.get("validate"), **meta.get("options", {})}
    if annotation == tuple[str, ...]:
        return fields.List(fields.String(validate=meta.get("item_validate")), **options)
    if meta.get("item_validate") is not None:
        raise TypeError(f"{where}: item_validate is for tuple[str, ...] settings only")
    if annotation in _SCALAR_FIELDS:
        return _SCALAR_FIELDS[annotation](**options)
    raise TypeError(f"{where}: a setting is an int, float, str, bool or tuple[str, ...], not {annotation!r}")


class _Section(Schema):
    """Base of the derived schemas: unknown keys refused, the result is the section's dataclass."""

    class Meta:
        unknown = RAISE

    section: type = object

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Any:
        # YAML and the environment give lists; the frozen dataclasses hold tuples.
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        made = self.section(**values)
        hook = _AFTER_LOAD.get(self.section)
        return made if hook is None else hook(made)


def _schema_for(section: type) -> type[_Section]:
    """A schema with one field per dataclass field, in declaration order (the first error reported)."""
    hints = typing.get_type_hints(section)
    declared = {key.name: _field_for(section, key, hints[key.name]) for key in dataclasses.fields(section)}
    schema = typing.cast(type[_Section], _Section.from_dict(declared, name=section.__name__ + "Schema"))
    schema.section = section
    return schema


SECTION_SCHEMAS: dict[str, type[_Section]] = {
    key.name: _schema_for(typing.get_type_hints(Settings)[key.name])
    for key in dataclasses.fields(Settings)
    if key.name != "templates"
}


class TemplateSchema(Schema):
    class Meta:
        unknown = RAISE

    title = fields.String(required=True, validate=validate.Length(min=1, max=500))
    body = fields.String(required=True, validate=validate.Length(min=1, max=5000))
    priority = fields.String(load_default="NORMAL", validate=validate.OneOf(PRIORITIES))
    action_url = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    # Preferences and digests
    category = fields.String(load_default=DEFAULT_CATEGORY, validate=validate.Regexp(
        r"^[A-Za-z0-9_.-]{1,64}$", error="1 to 64 letters, digits or _.- (a key of GET /api/preferences)"))
    critical = fields.Boolean(load_default=False)
    digest_window_s = fields.Float(load_default=0.0, validate=validate.Range(min=0, max=MAX_DIGEST_WINDOW_S))
    digest_title = fields.String(load_default=None, validate=validate.Length(min=1, max=500))
    digest_body = fields.String(load_default=None, validate=validate.Length(min=1, max=5000))


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


def _env_value(where: str, raw: str, field: fields.Field[Any]) -> Any:
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

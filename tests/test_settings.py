"""Configuration (SPEC §4): config.yaml + NOTIFY_* environment, validated, errors naming the key.

Every test passes `environ=` explicitly so the real environment cannot leak in.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from notify_server.core.settings import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings, settings_from_mapping

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"

MINIMAL_TEMPLATE = """
templates:
  CLAIM_REJECTED:
    title: "Claim Rejected"
    body: "Your claim for {provider_name} has been rejected."
    priority: HIGH
    action_url: "/claims/{claim_id}"
"""


def write_config(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_repo_config(**environ: str) -> Settings:
    return load_settings(REPO_CONFIG, environ=environ)


# ---------------------------------------------------------------- the repository's config.yaml


def test_repo_config_loads_with_spec_defaults() -> None:
    settings = load_repo_config()

    assert settings.database.url == ""
    assert settings.redis.url == ""
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert (settings.heartbeat.interval_s, settings.heartbeat.timeout_s) == (30, 10)
    assert settings.session.recheck_interval_s == 60
    assert settings.websocket.allowed_origins == ("http://localhost:8080", "http://127.0.0.1:8080")
    assert settings.limits.max_connections_per_user == 20
    assert settings.limits.send_queue_max == 256
    assert settings.queues.events == "notify:events"
    assert settings.push.job_expiry_s == 30
    assert settings.recovery.max_replay == 100


def test_repo_config_templates_are_compiled_by_event_type() -> None:
    templates = load_repo_config().templates

    assert "CLAIM_REJECTED" in templates
    rendered = templates["CLAIM_REJECTED"].render({"provider_name": "Dr. Smith", "claim_id": "abc123"})
    assert rendered.title == "Claim Rejected"
    assert rendered.body == "Your claim for Dr. Smith has been rejected."
    assert rendered.priority == "HIGH"
    assert rendered.action_url == "/claims/abc123"


def test_default_config_path_is_the_repo_config_yaml() -> None:
    assert DEFAULT_CONFIG_PATH == REPO_CONFIG
    assert load_settings(environ={}) == load_repo_config()


def test_settings_are_frozen() -> None:
    settings = load_repo_config()

    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- environment overrides


def test_heartbeat_interval_env_override_alone_works_with_repo_config() -> None:
    settings = load_repo_config(NOTIFY_HEARTBEAT_INTERVAL_S="2")

    assert settings.heartbeat.interval_s == 2


def test_heartbeat_timeout_is_capped_at_the_interval() -> None:
    settings = load_repo_config(NOTIFY_HEARTBEAT_INTERVAL_S="2")

    assert settings.heartbeat.timeout_s == 2


def test_presence_refresh_is_capped_at_a_third_of_the_ttl() -> None:
    settings = load_repo_config(NOTIFY_PRESENCE_TTL_S="6")

    assert settings.presence.refresh_interval_s == 2


def test_heartbeat_interval_env_override_is_a_number() -> None:
    settings = load_repo_config(NOTIFY_HEARTBEAT_INTERVAL_S="2", NOTIFY_HEARTBEAT_TIMEOUT_S="1")

    assert settings.heartbeat.interval_s == 2.0
    assert settings.heartbeat.timeout_s == 1.0


def test_section_key_env_override_reaches_multi_word_keys() -> None:
    settings = load_repo_config(NOTIFY_LIMITS_MAX_CONNECTIONS_PER_USER="3", NOTIFY_PUSH_JOB_EXPIRY_S="5")

    assert settings.limits.max_connections_per_user == 3
    assert settings.push.job_expiry_s == 5


def test_short_env_forms_override_urls_host_and_port() -> None:
    settings = load_repo_config(
        NOTIFY_DATABASE_URL="postgresql://postgres@db.example:5432/notify",
        NOTIFY_REDIS_URL="redis://cache.example:6379/2",
        NOTIFY_HOST="0.0.0.0",
        NOTIFY_PORT="9000",
    )

    assert settings.database.url == "postgresql://postgres@db.example:5432/notify"
    assert settings.redis.url == "redis://cache.example:6379/2"
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9000


def test_long_env_forms_of_the_short_keys_work_too() -> None:
    settings = load_repo_config(NOTIFY_SERVER_PORT="9001", NOTIFY_DATABASE_URL="postgres://h/db")

    assert settings.server.port == 9001
    assert settings.database.url == "postgres://h/db"


def test_list_env_override_is_comma_separated() -> None:
    settings = load_repo_config(NOTIFY_WEBSOCKET_ALLOWED_ORIGINS="a,b")

    assert settings.websocket.allowed_origins == ("a", "b")


def test_env_override_beats_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  port: 7000\n")

    assert load_settings(path, environ={}).server.port == 7000
    assert load_settings(path, environ={"NOTIFY_PORT": "7001"}).server.port == 7001


def test_foreign_notify_variables_are_ignored() -> None:
    settings = load_repo_config(NOTIFY_TEST_DATABASE_URL="postgresql://elsewhere/x", NOTIFY_CONFIG_DIR="/nowhere")

    assert settings.database.url == ""


# ---------------------------------------------------------------- which file


def test_explicit_path_is_read(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  port: 7100\n" + MINIMAL_TEMPLATE)

    settings = load_settings(path, environ={})

    assert settings.server.port == 7100
    assert set(settings.templates) == {"CLAIM_REJECTED"}


def test_notify_config_env_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  port: 7200\n", name="other.yaml")

    settings = load_settings(environ={"NOTIFY_CONFIG": str(path)})

    assert settings.server.port == 7200


def test_explicit_path_wins_over_notify_config(tmp_path: Path) -> None:
    chosen = write_config(tmp_path, "server:\n  port: 7300\n", name="chosen.yaml")
    ignored = write_config(tmp_path, "server:\n  port: 7400\n", name="ignored.yaml")

    settings = load_settings(chosen, environ={"NOTIFY_CONFIG": str(ignored)})

    assert settings.server.port == 7300


def test_missing_sections_take_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, ""), environ={})

    assert settings.server.port == 8080
    assert settings.heartbeat.interval_s == 30
    assert settings.templates == {}


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match="nope.yaml"):
        load_settings(missing, environ={})


# ---------------------------------------------------------------- invalid values name the key


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"NOTIFY_HEARTBEAT_INTERVAL_S": "-1"}, "heartbeat.interval_s"),
        ({"NOTIFY_HEARTBEAT_INTERVAL_S": "0"}, "heartbeat.interval_s"),
        ({"NOTIFY_HEARTBEAT_INTERVAL_S": "soon"}, "heartbeat.interval_s"),
        ({"NOTIFY_PORT": "70000"}, "server.port"),
        ({"NOTIFY_PORT": "abc"}, "server.port"),
        ({"NOTIFY_SERVER_PORT": "-1"}, "server.port"),
        ({"NOTIFY_DATABASE_URL": "mysql://x/y"}, "database.url"),
        ({"NOTIFY_REDIS_URL": "http://x"}, "redis.url"),
        ({"NOTIFY_SERVER_BOGUS": "1"}, "server.bogus"),
        ({"NOTIFY_LOG_LEVEL": "LOUD"}, "log.level"),
    ],
    ids=lambda v: next(iter(v)) + "=" + next(iter(v.values())) if isinstance(v, dict) else v,
)
def test_invalid_env_value_raises_config_error_naming_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_repo_config(**environ)

    assert key in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("heartbeat:\n  interval_s: -5\n", "heartbeat.interval_s"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  colour: blue\n", "server.colour"),
        ("limits:\n  max_connections_per_user: 0\n", "limits.max_connections_per_user"),
        ("database:\n  pool_min_size: 5\n  pool_max_size: 2\n", "database.pool_min_size"),
        ("websocket:\n  allowed_origins: http://one\n", "websocket.allowed_origins"),
        ("server: 8080\n", "server"),
    ],
    ids=["negative-interval", "port-70000", "unknown-key", "zero-limit", "pool-sizes",
         "list-as-string", "section-not-mapping"],
)
def test_invalid_file_value_raises_config_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, text), environ={})

    assert key in str(caught.value)


def test_unknown_section_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heartbeats"):
        load_settings(write_config(tmp_path, "heartbeats:\n  interval_s: 5\n"), environ={})


def test_bad_yaml_is_a_config_error_naming_the_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  port: 8080\n  host: [unclosed\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})

    message = str(caught.value)
    assert str(path) in message
    assert "line" in message and "YAML" in message


def test_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config"):
        load_settings(write_config(tmp_path, "- just\n- a list\n"), environ={})


# ---------------------------------------------------------------- templates in the config


def template_config(title: str = "T", body: str = "B", extra: str = "") -> str:
    return f'templates:\n  EVT:\n    title: "{title}"\n    body: "{body}"\n{extra}'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (template_config(body="{x.__class__}"), "templates.EVT.body"),
        (template_config(body="{x[0]}"), "templates.EVT.body"),
        (template_config(title="{0}"), "templates.EVT.title"),
        (template_config(title="{}"), "templates.EVT.title"),
        (template_config(body="{x!r}"), "templates.EVT.body"),
        (template_config(body="{x:>10}"), "templates.EVT.body"),
        (template_config(body="lone } brace"), "templates.EVT.body"),
        (template_config(extra='    action_url: "/c/{c.__init__}"\n'), "templates.EVT.action_url"),
        ('templates:\n  EVT:\n    title: "T"\n', "templates.EVT.body"),
        (template_config(extra="    priority: CRITICAL\n"), "templates.EVT.priority"),
        (template_config(extra="    colour: red\n"), "templates.EVT.colour"),
        ("templates:\n  EVT: just text\n", "templates.EVT"),
        ("templates:\n  - EVT\n", "templates"),
    ],
    ids=["attribute-access", "index-access", "positional", "empty-name", "conversion", "format-spec",
         "lone-brace", "action-url-attribute", "missing-body", "bad-priority", "unknown-template-key",
         "template-not-mapping", "templates-not-mapping"],
)
def test_invalid_template_raises_config_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, text), environ={})

    assert key in str(caught.value)


def test_template_priority_defaults_to_normal_and_action_url_to_none(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, template_config()), environ={})

    rendered = settings.templates["EVT"].render({})
    assert (rendered.priority, rendered.action_url) == ("NORMAL", None)


def test_template_double_braces_load_as_literal_braces(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, template_config(body="{{literal}} {name}")), environ={})

    assert settings.templates["EVT"].render({"name": "n"}).body == "{literal} n"


# ---------------------------------------------------------------- replace / require_services


def test_replace_changes_only_the_named_keys() -> None:
    settings = load_repo_config()

    changed = settings.replace(heartbeat={"interval_s": 1})

    assert changed.heartbeat.interval_s == 1
    assert changed.heartbeat.timeout_s == settings.heartbeat.timeout_s
    assert settings.heartbeat.interval_s == 30


@pytest.mark.parametrize(
    ("environ", "name"),
    [({}, "NOTIFY_DATABASE_URL"), ({"NOTIFY_DATABASE_URL": "postgresql://h/d"}, "NOTIFY_REDIS_URL")],
)
def test_require_services_names_the_variable_to_set(environ: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_repo_config(**environ).require_services()


# ---------------------------------------------------------------- the schema derived from the dataclasses


BAD_VALUES: list[tuple[dict[str, Any], dict[str, str], str]] = [
    # (file, environment, the one message: the same as the hand-written schemas gave)
    ({"heartbeat": {"interval_s": "soon"}}, {}, "heartbeat.interval_s: Not a valid number."),
    ({"heartbeat": {"interval_s": 0}}, {}, "heartbeat.interval_s: Must be greater than 0."),
    ({"heartbeat": {"interval_s": None}}, {}, "heartbeat.interval_s: Field may not be null."),
    ({}, {"NOTIFY_HEARTBEAT_INTERVAL_S": "nan"},
     "heartbeat.interval_s: Special numeric values (nan or infinity) are not permitted."),
    ({"server": {"port": "abc"}}, {}, "server.port: Not a valid integer."),
    ({}, {"NOTIFY_PORT": "70000"},
     "server.port: Must be greater than or equal to 0 and less than or equal to 65535."),
    ({}, {"NOTIFY_SERVER_NODE_ID": "a b/c"}, "server.node_id: letters, digits, _.- only"),
    ({"server": {"colour": "blue"}}, {}, "server.colour: Unknown field."),
    ({"limits": {"send_queue_max": "many"}}, {}, "limits.send_queue_max: Not a valid integer."),
    ({}, {"NOTIFY_LIMITS_SEND_QUEUE_MAX": "1.5"}, "limits.send_queue_max: Not a valid integer."),
    ({}, {"NOTIFY_LIMITS_LIST_MAX": "100000"},
     "limits.list_max: Must be greater than or equal to 1 and less than or equal to 1000."),
    ({}, {"NOTIFY_PRESENCE_TTL_S": "2.5"}, "presence.ttl_s: Not a valid integer."),
    ({"queues": {"events": 5}}, {}, "queues.events: Not a valid string."),
    ({}, {"NOTIFY_QUEUES_EVENTS": ""}, "queues.events: Length must be between 1 and 200."),
    ({"log": {"level": "LOUD"}}, {}, "log.level: Must be one of: DEBUG, INFO, WARNING, ERROR."),
    ({"websocket": {"allowed_origins": "http://one"}}, {}, "websocket.allowed_origins: Not a valid list."),
    ({}, {"NOTIFY_WEBSOCKET_ALLOWED_ORIGINS": "[1, 2]"}, "websocket.allowed_origins.0: Not a valid string."),
    ({"websocket": {"max_frame_bytes": 10}}, {}, "websocket.max_frame_bytes: Must be greater than or equal to 64."),
    ({}, {"NOTIFY_DATABASE_URL": "mysql://x/y"},
     "database.url: must be empty or start with one of postgresql://, postgres://"),
    ({"database": {"pool_min_size": 5}}, {"NOTIFY_DATABASE_POOL_MAX_SIZE": "4"},
     "database.pool_min_size: must not exceed pool_max_size"),
]


@pytest.mark.parametrize(("raw", "environ", "message"), BAD_VALUES, ids=[case[2] for case in BAD_VALUES])
def test_derived_schema_refuses_bad_values_with_the_same_messages(
    raw: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(raw, environ)

    assert str(caught.value) == message


def test_derived_schema_loads_tuples_and_applies_the_section_rules() -> None:
    settings = settings_from_mapping(
        {"websocket": {"allowed_origins": ["http://a.example/", "http://b.example"]}, "presence": {"ttl_s": 3}},
        {"NOTIFY_HEARTBEAT_TIMEOUT_S": "99"},
    )

    assert settings.websocket.allowed_origins == ("http://a.example", "http://b.example")
    assert settings.presence.refresh_interval_s == 1
    assert settings.heartbeat.timeout_s == settings.heartbeat.interval_s == 30


# ---------------------------------------------------------------- config.yaml documents every key

UNITS = {"_ms": "milliseconds", "_bytes": "bytes", "_s": "seconds"}  # key suffix -> word its comment uses


def every_key() -> list[Any]:
    """pytest params (section, key, dataclass default) for every setting."""
    defaults = Settings()
    return [
        pytest.param(section.name, key.name, key.default, id=f"{section.name}.{key.name}")
        for section in dataclasses.fields(Settings)
        if section.name != "templates"
        for key in dataclasses.fields(getattr(defaults, section.name))
    ]


def comments_above_keys(text: str) -> dict[tuple[str, str], str]:
    """{(section, key): the comment lines right above the key, joined} from config.yaml's text."""
    found: dict[tuple[str, str], str] = {}
    section, comment = "", []
    for line in text.splitlines():
        if match := re.fullmatch(r"(\w+):.*", line):
            section, comment = match[1], []
        elif match := re.fullmatch(r"  #\s?(.*)", line):
            comment.append(match[1])
        elif match := re.fullmatch(r"  (\w+):.*", line):
            found[(section, match[1])] = " ".join(comment)
            comment = []
        else:
            comment = []
    return found


def documented_default(value: object) -> str:
    """A default as config.yaml's comments write it: 5 (not 5.0), empty, a list as `a, b`."""
    if isinstance(value, tuple):
        return ", ".join(documented_default(item) for item in value) or "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if value != "" else "empty"


REPO_COMMENTS = comments_above_keys(REPO_CONFIG.read_text(encoding="utf-8"))
REPO_VALUES = yaml.safe_load(REPO_CONFIG.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("section", "key", "default"), every_key())
def test_config_yaml_documents_every_key_with_its_default(section: str, key: str, default: Any) -> None:
    assert (section, key) in REPO_COMMENTS, f"{section}.{key} is not in config.yaml"
    comment = REPO_COMMENTS[(section, key)]

    stated = re.escape(f"Default: {documented_default(default)}")
    assert re.search(stated + r"(?=[.,;)]?(\s|$))", comment), f"{section}.{key}: comment {comment!r}"
    unit = next((word for suffix, word in UNITS.items() if key.endswith(suffix)), None)
    if unit:
        assert re.search(rf"\b{unit}\b", comment, re.IGNORECASE), f"{section}.{key}: no {unit} in {comment!r}"
    written = REPO_VALUES[section][key]
    assert (tuple(written) if isinstance(written, list) else written) == default, f"{section}.{key}: {written!r}"

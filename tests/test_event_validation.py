"""The event validation fast path (notify_server.core.schemas.load_event) is EventSchema: for any input it
returns what the schema returns, or the schema's own error. The hostile-input suite's event generator
drives it (injections, unicode, deep nesting, wrong types, unknown keys)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from marshmallow import ValidationError

from notify_server.core.schemas import EventSchema, load_event
from notify_server.core.settings import load_settings
from notify_server.ingest.events import MAX_FIELD_NAME_CHARS, EventRejected, parse_event
from tests.test_hostile_input import events

SCHEMA = EventSchema()


def outcome(load: Any, raw: Any) -> tuple[str, Any]:
    try:
        return "ok", load(raw)
    except ValidationError as exc:
        return "error", exc.messages


@pytest.mark.slow
@hypothesis_settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=events())
def test_the_fast_path_agrees_with_the_schema_on_every_input(raw: Any) -> None:
    if not isinstance(raw, dict):
        return  # parse_event refuses those before either runs
    assert outcome(load_event, dict(raw)) == outcome(SCHEMA.load, dict(raw))


def test_a_plain_valid_event_takes_the_fast_path_and_loads_like_the_schema() -> None:
    raw = {
        "event_id": "e-é", "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "u1", "email": "u1@x.io"}],
        "data": {"provider_name": "Dr. 🦷"}, "priority": "HIGH", "action_url": "", "metadata": {"n": [1, None]},
    }
    assert load_event(dict(raw)) == SCHEMA.load(dict(raw))


@pytest.mark.parametrize("where", ["event", "recipient"])
def test_a_field_name_a_producer_chose_reaches_the_reason_escaped_and_bounded(where: str) -> None:
    """The reason goes into a log line (and the job's result): a name with a newline must not forge a
    line of its own, and a megabyte-long name must not make a megabyte line."""
    templates = load_settings(environ={}).templates
    for name in ("x\n2026-01-01 00:00:00 ERROR notify.fake: forged\r\x1b[2J\u2028", "n" * 1_000_000):
        event: dict[str, Any] = {"event_id": "e1", "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "u"}],
                                 "data": {"provider_name": "P", "claim_id": "1"}}
        if where == "event":
            event[name] = 1
        else:
            event["recipients"] = [{"user_id": "u", name: 1}]

        with pytest.raises(EventRejected) as caught:
            parse_event(event, templates)

        reason = str(caught.value)
        assert reason.endswith(": Unknown field.") and name[:1] in reason, reason[:300]
        assert reason.isprintable(), reason[:300]
        assert len(reason) < MAX_FIELD_NAME_CHARS + 100, len(reason)

"""From a producer's event to the notifications it stores: validation and rendering (SPEC §5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError

from notify_server.core.logs import printable
from notify_server.core.schemas import first_error, load_event
from notify_server.core.templates import MissingVariable, Template, UnusableValue
from notify_server.storage.notifications import NewNotifications, Recipient

MAX_FIELD_NAME_CHARS = 100  # of a field name the producer chose, in a rejection reason (and so a log line)

# The labels of the rejection metric: a fixed set, never text from the event itself.
REJECTION_FIELDS = frozenset(
    ("event", "event_id", "event_type", "recipients", "data", "priority", "action_url", "metadata", "database")
)


class EventRejected(ValueError):
    """The event can never be processed as sent; the message names the field or the variable."""

    @property
    def field(self) -> str:
        """The top-level field at fault, from REJECTION_FIELDS ("event" when it is the whole event)."""
        head = str(self).split(":", 1)[0].split(".", 1)[0].strip()
        return head if head in REJECTION_FIELDS else "event"


def event_id_for_log(raw: Any) -> str:
    """The event id, when there is a printable one, for log lines about a rejected event."""
    if isinstance(raw, Mapping) and isinstance(raw.get("event_id"), str):
        event_id: str = raw["event_id"]
        return event_id[:200].encode("unicode_escape").decode("ascii")
    return "?"


def _named_printably(messages: Any) -> Any:
    """The path first_error follows through marshmallow's messages, its names escaped and cut: they are
    the event's own keys (an unknown field's name may hold a newline, or be a megabyte long)."""
    if isinstance(messages, dict) and messages:
        key, value = next(iter(messages.items()))
        return {printable(str(key), MAX_FIELD_NAME_CHARS): _named_printably(value)}
    if isinstance(messages, list) and messages and not isinstance(messages[0], str):
        return [_named_printably(messages[0])]
    return messages


def parse_event(raw: Any, templates: Mapping[str, Template]) -> NewNotifications:
    """Validate an event and render its notification; raises EventRejected."""
    if not isinstance(raw, Mapping):
        raise EventRejected(f"event must be a JSON object, not {type(raw).__name__}")
    try:
        event = load_event(dict(raw))
    except ValidationError as exc:
        raise EventRejected(first_error(_named_printably(exc.messages))) from None
    template = templates.get(event["event_type"])
    if template is None:
        raise EventRejected(f"event_type: no template for {event['event_type']!r}")
    try:
        # An empty action_url is no override: the template's applies.
        rendered = template.render(event["data"], priority=event["priority"], action_url=event["action_url"] or None)
    except (MissingVariable, UnusableValue) as exc:
        raise EventRejected(f"data: {exc}") from None
    recipients: dict[str, Recipient] = {}
    for recipient in event["recipients"]:
        recipients.setdefault(recipient["user_id"], Recipient(recipient["user_id"], recipient["email"]))
    return NewNotifications(
        event_id=event["event_id"],
        event_type=event["event_type"],
        title=rendered.title,
        body=rendered.body,
        priority=rendered.priority,
        action_url=rendered.action_url,
        metadata=event["metadata"],
        recipients=list(recipients.values()),
    )

"""What users chose to receive (issue 19): the known channels, who is muted, and the REST view of it.

A user's choices are a sparse document of explicit switches, stored as it is (storage/preferences.py):

    {"channels": {"in_app": false},
     "categories": {"billing": {"in_app": true}},
     "event_types": {"APPOINTMENT_REMINDER": {"in_app": false}}}

The most specific switch wins: event type > category > channel > on. Critical types (a template's
`critical: true`) are never muted. `GET /api/preferences` shows the effective value of every channel,
category and event type of the config; `PATCH` takes the same shape, partially (`null` clears a switch,
so the level above applies again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from notify_server.core.templates import Template

IN_APP = "in_app"  # the notification stored, counted and pushed to open tabs
WEB_PUSH = "web_push"  # the browser's push service, for users with no tab open (issue 20)
# Every channel a user can switch, declared here once: the REST API accepts these names and no other.
CHANNELS: tuple[str, ...] = (IN_APP, WEB_PUSH)

SECTIONS = ("channels", "categories", "event_types")

Switches = Mapping[str, bool]  # channel -> on


class PreferenceError(ValueError):
    """A change that cannot be applied; the message names the key at fault (`categories.sms: …`)."""


class UserPreferences:
    """One user's explicit switches (none: everything on), over the document as stored.

    Workers read many users' documents per batch and look at few of their switches: the document is kept
    as it came and each switch is checked when it is read (anything but a boolean counts as unset)."""

    __slots__ = ("_document",)

    def __init__(self, document: Any = None) -> None:
        self._document: dict[str, Any] = document if type(document) is dict else {}  # as JSON decodes it

    @classmethod
    def of(cls, channels: Switches | None = None, categories: Mapping[str, Switches] | None = None,
           event_types: Mapping[str, Switches] | None = None) -> UserPreferences:
        return cls({"channels": dict(channels or {}), "categories": dict(categories or {}),
                    "event_types": dict(event_types or {})})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserPreferences) and self.to_document() == other.to_document()

    def __repr__(self) -> str:
        return f"UserPreferences({self.to_document()!r})"

    @property
    def channels(self) -> dict[str, bool]:
        return _switches(self._document.get("channels"))

    @property
    def categories(self) -> dict[str, dict[str, bool]]:
        return _nested(self._document.get("categories"))

    @property
    def event_types(self) -> dict[str, dict[str, bool]]:
        return _nested(self._document.get("event_types"))

    def to_document(self) -> dict[str, Any]:
        """The switches only, in the stored shape."""
        return {"channels": self.channels, "categories": self.categories, "event_types": self.event_types}

    @property
    def empty(self) -> bool:
        return not (self.channels or self.categories or self.event_types)

    def allows(self, channel: str, template: Template) -> bool:
        """Whether this user gets `template`'s events on `channel`: the most specific switch wins."""
        if template.critical:
            return True
        switch = _switch(self._document, "event_types", template.event_type, channel)
        if switch is None:
            return self.category_allows(channel, template.category)
        return switch

    def category_allows(self, channel: str, category: str) -> bool:
        switch = _switch(self._document, "categories", category, channel)
        if switch is None:
            switch = _switch(self._document, "channels", None, channel)
        return True if switch is None else switch

    def view(self, templates: Mapping[str, Template]) -> dict[str, Any]:
        """The body of GET /api/preferences: every channel, category and event type of the config with its
        effective value, and (read-only) what the page needs to draw the switches."""
        return {
            "channels": {channel: self.channels.get(channel, True) for channel in CHANNELS},
            "categories": {
                category: {channel: self.category_allows(channel, category) for channel in CHANNELS}
                for category in categories_of(templates)
            },
            "event_types": {
                event_type: {channel: self.allows(channel, template) for channel in CHANNELS}
                for event_type, template in sorted(templates.items())
            },
            "catalog": {
                event_type: {"category": template.category, "critical": template.critical,
                             "digest_window_s": template.digest_window_s if template.digests else 0}
                for event_type, template in sorted(templates.items())
            },
        }

    def patched(self, patch: Any, templates: Mapping[str, Template]) -> UserPreferences:
        """These preferences with a PATCH body applied; raises PreferenceError naming the first bad key."""
        if not isinstance(patch, Mapping):
            raise PreferenceError('body: must be a JSON object like {"categories": {"billing": {"in_app": false}}}')
        unknown = [key for key in patch if key not in SECTIONS]
        if unknown:
            raise PreferenceError(f"{_key(unknown[0])}: unknown field (expected {', '.join(SECTIONS)})")
        channels = _apply(self.channels, patch.get("channels"), "channels")
        categories = dict(self.categories)
        known_categories = categories_of(templates)
        for category, change in _entries(patch.get("categories"), "categories"):
            if category not in known_categories:
                raise PreferenceError(f"categories.{_key(category)}: unknown category"
                                      f" (known: {', '.join(sorted(known_categories)) or 'none'})")
            categories[category] = _apply(categories.get(category, {}), change, f"categories.{category}")
        event_types = dict(self.event_types)
        for event_type, change in _entries(patch.get("event_types"), "event_types"):
            template = templates.get(event_type)
            if template is None:
                raise PreferenceError(f"event_types.{_key(event_type)}: unknown event type")
            switches = _apply(event_types.get(event_type, {}), change, f"event_types.{event_type}")
            off = [channel for channel, on in switches.items() if not on]
            if template.critical and off:
                raise PreferenceError(f"event_types.{event_type}.{off[0]}: {event_type} is critical and cannot be"
                                      " turned off")
            event_types[event_type] = switches
        return UserPreferences.of(channels, {k: v for k, v in categories.items() if v},
                                  {k: v for k, v in event_types.items() if v})


def categories_of(templates: Mapping[str, Template]) -> list[str]:
    """The config's categories, sorted."""
    return sorted({template.category for template in templates.values()})


def muted_users(
    found: Mapping[str, UserPreferences], channel: str, template: Template, user_ids: Iterable[str]
) -> set[str]:
    """Of `user_ids`, those whose preferences (`found`: only users who have any) keep `template`'s events
    off `channel`. The users holding preferences are resolved, not every recipient; the recipients cost
    one set look-up each, and only when someone is muted."""
    if template.critical or not found:
        return set()
    muted = {user_id for user_id, preferences in found.items() if not preferences.allows(channel, template)}
    return muted.intersection(user_ids) if muted else muted


def _switch(document: dict[str, Any], section: str, key: str | None, channel: str) -> bool | None:
    """document[section][key][channel] (document[section][channel] without a key) when it is a boolean.
    Exact type checks: read for every recipient holding preferences, and JSON decodes to dicts."""
    value = document.get(section)
    if key is not None:
        value = value.get(key) if type(value) is dict else None
    value = value.get(channel) if type(value) is dict else None
    return value if type(value) is bool else None


def _switches(value: Any) -> dict[str, bool]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, bool)}


def _nested(value: Any) -> dict[str, dict[str, bool]]:
    if not isinstance(value, Mapping):
        return {}
    found = {k: _switches(v) for k, v in value.items() if isinstance(k, str)}
    return {k: v for k, v in found.items() if v}


def _key(value: Any) -> str:
    """A key from the request, shown in an error: bounded, printable."""
    text = value if isinstance(value, str) else repr(value)
    return text[:100].encode("unicode_escape").decode("ascii")


def _entries(value: Any, path: str) -> Iterable[tuple[str, Any]]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PreferenceError(f"{path}: must be an object")
    return value.items()


def _apply(current: Switches, change: Any, path: str) -> dict[str, bool]:
    """`current` switches with `change` ({channel: true | false | null}) applied."""
    result = dict(current)
    if change is None:
        return result
    if not isinstance(change, Mapping):
        raise PreferenceError(f"{path}: must be an object of channel: true, false or null")
    for channel, value in change.items():
        if channel not in CHANNELS:
            raise PreferenceError(f"{path}.{_key(channel)}: unknown channel (known: {', '.join(CHANNELS)})")
        if value is None:
            result.pop(channel, None)
        elif isinstance(value, bool):
            result[channel] = value
        else:
            raise PreferenceError(f"{path}.{channel}: must be true, false or null")
    return result

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

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from notify_server.core.templates import Template

IN_APP = "in_app"  # the notification stored, counted and pushed to open tabs
# Every channel a user can switch, declared here once: the REST API accepts these names and no other.
# Web push (issue 20) adds its own beside in_app.
CHANNELS: tuple[str, ...] = (IN_APP,)

SECTIONS = ("channels", "categories", "event_types")

Switches = Mapping[str, bool]  # channel -> on


class PreferenceError(ValueError):
    """A change that cannot be applied; the message names the key at fault (`categories.sms: …`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class UserPreferences:
    """One user's explicit switches (none: everything on)."""

    channels: Switches = dataclasses.field(default_factory=dict)
    categories: Mapping[str, Switches] = dataclasses.field(default_factory=dict)
    event_types: Mapping[str, Switches] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_document(cls, document: Any) -> UserPreferences:
        """From the stored document; anything that is not a boolean switch is ignored (never trusted)."""
        if not isinstance(document, Mapping):
            return cls()

        def switches(value: Any) -> dict[str, bool]:
            if not isinstance(value, Mapping):
                return {}
            return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, bool)}

        def nested(value: Any) -> dict[str, dict[str, bool]]:
            if not isinstance(value, Mapping):
                return {}
            found = {k: switches(v) for k, v in value.items() if isinstance(k, str)}
            return {k: v for k, v in found.items() if v}

        return cls(switches(document.get("channels")), nested(document.get("categories")),
                   nested(document.get("event_types")))

    def to_document(self) -> dict[str, Any]:
        return {"channels": dict(self.channels),
                "categories": {k: dict(v) for k, v in self.categories.items()},
                "event_types": {k: dict(v) for k, v in self.event_types.items()}}

    @property
    def empty(self) -> bool:
        return not (self.channels or self.categories or self.event_types)

    def allows(self, channel: str, template: Template) -> bool:
        """Whether this user gets `template`'s events on `channel`: the most specific switch wins."""
        if template.critical:
            return True
        switch = self.event_types.get(template.event_type, {}).get(channel)
        if switch is None:
            switch = self.category_allows(channel, template.category)
        return switch

    def category_allows(self, channel: str, category: str) -> bool:
        switch = self.categories.get(category, {}).get(channel)
        if switch is None:
            switch = self.channels.get(channel, True)
        return switch

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
        return UserPreferences(channels, {k: v for k, v in categories.items() if v},
                               {k: v for k, v in event_types.items() if v})


def categories_of(templates: Mapping[str, Template]) -> list[str]:
    """The config's categories, sorted."""
    return sorted({template.category for template in templates.values()})


def muted_users(
    found: Mapping[str, UserPreferences], channel: str, template: Template, user_ids: Iterable[str]
) -> set[str]:
    """Of `user_ids`, those whose preferences (`found`: only users who have any) keep `template`'s events
    off `channel`. Users without preferences cost one dict look-up each."""
    if template.critical or not found:
        return set()
    muted = set()
    for user_id in user_ids:
        preferences = found.get(user_id)
        if preferences is not None and not preferences.allows(channel, template):
            muted.add(user_id)
    return muted


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

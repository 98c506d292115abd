"""Notification templates: plain-name placeholders filled from an event's data, never evaluated.

`"Your claim for {provider_name}"` is parsed once, at config load, into literal pieces and names.
Rendering concatenates the pieces with the values as text, so a value holding braces stays literal and
`{x.__class__}` or `{x[0]}` is refused when the config is loaded (no attribute or index access exists).

A template also says how users may filter its events (issue 19): its `category`, whether it is
`critical` (never muted), and, with `digest_window_s` > 0, the texts of the digest that folds a burst
of its events into one notification (`{count}` and names its own title and body use).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """A template text that is not made of literal text and plain-name placeholders."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class MissingVariable(KeyError):
    """The event's data lacks a name that the template uses."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"data has no value for template variable {self.name!r}"


class UnusableValue(ValueError):
    """A value that cannot stand in text (an object or a list)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"template variable {name!r} must be a string, number or boolean")
        self.name = name


@dataclasses.dataclass(frozen=True)
class TextTemplate:
    """One compiled text: alternating literal pieces and variable names."""

    source: str  # the text as configured
    parts: tuple[tuple[str, str | None], ...]  # (literal, name or None)

    @classmethod
    def compile(cls, field: str, text: str) -> TextTemplate:
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise TemplateError(field, f"{exc} (write {{{{ and }}}} for literal braces)") from None
        for literal, name, spec, conversion in parsed:
            if name is not None:
                if not name.isidentifier():
                    raise TemplateError(field, f"placeholder {{{name}}} must be a plain name")
                if spec or conversion:
                    raise TemplateError(field, f"placeholder {{{name}}} may not have a format spec or conversion")
            parts.append((literal, name))
        return cls(text, tuple(parts))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def render(self, data: Mapping[str, Any]) -> str:
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                if name not in data:
                    raise MissingVariable(name)
                out.append(_as_text(name, data[name]))
        return "".join(out)


def _as_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        return ""
    raise UnusableValue(name)


@dataclasses.dataclass(frozen=True)
class Rendered:
    title: str
    body: str
    priority: str
    action_url: str | None


DEFAULT_CATEGORY = "general"
DIGEST_COUNT = "count"  # the digest placeholder for how many events it folds in


@dataclasses.dataclass(frozen=True)
class Template:
    event_type: str
    title: TextTemplate
    body: TextTemplate
    priority: str
    action_url: TextTemplate | None
    # Preferences and digests
    category: str = DEFAULT_CATEGORY
    critical: bool = False  # preferences never silence it
    digest_window_s: float = 0.0  # > 0: events within this long after one delivered at once are folded
    digest_title: TextTemplate | None = None
    digest_body: TextTemplate | None = None

    @classmethod
    def compile(
        cls, event_type: str, *, title: str, body: str, priority: str, action_url: str | None,
        category: str = DEFAULT_CATEGORY, critical: bool = False, digest_window_s: float = 0.0,
        digest_title: str | None = None, digest_body: str | None = None,
    ) -> Template:
        """Raises TemplateError naming the field: a text that is not literal text and plain names, a digest
        window without its texts, or a digest placeholder that no digest can fill."""
        compiled_title = TextTemplate.compile("title", title)
        compiled_body = TextTemplate.compile("body", body)
        digest: dict[str, TextTemplate | None] = {"digest_title": None, "digest_body": None}
        # What a digest can fill: its count, and the names every event of the type carries (the title and
        # body need them; action_url's may be missing when an event brings its own URL).
        fillable = compiled_title.names | compiled_body.names | {DIGEST_COUNT}
        for field, text in (("digest_title", digest_title), ("digest_body", digest_body)):
            if text is None:
                if digest_window_s > 0:
                    raise TemplateError(field, "required when digest_window_s is more than 0")
                continue
            compiled = TextTemplate.compile(field, text)
            unknown = sorted(compiled.names - fillable)
            if unknown:
                raise TemplateError(field, f"placeholder {{{unknown[0]}}} cannot be filled: a digest has {{count}}"
                                           f" and the names of this type's title and body"
                                           f" ({', '.join(sorted(fillable))})")
            digest[field] = compiled
        return cls(
            event_type=event_type,
            title=compiled_title,
            body=compiled_body,
            priority=priority,
            action_url=TextTemplate.compile("action_url", action_url) if action_url else None,
            category=category,
            critical=critical,
            digest_window_s=digest_window_s,
            digest_title=digest["digest_title"],
            digest_body=digest["digest_body"],
        )

    @property
    def digests(self) -> bool:
        return self.digest_window_s > 0 and self.digest_title is not None and self.digest_body is not None

    def digest_values(self, data: Mapping[str, Any]) -> dict[str, str]:
        """What a held event keeps for its digest: the digest texts' names (not count) as text."""
        names = (self.digest_title.names if self.digest_title else frozenset()) | (
            self.digest_body.names if self.digest_body else frozenset())
        return {name: _as_text(name, data[name]) for name in sorted(names - {DIGEST_COUNT}) if name in data}

    def render_digest(self, values: Mapping[str, Any], count: int) -> tuple[str, str]:
        """(title, body) of a digest of `count` events; `values` from the latest of them. A name missing
        from `values` (the config changed while events were held) is left empty rather than losing them."""
        if self.digest_title is None or self.digest_body is None:
            return self.event_type, f"{count} notifications"
        filled = {**{name: "" for name in self.digest_title.names | self.digest_body.names}, **values,
                  DIGEST_COUNT: count}
        return self.digest_title.render(filled), self.digest_body.render(filled)

    def render(
        self, data: Mapping[str, Any], *, priority: str | None = None, action_url: str | None = None
    ) -> Rendered:
        """Fill the template; the event's own priority and action_url override the template's."""
        if action_url is None and self.action_url is not None:
            action_url = self.action_url.render(data)
        return Rendered(
            title=self.title.render(data),
            body=self.body.render(data),
            priority=priority or self.priority,
            action_url=action_url,
        )

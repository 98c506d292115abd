"""Notification templates: plain-name placeholders filled from an event's data, never evaluated.

`"Your claim for {provider_name}"` is parsed once, at config load, into literal pieces and names.
Rendering concatenates the pieces with the values as text, so a value holding braces stays literal and
`{x.__class__}` or `{x[0]}` is refused when the config is loaded (no attribute or index access exists).
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


@dataclasses.dataclass(frozen=True)
class Template:
    event_type: str
    title: TextTemplate
    body: TextTemplate
    priority: str
    action_url: TextTemplate | None

    @classmethod
    def compile(cls, event_type: str, *, title: str, body: str, priority: str, action_url: str | None) -> Template:
        return cls(
            event_type=event_type,
            title=TextTemplate.compile("title", title),
            body=TextTemplate.compile("body", body),
            priority=priority,
            action_url=TextTemplate.compile("action_url", action_url) if action_url else None,
        )

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

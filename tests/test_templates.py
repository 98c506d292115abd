"""Templates (SPEC §4): plain-name placeholders filled from event data, never evaluated."""

from __future__ import annotations

from typing import Any

import pytest

from notify_server.core.templates import MissingVariable, Template, TemplateError, TextTemplate, UnusableValue


def claim_rejected(action_url: str | None = "/claims/{claim_id}") -> Template:
    return Template.compile(
        "CLAIM_REJECTED",
        title="Claim Rejected",
        body="Your claim for {provider_name} has been rejected.",
        priority="HIGH",
        action_url=action_url,
    )


def test_render_fills_title_body_and_action_url_from_data() -> None:
    rendered = claim_rejected().render({"provider_name": "Dr. Smith", "claim_id": "abc123"})

    assert rendered.title == "Claim Rejected"
    assert rendered.body == "Your claim for Dr. Smith has been rejected."
    assert rendered.priority == "HIGH"
    assert rendered.action_url == "/claims/abc123"


def test_event_priority_and_action_url_override_the_template() -> None:
    rendered = claim_rejected().render(
        {"provider_name": "Dr. Smith", "claim_id": "abc123"}, priority="URGENT", action_url="/elsewhere"
    )

    assert rendered.priority == "URGENT"
    assert rendered.action_url == "/elsewhere"


def test_event_action_url_override_does_not_need_the_template_variables() -> None:
    rendered = claim_rejected().render({"provider_name": "Dr. Smith"}, action_url="/elsewhere")

    assert rendered.action_url == "/elsewhere"


def test_template_without_action_url_renders_none() -> None:
    assert claim_rejected(action_url=None).render({"provider_name": "x"}).action_url is None


def test_braces_in_data_stay_literal() -> None:
    rendered = claim_rejected().render({"provider_name": "{provider_name}", "claim_id": "{claim_id.__class__}"})

    assert rendered.body == "Your claim for {provider_name} has been rejected."
    assert rendered.action_url == "/claims/{claim_id.__class__}"


def test_same_variable_used_twice_is_filled_twice() -> None:
    text = TextTemplate.compile("body", "{a} and {a}")

    assert text.render({"a": "x"}) == "x and x"
    assert text.names == frozenset({"a"})


def test_missing_variable_raises_naming_it() -> None:
    with pytest.raises(MissingVariable) as caught:
        claim_rejected().render({"claim_id": "abc123"})

    assert caught.value.name == "provider_name"
    assert "provider_name" in str(caught.value)


def test_extra_data_keys_are_ignored() -> None:
    rendered = claim_rejected().render({"provider_name": "A", "claim_id": "1", "unused": {"nested": [1]}})

    assert rendered.body == "Your claim for A has been rejected."


def test_double_braces_are_literal_braces() -> None:
    text = TextTemplate.compile("body", "{{not_a_variable}} {name} }}{{")

    assert text.render({"name": "n"}) == "{not_a_variable} n }{"
    assert text.names == frozenset({"name"})


@pytest.mark.parametrize(
    ("value", "text"),
    [(42, "42"), (2.5, "2.5"), (True, "true"), (False, "false"), ("", ""), ("é ✓", "é ✓")],
)
def test_scalar_values_render_as_text(value: Any, text: str) -> None:
    assert TextTemplate.compile("body", "<{v}>").render({"v": value}) == f"<{text}>"


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], ("t",), object()], ids=["dict", "list", "tuple", "object"])
def test_non_scalar_value_is_refused(value: Any) -> None:
    with pytest.raises(UnusableValue) as caught:
        TextTemplate.compile("body", "{v}").render({"v": value})

    assert caught.value.name == "v"
    assert "'v'" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["{x.__class__}", "{x[0]}", "{0}", "{}", "{x!r}", "{x:>10}", "{x", "x}", "{x.y.z}", "{ x }"],
)
def test_anything_but_a_plain_name_is_refused_at_compile(text: str) -> None:
    with pytest.raises(TemplateError) as caught:
        TextTemplate.compile("body", text)

    assert caught.value.field == "body"


def test_compile_error_names_the_template_field() -> None:
    with pytest.raises(TemplateError) as caught:
        Template.compile("E", title="ok", body="ok", priority="LOW", action_url="/x/{x[0]}")

    assert caught.value.field == "action_url"

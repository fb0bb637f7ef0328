"""Evaluating rules against one event: which match, why the others do not, and the rendered actions.

Pure: no I/O, no clock. The worker records what this returns and runs the actions; `simulate`
and config tests print it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from connectors import REGISTRY
from gu1sync.core.records import Event
from gu1sync.core.templates import TemplateError, render_value

from .model import Rule


def context_for(event: Event) -> dict[str, Any]:
    """What rules see: the event's envelope facts, `payload` as sent, and `entity` where present."""
    context: dict[str, Any] = {
        "event": event.type,
        "id": event.id,
        "source": event.source,
        "environment": event.environment,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "payload": event.payload,
    }
    entity = event.payload.get("entity") if isinstance(event.payload, dict) else None
    if isinstance(entity, dict):
        context["entity"] = entity
    return context


@dataclass
class RenderedAction:
    """One action of a matched rule, rendered for this event (or the reason it could not be)."""

    index: int
    type: str
    params: dict[str, Any] | None
    error: str | None = None
    group_key: str | None = None  # the rule groups this action: which group it joins (key, and where it goes)
    group_line: str | None = None  # its line in the group's message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RuleResult:
    """What one rule made of one event."""

    rule: str
    matched: bool
    reason: str | None = None  # why it did not match
    mode: str = "live"
    throttle_key: str | None = None
    throttle_window: float | None = None
    group_wait: float | None = None  # the rule groups its Slack posts: how long a group gathers matches
    group_max: int | None = None
    error: str | None = None  # the rule matched but its throttle key could not be rendered
    actions: list[RenderedAction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _why_not(rule: Rule, event: Event, context: dict[str, Any]) -> str | None:
    if not rule.enabled:
        return "disabled"
    if not rule.listens_to(event.type):
        return f"on: event {event.type!r} is not {' or '.join(rule.on)}"
    if rule.sources is not None and event.source not in rule.sources:
        return f"sources: {event.source!r} is not {' or '.join(rule.sources)}"
    if rule.environment is not None and event.environment != rule.environment:
        return f"environment: {event.environment!r} is not {rule.environment!r}"
    if rule.when is not None and not rule.when.holds(context):
        return f"when: {rule.when.why_not(context)}"
    return None


def render_actions(rule: Rule, context: dict[str, Any]) -> list[RenderedAction]:
    """Render each action on its own: one that cannot be rendered does not stop the others."""
    rendered = []
    for index, params in enumerate(rule.params):
        values = {
            name: getattr(params, name) for name in type(params).model_fields if getattr(params, name) is not None
        }
        prepare = REGISTRY.action(params.type).prepare
        if prepare is not None:  # e.g. a ready-made layout's text and blocks
            values = prepare(values)
        try:
            rendered.append(RenderedAction(index, params.type, render_value(values, context)))
        except TemplateError as exc:
            message = f"rule {rule.name!r}, action {index} ({params.type}): {exc}"
            rendered.append(RenderedAction(index, params.type, None, message))
    return rendered


def evaluate_rule(rule: Rule, event: Event, context: dict[str, Any] | None = None) -> RuleResult:
    """Match one rule against one event and, if it matches, render its actions."""
    context = context if context is not None else context_for(event)
    reason = _why_not(rule, event, context)
    if reason is not None:
        return RuleResult(rule.name, False, reason, rule.mode)
    result = RuleResult(rule.name, True, None, rule.mode)
    if rule.throttle is not None:
        result.throttle_window = rule.throttle.window
        try:
            key = render_value(rule.throttle.key, context)
        except TemplateError as exc:
            result.error = f"rule {rule.name!r}, throttle key: {exc}"
            return result
        # A key that comes out empty (a null id) would lump unrelated events together: no throttle then.
        result.throttle_key = str(key) if key not in (None, "") else None
    result.actions = render_actions(rule, context)
    if rule.group is not None:
        _grouped(rule, result, context)
    return result


def _grouped(rule: Rule, result: RuleResult, context: dict[str, Any]) -> None:
    """Name the group each of the rule's groupable actions joins, and render its line."""
    assert rule.group is not None
    result.group_wait, result.group_max = rule.group.wait, rule.group.max
    try:
        by = render_value(rule.group.by, context) if rule.group.by is not None else ""
    except TemplateError as exc:
        result.error = f"rule {rule.name!r}, group by: {exc}"
        return
    for action in result.actions:
        grouping = REGISTRY.action(action.type).group
        if grouping is None or action.error is not None or action.params is None:
            continue
        try:
            action.group_line = str(render_value(rule.group.line or grouping.line, context))
        except TemplateError as exc:
            action.error = f"rule {rule.name!r}, action {action.index} ({action.type}), group line: {exc}"
            continue
        action.group_key = f"{'' if by is None else by}\x1f{grouping.together(action.params)}"


def evaluate(rules: list[Rule], event: Event) -> list[RuleResult]:
    """Every rule's result for one event, in config order."""
    context = context_for(event)
    return [evaluate_rule(rule, event, context) for rule in rules]

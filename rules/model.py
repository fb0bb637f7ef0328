"""A rule, and the config tests that an ops team writes for its rules."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator

from connectors import ActionParams
from gu1sync.core.templates import Template, compile_value
from gu1sync.core.values import Name, OneOrMany, PositiveDuration, StrictModel, many_means_all

from .actions import Action
from .conditions import AllOf, Condition

_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]+$")


class Throttle(StrictModel):
    """Run the actions once per key per window; later matches are recorded as throttled."""

    key: Annotated[Any, Field(description="A template: which events count as the same, e.g. {{ entity.id }}")]
    window: PositiveDuration = Field(description="e.g. 1h")

    @field_validator("key", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("key is a template such as {{ entity.id }}")
        return compile_value(value)


class Group(StrictModel):
    """Matches that share a key within `wait` go out as one message (Alertmanager's grouping): a header
    with the count, one line per match, and "...and N more" past `max`. Each match is still an action
    of its own, recorded and traceable to the message that carried it. Only Slack posts are grouped;
    the rule's other actions run for every match as usual."""

    by: Annotated[
        Any,
        Field(
            description="A template: matches with the same value share a message, e.g. "
            "{{ payload.status }}. Without it, every match of the rule (per channel) does."
        ),
    ] = None
    wait: PositiveDuration = Field(30, description="How long a group gathers matches after its first one.")
    max: int = Field(50, ge=1, le=100, description="Lines in the message at most; past them, '...and N more'.")
    line: Annotated[
        Any,
        Field(
            description="A template: one match's line (default: who, external id, what changed, "
            "why). Values from the event are escaped for Slack."
        ),
    ] = None

    @field_validator("by", mode="before")
    @classmethod
    def _compile_by(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("by is a template such as {{ payload.status }}")
        return compile_value(value)

    @field_validator("line", mode="before")
    @classmethod
    def _compile_line(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ValueError("line is a template such as {{ entity.name }} ({{ entity.externalId }})")
        return compile_value(value, slack_text=True)


class RetrySettings(StrictModel):
    """How a failed action is retried: exponential back-off with jitter, bounded."""

    max_attempts: int | None = Field(None, ge=1, le=50, description="Attempts in all, the first included (6).")
    backoff: PositiveDuration | None = Field(None, description="Wait before the 2nd attempt (10s).")
    max_backoff: PositiveDuration | None = Field(None, description="Longest wait (15m).")


DEFAULT_RETRY = RetrySettings(max_attempts=6, backoff=10, max_backoff=900)


class Rule(StrictModel):
    """On which events, under which conditions, which actions run with which values."""

    name: Name = Field(description="Unique; appears in logs, in `show` and in Slack alerts.")
    description: str | None = None
    enabled: bool = Field(True, description="false: the rule is kept but never runs.")
    mode: Literal["live", "shadow"] = Field(
        "live", description="shadow: render and record the actions, never call the connector."
    )
    on: Annotated[OneOrMany[str], Field(min_length=1)] = Field(
        description="Event types: a type, a list, or globs such as entity.* and kyc.*"
    )
    sources: OneOrMany[str] | None = Field(None, description="Only events from these sources.")
    environment: Literal["sandbox", "production"] | None = Field(None, description="Only events from it.")
    when: Condition | None = Field(
        None, description="Conditions; a list means all of them.", json_schema_extra=many_means_all
    )
    throttle: Throttle | None = None
    group: Group | None = Field(None, description="Slack posts of matches that share a key, as one message.")
    retry: RetrySettings | None = Field(None, description="Overrides the top-level retry: for this rule's actions.")
    actions: Annotated[list[Action], Field(min_length=1)]

    _patterns: tuple[re.Pattern, ...] = PrivateAttr(())

    @field_validator("on")
    @classmethod
    def _globs(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not _PATTERN.match(pattern):
                raise ValueError(f"{pattern!r} is not an event type or a glob such as entity.* or kyc.*")
        return patterns

    @field_validator("when", mode="before")
    @classmethod
    def _list_means_all(cls, value: Any) -> Any:
        return {"all": value} if isinstance(value, list) else value

    def model_post_init(self, context: Any) -> None:
        self._patterns = tuple(re.compile(fnmatch.translate(p)) for p in self.on)

    def listens_to(self, event_type: str | None) -> bool:
        """Whether `on:` covers this event type."""
        return event_type is not None and any(p.match(event_type) for p in self._patterns)

    @property
    def params(self) -> list[ActionParams]:
        """The actions' parameters, in order."""
        return [action.params for action in self.actions]


def template_sources(value: Any) -> Any:
    """A compiled value with templates shown as their source text (for display)."""
    if isinstance(value, Template):
        return value.source
    if isinstance(value, dict):
        return {k: template_sources(v) for k, v in value.items()}
    if isinstance(value, list):
        return [template_sources(v) for v in value]
    return value


class Expect(StrictModel):
    """What a config test expects."""

    matched: list[str] | None = Field(None, description="Exactly these rules match (enabled ones).")
    not_matched: list[str] | None = Field(None, description="None of these rules match.")
    actions: dict[str, list[dict[str, Any]]] | None = Field(
        None,
        description="Per rule, its actions in order as {type: {key: value}}; only the keys given are compared.",
    )


class ConfigTest(StrictModel):
    """One event and what the rules should make of it; `check` runs these."""

    name: str
    event: str | dict[str, Any] = Field(description="A JSON or YAML file (relative to the config), or the envelope.")
    source: str | None = Field(None, description="The source it arrives at (default: the first gu1 source).")
    expect: Expect


__all__ = ["AllOf", "ConfigTest", "Rule", "Throttle"]

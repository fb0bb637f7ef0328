"""Conditions in `when:`: field operators, all/any/not, and the shorthands of Gu1's own webhook filters.

Each condition answers `holds(ctx)` and, when it does not hold, `why_not(ctx)` in words an ops
engineer can act on. A field that is not in the event makes a condition false (only `exists: false`
holds for it); it is never an error at run time.

Long because each kind of condition is a small model with its own `holds` and `why_not`, and together
they make one discriminated union whose errors must name the right one.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import regex
from pydantic import Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator

from gu1sync.core.paths import MISSING, parse_path, resolve
from gu1sync.core.timeutil import parse_iso
from gu1sync.core.values import CUSTOM_MESSAGES, OneOrMany, StrictModel, as_list, did_you_mean

OPERATORS = tuple("eq ne in not_in contains starts_with ends_with matches exists gt gte lt lte".split())
SHORTHANDS = ("entity_types", "status_changes", "rule_severity", "rule_ids", "changed")
COMBINATORS = ("all", "any", "not")


def _show(value: Any) -> str:
    if value is MISSING:
        return "missing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(actual: Any, expected: Any) -> bool:
    """Equality without Python's True == 1, inside lists and objects too."""
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(_same(actual[k], expected[k]) for k in actual)
    return actual == expected


_NUMBER_TEXT = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")


def _number(value: Any) -> int | float | None:
    """A number, or text that is plainly one ("12.5"; not "Infinity" or "1_000")."""
    if _is_number(value):
        return value
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        return float(value)
    return None


def _ordered(actual: Any, expected: Any) -> tuple[Any, Any] | None:
    """Both as numbers, or both as timestamps; None when they cannot be compared."""
    if _is_number(expected):
        number = _number(actual)
        return (number, expected) if number is not None else None
    left, right = parse_iso(actual), parse_iso(expected)
    return (left, right) if left is not None and right is not None else None


T = TypeVar("T")
# One value or a list of them (`entity_types: person`), at least one.
Listed = Annotated[OneOrMany[T], Field(min_length=1)]


class FieldCondition(StrictModel):
    """`{field: payload.status, eq: approved}`: one field, one operator."""

    field: str = Field(description='Dotted path: payload.status, entity.type, payload.changes["a.b"].new')
    eq: Any = Field(None, description="Equal to.")
    ne: Any = Field(None, description="Present and not equal to.")
    in_: list[Any] | None = Field(None, alias="in", description="One of these values.")
    not_in: list[Any] | None = Field(None, description="Present and none of these values.")
    contains: Any = Field(None, description="A list holding it, a string containing it, or an object with that key.")
    starts_with: str | None = None
    ends_with: str | None = None
    matches: str | None = Field(None, description="A regular expression found in the value (Python syntax).")
    exists: bool | None = Field(None, description="true: present and not null; false: absent or null.")
    gt: int | float | str | None = Field(None, description="Greater than a number or an ISO 8601 timestamp.")
    gte: int | float | str | None = None
    lt: int | float | str | None = None
    lte: int | float | str | None = None

    _parts: tuple = PrivateAttr(())
    _op: str = PrivateAttr("")
    _regex: regex.Pattern | None = PrivateAttr(None)

    @field_validator("field")
    @classmethod
    def _path(cls, value: str) -> str:
        parse_path(value)
        return value

    @field_validator("gt", "gte", "lt", "lte", mode="before")
    @classmethod
    def _comparable(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("compares with a number or an ISO 8601 timestamp; none was given")
        number = _number(value)  # text that is a number, e.g. from ${THRESHOLD}, counts as one
        if number is not None:
            return int(number) if isinstance(number, float) and number.is_integer() else number
        if parse_iso(value) is None:
            raise ValueError(f"compares numbers or ISO 8601 timestamps; {_show(value)} is neither")
        return value

    @field_validator("in_", "not_in", "starts_with", "ends_with", "matches", "exists", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("needs a value (only eq and ne compare with null)")
        return value

    @field_validator("matches")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        try:
            regex.compile(value)
        except regex.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> FieldCondition:
        given = [name for name in OPERATORS if (name if name != "in" else "in_") in self.model_fields_set]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(
                f"a condition on a field takes exactly one operator ({', '.join(OPERATORS)}); {found}"
                + ("; combine several with all:" if given else "")
            )
        self._op = given[0]
        self._parts = parse_path(self.field)
        if self._op == "matches":
            self._regex = regex.compile(self.matches)
        return self

    @property
    def expected(self) -> Any:
        return getattr(self, "in_" if self._op == "in" else self._op)

    def describe(self) -> str:
        return f"{self.field} {self._op} {_show(self.expected)}"

    def holds(self, ctx: dict) -> bool:
        actual = resolve(ctx, self._parts)
        op, expected = self._op, self.expected
        if op == "exists":
            present = actual is not MISSING and actual is not None
            return present == expected
        if actual is MISSING or actual is None:  # a null is no value: only `eq: null` holds for it
            return actual is None and op == "eq" and expected is None
        try:
            return self._compare(op, actual, expected)
        except (TypeError, ValueError, TimeoutError):  # values that cannot be compared, a regex too slow
            return False

    def _compare(self, op: str, actual: Any, expected: Any) -> bool:
        if op == "eq":
            return _same(actual, expected)
        if op == "ne":
            return not _same(actual, expected)
        if op == "in":
            return any(_same(actual, item) for item in expected)
        if op == "not_in":
            return not any(_same(actual, item) for item in expected)
        if op == "contains":
            if isinstance(actual, list):
                return any(_same(item, expected) for item in actual)
            if isinstance(actual, str):
                return isinstance(expected, str) and expected in actual
            return isinstance(actual, dict) and isinstance(expected, str) and expected in actual
        if op in ("starts_with", "ends_with"):
            return isinstance(actual, str) and getattr(actual, op.replace("_", ""))(expected)
        if op == "matches":
            # The `regex` engine with a time limit: event data must not stall a worker on a costly pattern.
            return isinstance(actual, str | int | float) and self._regex.search(str(actual), timeout=0.1) is not None
        pair = _ordered(actual, expected)
        if pair is None:
            return False
        left, right = pair
        return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]

    def why_not(self, ctx: dict) -> str:
        return f"{self.describe()} (was {_show(resolve(ctx, self._parts))})"


class AllOf(StrictModel):
    """`{all: [...]}`: every condition holds."""

    all: Annotated[list[Condition], Field(min_length=1)]

    def describe(self) -> str:
        return "all of " + "; ".join(c.describe() for c in self.all)

    def holds(self, ctx: dict) -> bool:
        return all(c.holds(ctx) for c in self.all)

    def why_not(self, ctx: dict) -> str:
        for condition in self.all:
            if not condition.holds(ctx):
                return condition.why_not(ctx)
        return "it held"


class AnyOf(StrictModel):
    """`{any: [...]}`: at least one condition holds."""

    any: Annotated[list[Condition], Field(min_length=1)]

    def describe(self) -> str:
        return "any of " + "; ".join(c.describe() for c in self.any)

    def holds(self, ctx: dict) -> bool:
        return any(c.holds(ctx) for c in self.any)

    def why_not(self, ctx: dict) -> str:
        return "none of: " + "; ".join(c.why_not(ctx) for c in self.any)


class NotOf(StrictModel):
    """`{not: {...}}`: the condition does not hold."""

    not_: Condition = Field(alias="not")

    def describe(self) -> str:
        return f"not ({self.not_.describe()})"

    def holds(self, ctx: dict) -> bool:
        return not self.not_.holds(ctx)

    def why_not(self, ctx: dict) -> str:
        return f"not ({self.not_.describe()}): it held"


class EntityTypes(StrictModel):
    """Gu1's `entityTypes` filter: the event's entity is one of these types."""

    entity_types: Listed[str]

    def describe(self) -> str:
        return f"entity.type in {self.entity_types}"

    def holds(self, ctx: dict) -> bool:
        return resolve(ctx, ("entity", "type")) in self.entity_types

    def why_not(self, ctx: dict) -> str:
        return f"{self.describe()} (was {_show(resolve(ctx, ('entity', 'type')))})"


class StatusChange(StrictModel):
    from_: str | list[str] | None = Field(None, alias="from", description="The previous status, or one of these.")
    to: str | list[str] | None = Field(None, description="The new status, or one of these.")

    @model_validator(mode="after")
    def _something(self) -> StatusChange:
        if self.from_ is None and self.to is None:
            raise ValueError("give from:, to:, or both")
        return self


class StatusChanges(StrictModel):
    """Gu1's `statusChanges` filter: payload.previousStatus is `from` and payload.status is `to`."""

    status_changes: StatusChange

    def describe(self) -> str:
        parts = []
        if self.status_changes.from_ is not None:
            parts.append(f"from {self.status_changes.from_}")
        if self.status_changes.to is not None:
            parts.append(f"to {self.status_changes.to}")
        return "status changes " + " ".join(parts)

    def holds(self, ctx: dict) -> bool:
        change = self.status_changes
        for wanted, path in ((change.from_, ("payload", "previousStatus")), (change.to, ("payload", "status"))):
            if wanted is not None and resolve(ctx, path) not in as_list(wanted):
                return False
        return True

    def why_not(self, ctx: dict) -> str:
        was = (resolve(ctx, ("payload", "previousStatus")), resolve(ctx, ("payload", "status")))
        return f"{self.describe()} (was from {_show(was[0])} to {_show(was[1])})"


class RuleSeverity(StrictModel):
    """Gu1's `ruleSeverity` filter: payload.rule.severity is one of these."""

    rule_severity: Listed[Literal["low", "medium", "high", "critical"]]

    def describe(self) -> str:
        return f"payload.rule.severity in {self.rule_severity}"

    def holds(self, ctx: dict) -> bool:
        return resolve(ctx, ("payload", "rule", "severity")) in self.rule_severity

    def why_not(self, ctx: dict) -> str:
        return f"{self.describe()} (was {_show(resolve(ctx, ('payload', 'rule', 'severity')))})"


class RuleIds(StrictModel):
    """Gu1's `ruleIds` filter: payload.ruleId (or payload.rule.id) is one of these."""

    rule_ids: Listed[str]

    def _rule_id(self, ctx: dict) -> Any:
        found = resolve(ctx, ("payload", "ruleId"))
        return found if found is not MISSING else resolve(ctx, ("payload", "rule", "id"))

    def describe(self) -> str:
        return f"payload.ruleId in {self.rule_ids}"

    def holds(self, ctx: dict) -> bool:
        return self._rule_id(ctx) in self.rule_ids

    def why_not(self, ctx: dict) -> str:
        return f"{self.describe()} (was {_show(self._rule_id(ctx))})"


class Changed(StrictModel):
    """For entity.updated: payload.changes has this dotted path (or something under it)."""

    changed: Listed[str]

    def describe(self) -> str:
        return f"changed {' or '.join(self.changed)}"

    def holds(self, ctx: dict) -> bool:
        changes = resolve(ctx, ("payload", "changes"))
        if not isinstance(changes, dict):
            return False
        return any(key == path or key.startswith(path + ".") for key in changes for path in self.changed)

    def why_not(self, ctx: dict) -> str:
        changes = resolve(ctx, ("payload", "changes"))
        keys = sorted(changes) if isinstance(changes, dict) else MISSING
        return f"{self.describe()} (changes were {_show(keys)})"


def condition_tag(value: Any) -> str | None:
    """Which kind of condition a mapping is, from its keys."""
    if isinstance(value, StrictModel):
        return _TAGS_BY_CLASS.get(type(value))
    if not isinstance(value, dict):
        return None
    if "field" in value:
        return "field-condition"
    if len(value) == 1:
        key = next(iter(value))
        return key if key in COMBINATORS + SHORTHANDS else None
    return None


Condition = Annotated[
    Annotated[FieldCondition, Tag("field-condition")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")]
    | Annotated[EntityTypes, Tag("entity_types")]
    | Annotated[StatusChanges, Tag("status_changes")]
    | Annotated[RuleSeverity, Tag("rule_severity")]
    | Annotated[RuleIds, Tag("rule_ids")]
    | Annotated[Changed, Tag("changed")],
    Discriminator(condition_tag, custom_error_type="unknown_condition", custom_error_message="unknown condition"),
]

_TAGS_BY_CLASS = {
    FieldCondition: "field-condition",
    AllOf: "all",
    AnyOf: "any",
    NotOf: "not",
    EntityTypes: "entity_types",
    StatusChanges: "status_changes",
    RuleSeverity: "rule_severity",
    RuleIds: "rule_ids",
    Changed: "changed",
}

for _model in (AllOf, AnyOf, NotOf):
    _model.model_rebuild()


def unknown_condition_message(value: Any) -> str:
    """What to say about a mapping that is no kind of condition."""

    kinds = ", ".join(("field", *COMBINATORS, *SHORTHANDS))
    if isinstance(value, dict) and value:
        key = str(next(iter(value)))
        if len(value) > 1:
            return (
                f"a condition is one of {kinds}; found the keys {', '.join(map(str, value))} (did you forget field:?)"
            )
        return f'unknown condition "{key}"{did_you_mean(key, [*OPERATORS, "field", *COMBINATORS, *SHORTHANDS])}'
    return f"a condition is a mapping: one of {kinds}"


CUSTOM_MESSAGES["unknown_condition"] = unknown_condition_message

__all__ = ["Condition"]

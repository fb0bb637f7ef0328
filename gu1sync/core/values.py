"""The value types config models are built from, each written once: a duration, one-or-many, a
secret from the environment, a name. Config models are pydantic models (one source of truth for
validation and the JSON Schema); the translation of their errors for people lives in
gu1sync.config.problems.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from .timeutil import DURATION_PATTERN, POSITIVE_DURATION_PATTERN, parse_duration
from .yamlfile import EnvStr


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# Messages for custom error types raised by discriminated unions (actions, conditions): type -> f(input).
CUSTOM_MESSAGES: dict[str, typing.Callable[[Any], str]] = {}


def did_you_mean(word: str, candidates: list[str]) -> str:
    """' (did you mean "x"?)' when a candidate is close to `word`, else ''."""
    close = difflib.get_close_matches(str(word), [c for c in candidates if c != word], n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def describe(value: Any) -> str:
    """A short, safe rendering of a config value for an error message."""
    if isinstance(value, EnvStr):
        return value.describe()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- durations ------------------------------------------------------------------------------------


def duration(*, minimum: float = 0, above: bool = False, keep: bool = False, message: str | None = None) -> Any:
    """The type of a duration field: seconds, or text such as 500ms, 30s, 5m, 1h, 2d.

    `minimum` (with `above`: strictly more than it) bounds it; `keep` also allows the word `keep`
    (None: no limit). `message` replaces the error for a value out of bounds.
    """

    def check(value: Any) -> float | None:
        if keep and isinstance(value, str) and value.strip() == "keep":
            return None
        try:
            seconds = parse_duration(value)
        except ValueError:
            if message is None:
                raise
            raise ValueError(message) from None
        if seconds < minimum or (above and seconds <= minimum):
            if message is not None:
                raise ValueError(message)
            raise ValueError("must be more than zero" if minimum == 0 else f"must be at least {minimum:g} s")
        return seconds

    number: dict[str, Any] = {"type": "number", ("exclusiveMinimum" if above else "minimum"): minimum}
    schema: dict[str, Any] = {
        "anyOf": [number, {"type": "string", "pattern": POSITIVE_DURATION_PATTERN if above else DURATION_PATTERN}],
        "description": ("more than zero: " if above and minimum == 0 else "")
        + "seconds, or text such as 500ms, 30s, 5m, 1h, 2d",
    }
    if keep:
        schema["anyOf"].insert(0, {"const": "keep"})
        schema["description"] = "keep, or " + schema["description"]
    return Annotated[float | None if keep else float, BeforeValidator(check), WithJsonSchema(schema)]


Duration = duration()
PositiveDuration = duration(above=True)


# -- one or many ----------------------------------------------------------------------------------


def as_list(value: Any) -> Any:
    """A single item stands for a list of one (`on: entity.*`, `secrets: ${X}`); anything else as it is."""
    return [value] if isinstance(value, str) else value


def one_or_many(schema: dict[str, Any]) -> None:
    """JSON Schema edit for a list field that also takes a single item."""
    branches = schema.get("anyOf", [schema])
    for branch in list(branches):
        if branch.get("type") == "array" and "items" in branch:
            if branch is schema:
                array = {k: schema.pop(k) for k in ("type", "items", "minItems") if k in schema}
                schema["anyOf"] = [array["items"], array]
            else:
                branches.insert(0, branch["items"])
            return


T = TypeVar("T")
# One value or a list of them: `sources: gu1-production` or `sources: [a, b]`.
OneOrMany = Annotated[list[T], BeforeValidator(as_list), Field(json_schema_extra=one_or_many)]


def many_means_all(schema: dict[str, Any]) -> None:
    """JSON Schema edit for `when:`, which also takes a list of conditions (all of them)."""
    for branch in list(schema.get("anyOf", [])):
        if "oneOf" in branch:
            schema["anyOf"].append({"type": "array", "items": branch, "minItems": 1})
            return


# -- secrets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A secret read from the environment; its repr shows the variable's name, never the value."""

    name: str
    value: str = field(repr=False)

    def __str__(self) -> str:
        return f"${{{self.name}}}"


def _to_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, EnvStr) or value.whole is None:
        raise ValueError(
            "secrets are read from the environment: write ${ENV_VAR_NAME} here, "
            "and set that variable where gu1-sync runs"
        )
    if not value and not value.missing:
        raise ValueError(f"environment variable {value.whole} is set but empty")
    return Secret(name=value.whole, value=str(value))


SecretValue = Annotated[
    Secret,
    BeforeValidator(_to_secret),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$",
            "description": "a reference to an environment variable: ${NAME}",
        }
    ),
]


# -- names ----------------------------------------------------------------------------------------

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value[:70]!r} is not a usable name: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": _NAME.pattern})]


__all__ = [
    "CUSTOM_MESSAGES",
    "Duration",
    "Name",
    "OneOrMany",
    "PositiveDuration",
    "Secret",
    "SecretValue",
    "StrictModel",
    "as_list",
    "describe",
    "did_you_mean",
    "duration",
    "many_means_all",
    "one_or_many",
]

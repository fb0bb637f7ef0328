"""The building blocks of config models, and the translation of pydantic errors into Problems.

Config models are pydantic models (one source of truth for validation and the JSON Schema). Their
errors are rewritten here for people who edit YAML: unknown keys get a did-you-mean, values that
came from the environment are never echoed, and each error carries file:line:column.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, WithJsonSchema

from .configfile import Document, EnvStr, Path, Problem
from .timeutil import parse_duration


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": "seconds, or text such as 500ms, 30s, 5m, 1h, 2d",
        }
    ),
]


@dataclass(frozen=True)
class Secret:
    """A secret read from the environment; its repr shows the variable's name, never the value."""

    name: str
    value: str = field(repr=False)

    def __str__(self) -> str:
        return f"${{{self.name}}}"


PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(lambda seconds: _positive(seconds)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^\s*(0*[1-9]\d*(\.\d+)?|0*\.\d*[1-9]\d*)\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": "more than zero: seconds, or text such as 500ms, 30s, 5m, 1h, 2d",
        }
    ),
]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


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


def one_or_many(schema: dict[str, Any]) -> None:
    """JSON Schema edit for a list field that also takes a single item (`on: entity.*`)."""
    branches = schema.get("anyOf", [schema])
    for branch in list(branches):
        if branch.get("type") == "array" and "items" in branch:
            if branch is schema:
                array = {k: schema.pop(k) for k in ("type", "items", "minItems") if k in schema}
                schema["anyOf"] = [array["items"], array]
            else:
                branches.insert(0, branch["items"])
            return


def many_means_all(schema: dict[str, Any]) -> None:
    """JSON Schema edit for `when:`, which also takes a list of conditions (all of them)."""
    for branch in list(schema.get("anyOf", [])):
        if "oneOf" in branch:
            schema["anyOf"].append({"type": "array", "items": branch, "minItems": 1})
            return


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


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any, data: Any) -> list[Any]:
    """The concrete types `tp` may stand for, narrowed by a `kind`/tag present in `data`."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [m for arg in typing.get_args(tp) for m in _members(arg, data)]
        tagged = [m for m in found if _tag_matches(m, data)]
        return tagged or found
    return [tp]


def _tag_matches(model: Any, data: Any) -> bool:
    """Whether every literal-typed field of `model` present in `data` has one of its allowed values."""
    if not (isinstance(model, type) and issubclass(model, BaseModel) and isinstance(data, dict)):
        return False
    literals = [
        (info.alias or name, typing.get_args(_unwrap(info.annotation)))
        for name, info in model.model_fields.items()
        if typing.get_origin(_unwrap(info.annotation)) is typing.Literal
    ]
    return bool(literals) and all(data[key] in allowed for key, allowed in literals if key in data)


def _child(tp: Any, key: Any, data: Any) -> list[Any]:
    out = []
    for member in _members(tp, data):
        origin = typing.get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name, info in member.model_fields.items():
                if (info.alias or name) == key:
                    out.append(info.annotation)
        elif origin in (list, tuple) and typing.get_args(member):
            out.append(typing.get_args(member)[0])
        elif origin is dict and typing.get_args(member):
            out.append(typing.get_args(member)[1])
    return out


def known_keys(root: type[BaseModel], data: Any, path: Path) -> list[str]:
    """The keys that the model allows in the mapping found at `path` of `data`."""
    types_here: list[Any] = [root]
    node = data
    for part in path:
        types_here = [c for t in types_here for c in _child(t, part, node)]
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    keys: list[str] = []
    for tp in types_here:
        for member in _members(tp, node):
            if isinstance(member, type) and issubclass(member, BaseModel):
                keys += [info.alias or name for name, info in member.model_fields.items()]
    if not keys and isinstance(node, dict):
        # The path went through a shape the walk cannot follow (a list standing for `all:`); guess the
        # model from the other keys of the mapping.
        for model in _all_models(StrictModel):
            fields = {info.alias or name for name, info in model.model_fields.items()}
            known = [key for key in node if key in fields]
            if known and len(known) == len(node) - 1:  # every key but the unknown one
                keys += sorted(fields)
    return sorted(set(keys))


def _all_models(base: type) -> list[type]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found += _all_models(sub)
    return found


def did_you_mean(word: str, candidates: list[str]) -> str:
    """' (did you mean "x"?)' when a candidate is close to `word`, else ''."""
    close = difflib.get_close_matches(str(word), [c for c in candidates if c != word], n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def data_path(doc: Document, loc: Path, keep_last: bool = False) -> tuple[Path, bool]:
    """Drop pydantic's union tags from `loc`; tell whether the error is about a mapping key.

    With `keep_last`, the last part stays even though the data lacks it (a missing key).
    """
    out: list[str | int] = []
    node = doc.data
    is_key = False
    for index, part in enumerate(loc):
        if part == "[key]":
            is_key = True
            continue
        if isinstance(node, dict | list):
            try:
                node = node[part]
                out.append(part)
                continue
            except (KeyError, IndexError, TypeError):
                pass
        if keep_last and index == len(loc) - 1:
            out.append(part)
    return tuple(out), is_key


# Messages for custom error types raised by discriminated unions (actions, conditions): type -> f(input).
CUSTOM_MESSAGES: dict[str, typing.Callable[[Any], str]] = {}


def problems_from(exc: ValidationError, doc: Document, root: type[BaseModel], base: Path = ()) -> list[Problem]:
    """Rewrite a pydantic ValidationError as Problems with positions and plain-language messages."""
    problems = []
    for err in exc.errors(include_url=False):
        kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
        path, is_key = data_path(doc, (*base, *err["loc"]), keep_last=kind == "missing")
        of_key = is_key
        if kind in CUSTOM_MESSAGES:
            message = CUSTOM_MESSAGES[kind](value)
        elif kind == "extra_forbidden":
            key = path[-1]
            candidates = known_keys(root, doc.data, path[:-1])
            message = f'unknown key "{key}"{did_you_mean(str(key), candidates)}'
            of_key = True
        elif kind == "missing":
            message = f'missing required key "{path[-1]}"'
            path, of_key = path[:-1], True
        elif kind == "union_tag_invalid":
            path = (*path, str(ctx.get("discriminator", "kind")).strip("'"))
            message = f"{describe(ctx.get('tag'))} is not one of: {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            of_key = True
            message = f'missing required key "{ctx.get("discriminator", "kind").strip(chr(39))}"'
        elif kind == "too_short":
            least = ctx.get("min_length", 1)
            message = f"needs at least {least} entr{'y' if least == 1 else 'ies'}"
        elif kind == "literal_error":
            message = f"expected {ctx.get('expected')}, got {describe(value)}"
        elif kind in ("value_error", "assertion_error"):
            message = str(ctx.get("error", err["msg"]))
        elif is_key:
            message = f"{describe(path[-1])} is not a valid name: {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            message = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {describe(value)}"
        problems.append(doc.problem(path, _unquote_env(message, value), of_key=of_key))
    return problems


def _env_values(value: Any, found: list[EnvStr]) -> list[EnvStr]:
    if isinstance(value, EnvStr) and str(value):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _env_values(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _env_values(item, found)
    return found


def _unquote_env(message: str, value: Any) -> str:
    """`message` with every value that came from the environment named instead of shown: a validator
    may quote its input (`got '...'`), and that input may be a secret put in the wrong field."""
    for env in sorted(_env_values(value, []), key=len, reverse=True):
        message = message.replace(repr(str(env)), env.describe())
        if len(env) >= 4:  # shorter text would be replaced inside ordinary words
            message = message.replace(str(env), env.describe())
    return message


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Problems in file order, so the list reads top to bottom like the file."""
    return sorted(problems, key=lambda p: (p.file, p.line or 0, p.column or 0))


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

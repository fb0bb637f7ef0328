"""The translation of pydantic's errors into Problems, for people who edit YAML.

Unknown keys get a did-you-mean, values that came from the environment are never echoed, and each
error carries file:line:column and the path inside the document (`rules[2].actions[0]`).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from gu1sync.core.values import CUSTOM_MESSAGES, StrictModel, describe, did_you_mean
from gu1sync.core.yamlfile import Document, EnvStr, Path, Problem


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

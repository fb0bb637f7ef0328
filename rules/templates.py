"""Templates in rule values: Jinja2 in an immutable sandbox, strict about undefined names.

- A value that is one expression, `"{{ payload.amount }}"`, keeps its type (number, boolean, list);
  anything else renders to a string.
- A path that is not in the event fails the action with the path named: `entity.externalId`.
- Filters: default, upper, lower, truncate, join, tojson, date, slack. No globals, no private attributes,
  nothing that changes data, no huge strings or lists built by `*` or `**`.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
    pass_environment,
    pass_eval_context,
)
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import do_default, do_join, do_lower, do_truncate, do_upper
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gu1sync.schema import did_you_mean
from gu1sync.timeutil import parse_iso

from .paths import ROOTS

_MAX_BUILT = 100_000  # longest string or list a template may build with * or **

# id(dict or list reached while rendering) -> its path, for naming what is missing.
_paths: contextvars.ContextVar[dict[int, str] | None] = contextvars.ContextVar("gu1sync_template_paths", default=None)


class TemplateError(Exception):
    """A template could not be rendered; the message names what was missing or refused."""


class _Missing(ChainableUndefined, StrictUndefined):
    """Undefined that fails when used, knows the full path of what was missing (entity.externalId, not
    'externalId'), and lets `a.b.c | default(...)` reach the default when `a.b` is already missing."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        paths = _paths.get() or {}
        if self._undefined_obj is not None and id(self._undefined_obj) in paths:
            parent = paths[id(self._undefined_obj)]
            name = self._undefined_name
            where = f"{parent}[{name}]" if isinstance(name, int) else f"{parent}.{name}"
            return f"'{where}' is not in the event"
        return f"'{self._undefined_name}' is not in the event"


def _date(value: Any, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """Format an ISO 8601 timestamp (or unix seconds) with strftime codes."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment: datetime | None = datetime.fromtimestamp(value, UTC)
    else:
        moment = parse_iso(value)
    if moment is None:
        raise TemplateError(f"date: {str(value)[:60]!r} is not a timestamp")
    return moment.strftime(fmt)


def _slack(value: Any) -> str:
    """Escape text for Slack (&, <, >), so that event data cannot @-mention or forge links."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _size(value: Any) -> int:
    """Characters in a string, or in all the strings of a list (one level), for the limits below."""
    if isinstance(value, str):
        return len(value)
    return sum(len(item) if isinstance(item, str) else 1 for item in value)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=min(indent, 8) if indent else None, default=str)


@pass_environment
def _truncate(
    env: Any, text: Any, length: int = 255, killwords: bool = False, end: str = "...", leeway: int = 0
) -> str:
    """Jinja's truncate, but never longer than `length` (Jinja's own lets 5 more characters through)."""
    return do_truncate(env, str(text), length, killwords, end, leeway)


@pass_eval_context
def _join(eval_ctx: Any, value: Any, separator: str = "", attribute: Any = None) -> str:
    """Jinja's join, refusing to build more than the limit."""
    if isinstance(value, list | tuple) and _size(value) + len(separator) * len(value) > _MAX_BUILT:
        raise SecurityError("the result would be too large")
    return do_join(eval_ctx, value, separator, attribute)


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and left.bit_length() * right > 4096:
                raise SecurityError("the result would be too large")
        if operator == "*" and (isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple)):
            count = right if isinstance(left, str | list | tuple) else left
            item = left if isinstance(left, str | list | tuple) else right
            if isinstance(count, int) and count * max(_size(item), 1) > _MAX_BUILT:
                raise SecurityError("the result would be too large")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("text formatting with % is not available; use ~ and the filters")
        return super().call_binop(context, operator, left, right)

    def _track(self, obj: Any, key: Any, value: Any) -> Any:
        paths = _paths.get()
        if paths is not None and isinstance(value, dict | list) and id(obj) in paths:
            parent = paths[id(obj)]
            paths.setdefault(id(value), f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key}")
        return value

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:  # data first: payload.items is a key, not dict.items
            return self._track(obj, attribute, obj[attribute])
        return self._track(obj, attribute, super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self._track(obj, argument, super().getitem(obj, argument))


# While a single-expression template renders, its value is kept here instead of being made text.
_captured: contextvars.ContextVar[list | None] = contextvars.ContextVar("gu1sync_template_value", default=None)
_MAX_RENDERED = 1_000_000  # characters: no field of any action needs more


@pass_eval_context  # (so that Jinja does not fold constant expressions with it at compile time)
def _finalize(eval_context: Any, value: Any) -> Any:
    box = _captured.get()
    if box is not None:
        box.append(value)
        return ""
    return "" if value is None else value  # in text, a null is nothing, not the word None


ENV = _Environment(undefined=_Missing, autoescape=False, keep_trailing_newline=True, finalize=_finalize)
ENV.globals.clear()
ENV.filters = {
    "default": do_default,
    "d": do_default,
    "upper": do_upper,
    "lower": do_lower,
    "truncate": _truncate,
    "join": _join,
    "tojson": _tojson,
    "date": _date,
    "slack": _slack,
}

_TEMPLATE_MARK = re.compile(r"\{\{|\{%|\{#")


def is_template(text: str) -> bool:
    """Whether a string holds Jinja syntax at all."""
    return bool(_TEMPLATE_MARK.search(text))


class Template:
    """One compiled template value."""

    def __init__(self, source: str):
        self.source = source
        try:
            tree = ENV.parse(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template error on its line {exc.lineno}: {exc.message}") from None
        _refuse_private(tree)
        for name in _filters_used(tree):
            if name not in ENV.filters:
                raise ValueError(f"unknown filter {name!r}; available: {', '.join(sorted(ENV.filters))}")
        try:
            undeclared = meta.find_undeclared_variables(tree)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template error on its line {exc.lineno}: {exc.message}") from None
        for name in sorted(undeclared):
            if name not in ROOTS:
                raise ValueError(
                    f"unknown name {name!r}{did_you_mean(name, list(ROOTS))}; templates see {', '.join(ROOTS)}"
                )
        for node in tree.find_all(nodes.Name):
            if node.name == "self":
                raise ValueError("templates cannot use 'self'")
        self._single = _is_single_expression(tree)
        self._template = ENV.from_string(tree)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, context: dict[str, Any]) -> Any:
        """The value for this event; TemplateError naming what is missing or refused.

        Whatever goes wrong inside a template is this action's failure, named, never a crash of the
        worker: the sandbox's refusals, a missing path, and anything a filter raises on odd data.
        """
        token = _paths.set({id(value): name for name, value in context.items() if isinstance(value, dict | list)})
        box: list[Any] | None = [] if self._single else None
        captured = _captured.set(box)
        try:
            text = self._template.render(**context)
            if box is None:
                if len(text) > _MAX_RENDERED:
                    raise TemplateError(f"the result is longer than {_MAX_RENDERED} characters")
                return text
            (value,) = box
            if isinstance(value, Undefined):
                str(value)  # raises UndefinedError naming the path
            return _plain(value)
        except UndefinedError as exc:
            raise TemplateError(str(exc)) from None
        except SecurityError as exc:
            raise TemplateError(f"refused by the sandbox: {exc}") from None
        except TemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 - becomes this action's recorded, permanent failure
            raise TemplateError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        finally:
            _captured.reset(captured)
            _paths.reset(token)


def _is_single_expression(tree: nodes.Template) -> bool:
    """Whether the template is one `{{ expression }}` (whitespace and comments around it allowed)."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return False
    parts = tree.body[0].nodes
    values = [p for p in parts if not isinstance(p, nodes.TemplateData)]
    text = [p for p in parts if isinstance(p, nodes.TemplateData)]
    return len(values) == 1 and all(not p.data.strip() for p in text)


def _plain(value: Any) -> Any:
    """The value as plain JSON types (Jinja hands back Markup, tuples and its own objects)."""
    if isinstance(value, str):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    raise TemplateError(f"the expression gives a {type(value).__name__}, not a value (text, number, list...)")


def _refuse_private(tree: nodes.Node) -> None:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise ValueError(f"templates cannot reach {name!r}: names starting with '_' are off limits")


def _filters_used(tree: nodes.Node) -> Iterator[str]:
    for node in tree.find_all(nodes.Filter):
        yield node.name


def compile_value(value: Any) -> Any:
    """Compile every template inside a config value (dicts and lists included); ValueError if one is bad."""
    if isinstance(value, str):
        return Template(value) if is_template(value) else value
    if isinstance(value, dict):
        return {key: compile_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [compile_value(item) for item in value]
    return value


def render_value(value: Any, context: dict[str, Any], where: str = "") -> Any:
    """Render a compiled value for one event; a TemplateError names the key it happened at."""
    if isinstance(value, Template):
        try:
            return value.render(context)
        except TemplateError as exc:
            raise TemplateError(f"{where}: {exc}" if where else str(exc)) from None
    if isinstance(value, dict):
        return {
            key: render_value(item, context, f"{where}.{key}" if where else str(key)) for key, item in value.items()
        }
    if isinstance(value, list):
        return [render_value(item, context, f"{where}[{n}]") for n, item in enumerate(value)]
    return value

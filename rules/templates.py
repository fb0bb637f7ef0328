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

from jinja2 import ChainableUndefined, StrictUndefined, TemplateSyntaxError, meta, nodes
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


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*" and (isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple)):
            count = right if isinstance(left, str | list | tuple) else left
            item = left if isinstance(left, str | list | tuple) else right
            if isinstance(count, int) and count * max(len(item), 1) > _MAX_BUILT:
                raise SecurityError("the result would be too large")
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


ENV = _Environment(undefined=_Missing, autoescape=False, keep_trailing_newline=True)
ENV.globals.clear()
ENV.filters = {
    "default": do_default,
    "d": do_default,
    "upper": do_upper,
    "lower": do_lower,
    "truncate": do_truncate,
    "join": do_join,
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
        self._expression = None
        body = tree.body
        if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1:
            if not isinstance(body[0].nodes[0], nodes.TemplateData):
                inner = source.strip()[2:-2].strip().strip("-+").strip()
                self._expression = ENV.compile_expression(inner, undefined_to_none=False)
        self._template = ENV.from_string(source) if self._expression is None else None

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, context: dict[str, Any]) -> Any:
        """The value for this event; TemplateError naming what is missing or refused."""
        token = _paths.set({id(value): name for name, value in context.items() if isinstance(value, dict | list)})
        try:
            if self._expression is not None:
                value = self._expression(**context)
                if isinstance(value, StrictUndefined):
                    str(value)  # raises UndefinedError with the path
                return _plain(value)
            return self._template.render(**context)
        except UndefinedError as exc:
            raise TemplateError(str(exc)) from None
        except SecurityError as exc:
            raise TemplateError(f"refused by the sandbox: {exc}") from None
        except TemplateError:
            raise
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}") from None
        finally:
            _paths.reset(token)


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

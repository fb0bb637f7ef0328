"""Templates in rule and action values: Jinja2 in an immutable sandbox, strict about undefined names.

- A value that is one expression, `"{{ payload.amount }}"`, keeps its type (number, boolean, list);
  anything else renders to a string.
- A path that is not in the event fails the action with the path named: `entity.externalId`.
- Slack text (`text`, and `mrkdwn` text objects in blocks) is safe by default: every value that comes
  from the event is escaped for Slack (&, <, >), so that a name typed as `<!channel>` or
  `<https://evil.example|Review case>` shows as typed, never pings a channel or plants a link.
  `| safe` lets one value through as it is (`check` warns where a rule does).
- Filters: default, upper, lower, truncate, join, tojson, date, slack, safe. No globals, no private attributes,
  nothing that changes data, no huge strings or lists built by `*`, `**`, `+`, `~`, or by methods such as
  `center` and `replace`, no macros, includes or recursive loops, and loops bounded in all.

Long because every limit of the sandbox (sizes, loops, formats, methods, operators) must sit next to
the environment that applies it, where a reader can check that none is missing.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from string import Formatter
from typing import Annotated, Any

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
from jinja2.visitor import NodeTransformer
from pydantic import BeforeValidator, WithJsonSchema

from .paths import ROOTS
from .timeutil import parse_iso
from .values import did_you_mean

_MAX_BUILT = 100_000  # longest string or list a template may build with * or **, or a method call
_MAX_RENDERED = 1_000_000  # characters: no field of any action needs more
_MAX_LOOPS = 10_000  # items all the loops of one rendering may go through (loops in loops multiply)

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


def slack_escape(value: Any) -> str:
    """Text for Slack: &, < and > escaped, so that it cannot @-mention, link or format anything."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# While Slack text renders, its event data is already escaped (see Template.render).
_slack_text: contextvars.ContextVar[bool] = contextvars.ContextVar("gu1sync_template_slack", default=False)


def _slack(value: Any) -> str:
    """Escape text for Slack (&, <, >), so that event data cannot @-mention or forge links. In Slack text,
    where the event's values are escaped already, it escapes only what is not (a literal)."""
    if _slack_text.get():
        return slack_escape(_slack_unescape(str(value)))
    return slack_escape(value)


def _safe(value: Any) -> Any:
    """In Slack text: the event's value as it is, not escaped (a mention or a link the event carries on
    purpose). Elsewhere values are never escaped, and it changes nothing."""
    if _slack_text.get() and isinstance(value, str):
        return _slack_unescape(value)
    return value


def _escaped(value: Any) -> Any:
    """A copy of event data with every string (keys too) escaped for Slack."""
    if isinstance(value, str):
        return slack_escape(value)
    if isinstance(value, dict):
        return {(slack_escape(k) if isinstance(k, str) else k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


# The last context escaped for Slack text, and its escaped copy: an event's Slack post renders several
# fields, each from the same context.
_escaped_context: contextvars.ContextVar[tuple[dict, dict] | None] = contextvars.ContextVar(
    "gu1sync_template_escaped", default=None
)


def _for_slack(context: dict[str, Any]) -> dict[str, Any]:
    cached = _escaped_context.get()
    if cached is not None and cached[0] is context:
        return cached[1]
    escaped = _escaped(context)
    _escaped_context.set((context, escaped))
    return escaped


def _size(value: Any, cap: int = _MAX_RENDERED) -> int:
    """What `value` weighs once written out, for the limits below: the characters of its strings (one at
    least) and one for every other value, a part shared N times counted N times, as str() and tojson write
    it out. Counting stops once past `cap`, so that weighing costs no more than the limit."""
    total, pending = 0, [value]
    while pending and total <= cap:
        item = pending.pop()
        if isinstance(item, str | bytes):
            total += max(len(item), 1)
            continue
        total += 1
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            pending += item
    return total


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


def _built_by(method: Any, args: tuple, kwargs: dict) -> int:
    """How large a string a str, bytes or int method could build from these arguments (0: nothing large).

    These are the methods whose result can be far larger than what they are given ('x'.center(10**9)).
    """
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if name == "fromkeys" and isinstance(owner, type) and issubclass(owner, dict) and args:  # {k: same for k in ...}
        keys = args[0] if hasattr(args[0], "__len__") else ()
        return len(keys) * _size(args[1] if len(args) > 1 else None, _MAX_BUILT)
    if not isinstance(owner, str | bytes | int):
        return 0
    first = args[0] if args else kwargs.get({"expandtabs": "tabsize", "to_bytes": "length"}.get(name, ""))
    if name in ("center", "ljust", "rjust", "zfill", "to_bytes") and isinstance(first, int):
        return first
    if name == "expandtabs" and isinstance(owner, str | bytes):
        return len(owner) * (first if isinstance(first, int) else 8)
    if name == "replace" and len(args) >= 2 and all(isinstance(a, type(owner)) for a in args[:2]):
        count = owner.count(args[0]) if args[0] else len(owner) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        return len(owner) + count * len(args[1])
    if name == "join" and isinstance(owner, str | bytes) and hasattr(first, "__len__"):
        return _size(first) + len(owner) * len(first)
    if name == "translate" and isinstance(owner, str) and isinstance(first, dict):
        longest = max((len(v) for v in first.values() if isinstance(v, str)), default=1)
        return len(owner) * longest
    return 0


_FORMAT_NUMBER = re.compile(r"\d+")


def _check_format(text: str) -> None:
    """Refuse a str.format width or precision that builds a huge string ('{:>999999999}')."""
    for _, _, spec, _ in Formatter().parse(text):
        if spec and ("{" in spec or any(len(n) > 6 or int(n) > _MAX_BUILT for n in _FORMAT_NUMBER.findall(spec))):
            raise SecurityError(f"a format width or precision is at most {_MAX_BUILT}, never taken from an argument")


# While a template renders: how many more loop items it may go through.
_loops_left: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("gu1sync_template_loops", default=None)


def _loop_items(items: Any) -> Any:
    """A loop's items, counted against the rendering's budget (every loop is rewritten to call this)."""
    left = _loops_left.get()
    try:
        count = len(items)
    except TypeError:  # not a collection: the loop itself says why it cannot go through it
        return items
    if left is not None:
        left[0] -= count
        if left[0] < 0:
            raise SecurityError(f"the loops would go through more than {_MAX_LOOPS} items")
    return items


def _built(value: Any) -> Any:
    """A list, tuple or dict written in a template, refused when it stands for too much: `[a, a, a]` where `a`
    is `[b, b, b]`... shares its parts, and would only blow up when written out (every literal goes through here)."""
    if _size(value) > _MAX_RENDERED:
        raise SecurityError("the result would be too large")
    return value


def _concat(*parts: Any) -> str:
    """`a ~ b`, refusing to build more than a rendering may hold (every `~` is rewritten to call this)."""
    texts = [str(part) for part in parts]
    if sum(len(text) for text in texts) > _MAX_RENDERED:
        raise SecurityError("the result would be too large")
    return "".join(texts)


def _call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.ImportedName(f"{__name__}.{name}"), args, [], None, None, lineno=lineno)


class _Bounded(NodeTransformer):
    """Routes every loop's items, every `~` and every list, tuple or dict literal through the limits above."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = _call("_loop_items", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return _call("_concat", list(node.nodes), node.lineno)

    def visit_List(self, node: nodes.Expr) -> nodes.Expr:
        self.generic_visit(node)
        return _call("_built", [node], node.lineno) if getattr(node, "ctx", "load") == "load" else node

    visit_Tuple = visit_Dict = visit_List


_SEQUENCES = (str, bytes, list, tuple)


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    @staticmethod
    def concat(parts: Iterable[str]) -> str:  # type: ignore[override]
        """Join a rendering's output (or a block's), refusing to go past the limit while it is produced."""
        out, size = [], 0
        for part in parts:
            size += len(part)
            if size > _MAX_RENDERED:
                raise SecurityError(f"the result is longer than {_MAX_RENDERED} characters")
            out.append(part)
        return "".join(out)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if _built_by(obj, args, kwargs) > _MAX_BUILT:
            raise SecurityError("the result would be too large")
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and left.bit_length() * right > 4096:
                raise SecurityError("the result would be too large")
        if operator == "*" and (isinstance(left, _SEQUENCES) or isinstance(right, _SEQUENCES)):
            count = right if isinstance(left, _SEQUENCES) else left
            item = left if isinstance(left, _SEQUENCES) else right
            if isinstance(count, int) and count * _size(item, _MAX_BUILT) > _MAX_BUILT:
                raise SecurityError("the result would be too large")
        if operator == "*" and _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > 4096:
            raise SecurityError("the result would be too large")
        if operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            if _size(left) + _size(right) > _MAX_RENDERED:
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# While a single-expression template renders, its value is kept here instead of being made text.
_captured: contextvars.ContextVar[list | None] = contextvars.ContextVar("gu1sync_template_value", default=None)


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
    "safe": _safe,
}

_TEMPLATE_MARK = re.compile(r"\{\{|\{%|\{#")


def is_template(text: str) -> bool:
    """Whether a string holds Jinja syntax at all."""
    return bool(_TEMPLATE_MARK.search(text))


class Template:
    """One compiled template value. `slack_text`: it renders Slack text, where every value from the event
    is escaped unless the template says `| safe`."""

    def __init__(self, source: str, *, slack_text: bool = False):
        self.source = source
        self.slack_text = slack_text
        try:
            tree = ENV.parse(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template error on its line {exc.lineno}: {exc.message}") from None
        except RecursionError:  # Jinja's parser recurses once per bracket: ( ( ( ... nested past Python's limit
            raise ValueError("template error: nested too deeply (brackets or expressions within each other)") from None
        _refuse_private(tree)
        _refuse_statements(tree)
        self.filters = set(_filters_used(tree))
        for name in self.filters:
            if name not in ENV.filters:
                raise ValueError(f"unknown filter {name!r}; available: {', '.join(sorted(ENV.filters))}")
        try:
            undeclared = meta.find_undeclared_variables(tree)  # compiles it, constant parts evaluated
        except TemplateSyntaxError as exc:
            raise ValueError(f"template error on its line {exc.lineno}: {exc.message}") from None
        except _COMPILE_FAILURES as exc:
            raise ValueError(f"template error: {_compile_problem(exc)}") from None
        for name in sorted(undeclared):
            if name not in ROOTS:
                raise ValueError(
                    f"unknown name {name!r}{did_you_mean(name, list(ROOTS))}; templates see {', '.join(ROOTS)}"
                )
        for node in tree.find_all(nodes.Name):
            if node.name == "self":
                raise ValueError("templates cannot use 'self'")
        self._single = _is_single_expression(tree)
        tree = _Bounded().visit(tree)
        tree.set_environment(ENV)
        try:
            self._template = ENV.from_string(tree)
        except _COMPILE_FAILURES as exc:
            # Jinja's optimizer evaluates constant parts while it compiles ('x'.payload ~ payload): what
            # they raise is this template's problem, said as one, never a traceback.
            raise ValueError(f"template error: {_compile_problem(exc)}") from None

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, context: dict[str, Any]) -> Any:
        """The value for this event; TemplateError naming what is missing or refused.

        Whatever goes wrong inside a template is this action's failure, named, never a crash of the
        worker: the sandbox's refusals, a missing path, and anything a filter raises on odd data.
        """
        if self.slack_text:
            context = _for_slack(context)
        token = _paths.set({id(value): name for name, value in context.items() if isinstance(value, dict | list)})
        box: list[Any] | None = [] if self._single else None
        captured = _captured.set(box)
        loops = _loops_left.set([_MAX_LOOPS])
        slack = _slack_text.set(self.slack_text)
        try:
            text = self._template.render(**context)
            if box is None:
                if len(text) > _MAX_RENDERED:
                    raise TemplateError(f"the result is longer than {_MAX_RENDERED} characters")
                return text
            (value,) = box
            if isinstance(value, Undefined):
                str(value)  # raises UndefinedError naming the path
            if isinstance(value, str) and len(value) > _MAX_RENDERED:
                raise TemplateError(f"the result is longer than {_MAX_RENDERED} characters")
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
            _slack_text.reset(slack)
            _loops_left.reset(loops)
            _captured.reset(captured)
            _paths.reset(token)


# What Jinja's optimizer may raise while it evaluates a template's constant parts during compilation.
_COMPILE_FAILURES = (
    UndefinedError,
    SecurityError,
    TemplateError,
    ArithmeticError,
    TypeError,
    ValueError,
    LookupError,
    RecursionError,  # an expression nested deeper than Python's stack, when compiled
)


def _compile_problem(exc: Exception) -> str:
    if isinstance(exc, UndefinedError):
        return f"{exc} (a name that is not there, in a part of the template that is the same for every event)"
    if isinstance(exc, SecurityError):
        return f"refused by the sandbox: {exc}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


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


_STATEMENTS = {
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}


def _refuse_statements(tree: nodes.Node) -> None:
    """Macros, includes and recursive loops: what a value of an action never needs, and what can run away."""
    for node in tree.find_all((*_STATEMENTS, nodes.For)):
        if isinstance(node, nodes.For):
            if node.recursive:
                raise ValueError("recursive loops ({% for ... recursive %}) are not available in templates")
            continue
        keyword = _STATEMENTS[type(node)]
        raise ValueError(f"{{% {keyword} %}} is not available in templates (on its line {node.lineno})")


def _filters_used(tree: nodes.Node) -> Iterator[str]:
    for node in tree.find_all(nodes.Filter):
        yield node.name


def compile_value(value: Any, *, slack_text: bool = False) -> Any:
    """Compile every template inside a config value (dicts and lists included); ValueError if one is bad.
    `slack_text`: the strings are Slack text (see Template)."""
    if isinstance(value, str):
        return Template(value, slack_text=slack_text) if is_template(value) else value
    if isinstance(value, dict):
        return {key: compile_value(item, slack_text=slack_text) for key, item in value.items()}
    if isinstance(value, list):
        return [compile_value(item, slack_text=slack_text) for item in value]
    return value


def compile_blocks(value: Any) -> Any:
    """Compile Slack Block Kit blocks: the text of each `mrkdwn` text object is Slack text (escaped event
    values); every other string (plain_text, URLs, ids) is a template like any other."""
    if isinstance(value, dict):
        mrkdwn = value.get("type") == "mrkdwn"
        return {
            key: compile_value(item, slack_text=True) if mrkdwn and key == "text" else compile_blocks(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [compile_blocks(item) for item in value]
    return compile_value(value)


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


# The types of config fields that may hold templates (compiled when the config loads).
Templated = Annotated[
    Any,
    BeforeValidator(compile_value),
    WithJsonSchema({"description": "a value; strings may hold {{ templates }}"}),
]
TemplatedText = Annotated[
    str | Template,
    BeforeValidator(lambda v: compile_value(v) if isinstance(v, str) else v),
    WithJsonSchema({"type": "string", "description": "text; may hold {{ templates }}"}),
]
SlackText = Annotated[
    str | Template,
    BeforeValidator(lambda v: compile_value(v, slack_text=True) if isinstance(v, str) else v),
    WithJsonSchema(
        {"type": "string", "description": "Slack text; may hold {{ templates }}, whose event values are escaped"}
    ),
]
SlackBlocks = Annotated[
    Any,
    BeforeValidator(compile_blocks),
    WithJsonSchema({"description": "Block Kit blocks; mrkdwn text escapes the event's values"}),
]

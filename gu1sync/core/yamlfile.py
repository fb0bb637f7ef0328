"""Read config YAML the strict way: positions for every key, duplicate keys refused, ${ENV} filled in.

Everything here reports `Problem`s that name the file, line, column and the path inside the
document (`rules[2].actions[0]`), so an ops engineer can go straight to the mistake.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a config file, with where it is."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        label = "" if self.severity == "error" else f"{self.severity}: "
        return f"{where}: {label}{self.path + ': ' if self.path else ''}{self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every error found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @property
    def errors(self) -> list[Problem]:
        """The problems that are errors (the others are warnings, listed for context)."""
        return [p for p in self.problems if p.severity == "error"]


def format_path(path: Path) -> str:
    """Render a path the way the docs write it: rules[2].actions[0].salesforce.upsert."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that records marks and treats only true/false as booleans (YAML 1.2).

    YAML 1.1 would read the rule key `on:` as the boolean True and `no` as False; ops teams
    write `on: kyc.validation_approved` and country code `NO`, so those must stay strings.
    Timestamps stay strings too: conditions compare them as text or parse them on purpose.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self.key_marks: dict[int, dict[Any, tuple[yaml.Mark, yaml.Mark]]] = {}
        self.duplicates: list[tuple[Any, yaml.Mark, yaml.Mark]] = []
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        """PyYAML's, refusing absurd nesting before Python's stack runs out (it composes recursively)."""
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, _TOO_DEEP, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_REPLACED = (
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.2's numbers: no octal from a leading zero (01234 is an id, kept as text), no 10:30 base 60.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+|0o[0-7]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text[:2] in ("0x", "0o") else int(text)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterator[dict]:
    data: dict = {}
    yield data
    own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)  # merge keys (<<) come first and may be overridden
    marks: dict[Any, tuple[yaml.Mark, yaml.Mark]] = {}
    seen_own: dict[Any, yaml.Mark] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found an unusable key", key_node.start_mark
            ) from None
        if id(key_node) in own:
            if key in seen_own:  # YAML would silently keep the last one; we refuse both
                loader.duplicates.append((key, key_node.start_mark, seen_own[key]))
                continue
            seen_own[key] = key_node.start_mark
        data[key] = loader.construct_object(value_node, deep=True)
        marks[key] = (key_node.start_mark, value_node.start_mark)
    loader.key_marks[id(data)] = marks


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Iterator[list]:
    data: list = []
    yield data
    marks: dict[Any, tuple[yaml.Mark, yaml.Mark]] = {}
    for index, item in enumerate(node.value):
        data.append(loader.construct_object(item, deep=True))
        marks[index] = (item.start_mark, item.start_mark)
    loader.key_marks[id(data)] = marks


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


@dataclass
class Document:
    """A YAML document as plain Python data, plus the position of every key and item in it."""

    file: str
    data: Any
    marks: dict[int, dict[Any, tuple[yaml.Mark, yaml.Mark]]] = field(default_factory=dict)
    root_mark: tuple[int, int] | None = None
    duplicates: list[Problem] = field(default_factory=list)
    text: str = ""  # the source as it was read (the console shows each rule as written)

    def position(self, path: Path, *, of_key: bool = False) -> tuple[int | None, int | None]:
        """1-based (line, column) of the value at `path` (or of its key), or of the nearest parent.

        Parts of `path` that are not in the data are skipped: pydantic puts union tags in its error
        locations, and a missing key is best pointed at through the key of the mapping that lacks it.
        """
        node: Any = self.data
        found: tuple[yaml.Mark, yaml.Mark] | None = None
        for part in path:
            marks = self.marks.get(id(node))
            if marks is None or part not in marks:
                continue
            found = marks[part]
            node = node[part]
        if found is None:
            return self.root_mark or (None, None)
        mark = found[0] if of_key else found[1]
        return mark.line + 1, mark.column + 1

    def problem(self, path: Path, message: str, *, of_key: bool = False, severity: str = "error") -> Problem:
        """A Problem at `path` in this document."""
        line, column = self.position(path, of_key=of_key)
        return Problem(self.file, line, column, format_path(path), message, severity)

    def get(self, path: Path, default: Any = None) -> Any:
        """The value at `path`, or `default` when some part of it is absent."""
        node = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node


MAX_BYTES = 2 * 1024 * 1024  # the shipped config is 6 KB; anything near this is a mistake or an attack
MAX_VALUES = 1_000_000  # a config is a few thousand values; aliases nested ten deep make billions
MAX_DEPTH = 64  # a config nests about ten deep (rules[].actions[].slack.post.blocks[]...)
_TOO_DEEP = f"the document nests more than {MAX_DEPTH} levels deep"
_TOO_LARGE = (
    f"this stands for more than {MAX_VALUES} values once its aliases (*name) are expanded; use fewer nested aliases"
)


def _measure(root: yaml.Node) -> tuple[str, yaml.Mark] | None:
    """What is wrong with the size or depth of the document once every alias (and merge <<) is expanded.

    Walks the composed nodes, not the data: an alias is the same node, so each is measured once,
    iteratively (the data can be deeper than Python's stack), before anything is constructed.
    A node inside itself is left to PyYAML, which refuses it.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        if not children_done:
            if id(node) not in measured:
                measured[id(node)] = (0, 0)  # until done: a cycle adds nothing
                stack.append((node, True))
                stack.extend((child, False) for child in children if id(child) not in measured)
            continue
        values = min(1 + sum(measured[id(c)][0] for c in children), MAX_VALUES + 1)
        depth = 1 + max((measured[id(c)][1] for c in children), default=0)
        measured[id(node)] = (values, depth)
        if values > MAX_VALUES:
            return _TOO_LARGE, node.start_mark
        if depth > MAX_DEPTH:
            return _TOO_DEEP + " once its aliases (*name) are expanded", node.start_mark
    return None


def parse_yaml(text: str, file: str) -> Document:
    """Parse one YAML document; a syntax error, a duplicate key, or a document too large becomes a ConfigError."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "replace")) > MAX_BYTES:
        message = f"the file is larger than {MAX_BYTES // (1024 * 1024)} MiB; a config is a few kilobytes"
        raise ConfigError([Problem(file, None, None, "", message)])
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a control character (NUL...): refused before anything is parsed
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        message = f"unacceptable character #x{exc.character:04x}: special characters are not allowed"
        raise ConfigError([Problem(file, line, column, "", message)]) from None
    try:
        node = loader.get_single_node()
        wrong = _measure(node) if node is not None else None
        if wrong is not None:
            raise yaml.composer.ComposerError(None, None, wrong[0], wrong[1])
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        message = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        if mark and "${" in text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else False:
            message += ' (inside [ ] or { }, quote a value that holds ${...}: "${NAME}")'
        raise ConfigError([Problem(file, line, column, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, None, None, "", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    root = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else None
    doc = Document(file=file, data=data, marks=loader.key_marks, root_mark=root, text=text)
    doc.duplicates = [
        Problem(
            file, mark.line + 1, mark.column + 1, "", f'duplicate key "{key}" (first given on line {first.line + 1})'
        )
        for key, mark, first in loader.duplicates
    ]
    return doc


class EnvStr(str):
    """A string that was (partly) filled in from environment variables; remembers which ones."""

    refs: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    whole: str | None = None  # the variable's name when the text was exactly ${NAME}

    def describe(self) -> str:
        """How to name this value in a message without showing it."""
        return "the value of " + ", ".join(f"${n}" for n in self.refs)


# ${NAME} or ${NAME:-default}; $${ is a literal ${.
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_ONLY = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def interpolate(doc: Document, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Replace ${NAME} and ${NAME:-default} in every string of `doc`, in place.

    Like the shell, `:-default` applies when the variable is unset or empty. An unset variable
    without a default is a Problem naming the variable; its value never appears in a message.
    """
    env = os.environ if environ is None else environ
    problems: list[Problem] = []

    def fill(text: str, path: Path) -> str:
        refs: list[str] = []
        missing: list[str] = []

        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            refs.append(name)
            value = env.get(name)
            if value:
                return value
            if default is not None:
                return default
            if value is None:
                missing.append(name)
                problems.append(doc.problem(path, f"environment variable {name} is not set"))
            return ""

        filled = _ENV_REF.sub(one, text)
        if not refs:
            return filled
        out = EnvStr(filled)
        out.refs, out.missing = tuple(refs), tuple(missing)
        whole = ENV_ONLY.match(text)
        out.whole = whole.group(1) if whole else None
        return out

    seen: set[int] = set()

    def walk(node: Any, path: Path) -> None:
        if id(node) in seen:  # an alias: the same object, already filled in
            return
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            if isinstance(value, str) and "$" in value:
                node[key] = fill(value, (*path, key))
            else:
                walk(value, (*path, key))

    walk(doc.data, ())
    return problems

"""`simulate` and config tests: what the rules make of an event, with no side effects.

Nothing here touches the database, Redis, Salesforce or Slack; throttles are reported, not checked.
Config tests, and the event files they name, are read here and only here (`load_config_tests`): by
`check` and by the tests, never when a receiver or a worker starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rules.engine import RuleResult, evaluate
from rules.model import ConfigTest

from .config import Config
from .config.problems import problems_from, sort_problems
from .core.body import parse_json
from .core.errors import Unreadable
from .core.records import Event, make_event
from .core.timeutil import iso, utcnow
from .core.values import StrictModel, did_you_mean
from .core.yamlfile import ConfigError, Problem, interpolate, parse_yaml
from .kinds import NoHeaders, kind_for


class SimulationError(Exception):
    """The event cannot be simulated (unknown source, not an envelope of its kind)."""


def default_source(config: Config) -> str:
    """The source an event is assumed to come from: the first gu1 source, else the first one."""
    gu1 = [name for name, source in config.sources.items() if source.kind == "gu1"]
    return (gu1 or list(config.sources))[0]


def event_from_document(config: Config, document: Any, source_name: str | None = None) -> Event:
    """The event the receiver would make of `document` arriving at `source_name` (not verified)."""
    name = source_name or default_source(config)
    if name not in config.sources:
        raise SimulationError(f"no source named {name!r}; sources: {', '.join(config.sources)}")
    if not isinstance(document, dict):
        raise SimulationError("the event is not a JSON object (an envelope such as {event, timestamp, payload})")
    source = config.sources[name]
    kind = kind_for(source)
    try:
        envelope = kind.parse(document, NoHeaders())
    except Unreadable as exc:
        raise SimulationError(f"not a {source.kind} event: {exc.message}") from None
    raw = json.dumps(document, ensure_ascii=False).encode()
    return make_event(
        source=name,
        kind=source.kind,
        environment=source.environment,
        envelope=envelope,
        raw=raw,
        received_at=iso(utcnow()),
        secret=None,
    )


def simulate(config: Config, document: Any, source_name: str | None = None) -> tuple[Event, list[RuleResult]]:
    """Evaluate every rule against an event document."""
    event = event_from_document(config, document, source_name)
    return event, evaluate(config.rules, event)


def format_results(config: Config, event: Event, results: list[RuleResult]) -> str:
    """The text `simulate` prints."""
    lines = [
        f"{event.type} at source {event.source} ({event.environment}), config {config.file} version {config.digest}",
        "",
    ]
    for result in results:
        if result.matched:
            note = "  (shadow: recorded, never sent)" if result.mode == "shadow" else ""
            lines.append(f"MATCHED  {result.rule}{note}")
            if result.throttle_key is not None:
                lines.append(f"  throttle: once per {result.throttle_window:g} s for key {result.throttle_key!r}")
            if result.error:
                lines.append(f"  FAILED: {result.error}")
            for action in result.actions:
                if action.error:
                    lines.append(f"  [{action.index}] {action.type}  FAILED: {action.error}")
                else:
                    lines.append(f"  [{action.index}] {action.type}")
                    rendered = json.dumps(action.params, indent=2, ensure_ascii=False, default=str)
                    lines += ["      " + line for line in rendered.splitlines()]
                    if action.group_key is not None:
                        key = action.group_key.split("\x1f")[0]
                        lines.append(
                            f"      grouped: one message for every match with key {key!r} within "
                            f"{result.group_wait:g} s; its line: {action.group_line}"
                        )
        else:
            label = "off     " if result.reason == "disabled" else "no      "
            lines.append(f"{label} {result.rule}: {result.reason}")
    matched = sum(r.matched for r in results)
    lines += ["", f"{matched} of {len(results)} rule(s) matched"]
    return "\n".join(lines)


@dataclass
class TestOutcome:
    """One config test's result."""

    name: str
    where: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _subset(expected: Any, actual: Any, where: str) -> list[str]:
    """Differences where `actual` does not contain `expected` (only the keys given are compared)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a mapping, got {actual!r}"]
        out = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{where}.{key}: expected {value!r}, but it is not there")
            else:
                out += _subset(value, actual[key], f"{where}.{key}")
        return out
    if isinstance(expected, bool) != isinstance(actual, bool) or expected != actual:
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return []


def run_config_tests(config: Config, tests: list[LoadedTest]) -> list[TestOutcome]:
    """Run config tests (see load_config_tests); each outcome lists what did not go as expected."""
    outcomes = []
    for loaded in tests:
        test = loaded.test
        outcome = TestOutcome(test.name, loaded.where)
        outcomes.append(outcome)
        try:
            _, results = simulate(config, loaded.event, test.source)
        except SimulationError as exc:
            outcome.failures.append(str(exc))
            continue
        by_rule = {result.rule: result for result in results}
        matched = [result.rule for result in results if result.matched]
        expect = test.expect
        if expect.matched is not None and sorted(expect.matched) != sorted(matched):
            outcome.failures.append(f"expected exactly {sorted(expect.matched)} to match; matched {matched}")
            for name in expect.matched:
                if name in by_rule and not by_rule[name].matched:
                    outcome.failures.append(f"  {name} did not match: {by_rule[name].reason}")
        for name in expect.not_matched or []:
            if name in by_rule and by_rule[name].matched:
                outcome.failures.append(f"expected {name} not to match; it did")
        for name, expected_actions in (expect.actions or {}).items():
            result = by_rule.get(name)
            if result is None or not result.matched:
                reason = result.reason if result else "no such rule"
                outcome.failures.append(f"{name}: expected actions, but it did not match: {reason}")
                continue
            for index, expected in enumerate(expected_actions):
                outcome.failures += _compare_action(name, index, expected, result)
    return outcomes


def _compare_action(rule: str, index: int, expected: dict, result: RuleResult) -> list[str]:
    where = f"{rule}.actions[{index}]"
    if index >= len(result.actions):
        return [f"{where}: the rule has only {len(result.actions)} action(s)"]
    action = result.actions[index]
    if len(expected) != 1:
        return [f"{where}: write the expected action as {{type: {{key: value}}}}"]
    ((kind, wanted),) = expected.items()
    if kind != action.type:
        return [f"{where}: expected a {kind} action, it is {action.type}"]
    if action.error:
        return [f"{where}: {action.error}"]
    return _subset(wanted or {}, action.params, f"{where}.{kind}")


def format_outcomes(outcomes: list[TestOutcome]) -> str:
    """The text `check` prints for config tests."""
    lines = []
    for outcome in outcomes:
        mark = "ok  " if outcome.passed else "FAIL"
        lines.append(f"{mark} {outcome.name}  ({outcome.where})")
        lines += [f"       {failure}" for failure in outcome.failures]
    return "\n".join(lines)


# -- config tests: reading them ------------------------------------------------------------------


class TestsFile(StrictModel):
    """A tests file written as a mapping: `tests: [...]`."""

    __test__ = False  # not a pytest class, whatever its name
    tests: list[ConfigTest]


@dataclass
class LoadedTest:
    """A config test with its event read, and where it was written."""

    test: ConfigTest
    event: dict[str, Any]
    where: str  # file:line


def load_config_tests(config: Config) -> list[LoadedTest]:
    """The config tests, from `tests:` in the config or the file it names, with their events read.

    Raises ConfigError with every problem, each naming its file, line and key: a tests file or an
    event file that cannot be read, a rule or a source that does not exist.
    """
    loaded, problems = _load_tests(config)
    if problems:
        raise ConfigError(sort_problems(problems))
    return loaded


def _load_tests(config: Config) -> tuple[list[LoadedTest], list[Problem]]:
    spec, doc = config.tests, config.document
    base_dir = config.base_dir
    tests_doc, items, prefix = doc, spec, ("tests",)
    if isinstance(spec, str):
        path = os.path.join(base_dir, spec)
        try:
            with open(path, encoding="utf-8") as handle:
                tests_doc = parse_yaml(handle.read(), path)
        except OSError as exc:
            return [], [doc.problem(("tests",), f"cannot read {spec}: {exc.strerror}")]
        except ConfigError as exc:
            return [], exc.problems
        problems = tests_doc.duplicates + interpolate(tests_doc, config.environ)
        data = tests_doc.data
        prefix = ("tests",) if isinstance(data, dict) else ()
        data = data.get("tests") if isinstance(data, dict) else data
        try:
            items = TypeAdapter(list[ConfigTest]).validate_python(data)
        except ValidationError as exc:
            return [], problems + problems_from(exc, tests_doc, TestsFile if prefix else list[ConfigTest], prefix)
        if problems:
            return [], problems
        base_dir = os.path.dirname(path)
    loaded: list[LoadedTest] = []
    problems = []
    rule_names = [rule.name for rule in config.rules]
    for index, test in enumerate(items):
        here = (*prefix, index)
        line = tests_doc.position(here)[0]
        for key in ("matched", "not_matched"):
            for n, name in enumerate(getattr(test.expect, key) or []):
                if name not in rule_names:
                    problems.append(
                        tests_doc.problem(
                            (*here, "expect", key, n), f'no rule named "{name}"{did_you_mean(name, rule_names)}'
                        )
                    )
        for name in test.expect.actions or {}:
            if name not in rule_names:
                problems.append(
                    tests_doc.problem(
                        (*here, "expect", "actions", name),
                        f'no rule named "{name}"{did_you_mean(name, rule_names)}',
                        of_key=True,
                    )
                )
        if test.source is not None and test.source not in config.sources:
            hint = did_you_mean(test.source, list(config.sources))
            problems.append(tests_doc.problem((*here, "source"), f'no source named "{test.source}"{hint}'))
        event = test.event
        if isinstance(event, str):
            event, problem = _read_event(os.path.join(base_dir, event))
            if problem:
                problems.append(tests_doc.problem((*here, "event"), problem))
                continue
        loaded.append(LoadedTest(test, event, f"{tests_doc.file}:{line}"))
    return loaded, problems


def _read_event(path: str) -> tuple[dict[str, Any], str | None]:
    """An event envelope from a .json or .yaml file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        return {}, f"cannot read {path}: {exc.strerror}"
    try:
        data = parse_json(text.encode()) if path.endswith(".json") else parse_yaml(text, path).data
    except (ValueError, ConfigError) as exc:
        return {}, f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}"
    if not isinstance(data, dict):
        return {}, f"{path} does not hold an event envelope (a mapping)"
    return data, None

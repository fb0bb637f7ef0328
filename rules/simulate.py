"""`simulate` and config tests: what the rules make of an event, with no side effects.

Nothing here touches SQLite, Redis, Salesforce or Slack; throttles are reported, not checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import Headers

from gu1sync.errors import BadRequest
from gu1sync.event import Event, make_event
from gu1sync.kinds import kind_for
from gu1sync.timeutil import iso, utcnow

from .engine import RuleResult, evaluate

if TYPE_CHECKING:
    from gu1sync.config import Config


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
        envelope = kind.parse(document, Headers())
    except BadRequest as exc:
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


def run_config_tests(config: Config) -> list[TestOutcome]:
    """Run every config test; each outcome lists what did not go as expected."""
    outcomes = []
    for loaded in config.config_tests:
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

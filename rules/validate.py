"""Checks that need the whole config: names that must exist, patterns that match nothing, config tests.

Runs after the models have validated each piece; reports Problems with file:line:column like
everything else (warnings do not stop start-up).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from gu1sync import samples
from gu1sync.configfile import ConfigError, Document, Problem, interpolate, parse_yaml
from gu1sync.event import parse_json
from gu1sync.schema import StrictModel, did_you_mean, problems_from

from .model import ConfigTest

if TYPE_CHECKING:
    from gu1sync.config import Config

GU1_EVENT_TYPES = samples.KNOWN_EVENTS + samples.FUTURE_EVENTS


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


def check_rules(doc: Document) -> list[Problem]:
    """Rule names unique, sources known and consistent, `on:` patterns that can match something.

    Reads the raw document, so it runs (and reports) even when other parts of the file are invalid.
    """
    data = doc.data if isinstance(doc.data, dict) else {}
    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    rules = data.get("rules") if isinstance(data.get("rules"), list) else []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        here = ("rules", index)
        name = rule.get("name")
        throttle = rule.get("throttle")
        key = throttle.get("key") if isinstance(throttle, dict) else None
        if isinstance(key, str) and key.strip() and "{{" not in key:
            problems.append(
                doc.problem(
                    (*here, "throttle", "key"),
                    f'"{key}" is the same for every event, so the actions run once per window in all; '
                    'to throttle per entity write a template such as "{{ entity.id }}"',
                    severity="warning",
                )
            )
        if isinstance(name, str) and name in seen:
            line = doc.position(("rules", seen[name], "name"))[0]
            problems.append(doc.problem((*here, "name"), f'a rule named "{name}" already exists (line {line})'))
        if isinstance(name, str):
            seen.setdefault(name, index)
        listed = rule.get("sources")
        listed = [listed] if isinstance(listed, str) else listed if isinstance(listed, list) else None
        kinds = set()
        for n, source in enumerate(listed or []):
            if not isinstance(source, str):
                continue
            if source not in sources:
                hint = did_you_mean(source, [str(s) for s in sources])
                problems.append(doc.problem((*here, "sources", n), f'no source named "{source}"{hint}'))
                continue
            spec = sources[source] if isinstance(sources[source], dict) else {}
            kinds.add(spec.get("kind") if isinstance(spec.get("kind"), str) else None)
            if rule.get("environment") and spec.get("environment") and spec["environment"] != rule["environment"]:
                problems.append(
                    doc.problem(
                        (*here, "environment"),
                        f'source "{source}" is {spec["environment"]}, so this rule can never match',
                    )
                )
        if listed is None:
            kinds = {
                spec.get("kind")
                for spec in sources.values()
                if isinstance(spec, dict) and isinstance(spec.get("kind"), str)
            }
        patterns = rule.get("on")
        patterns = [patterns] if isinstance(patterns, str) else patterns if isinstance(patterns, list) else []
        if "gu1" in kinds:
            for n, pattern in enumerate(patterns):
                if isinstance(pattern, str) and not fnmatch.filter(GU1_EVENT_TYPES, pattern):
                    problems.append(
                        doc.problem(
                            (*here, "on", n) if isinstance(rule.get("on"), list) else (*here, "on"),
                            f'"{pattern}" matches no Gu1 event type{did_you_mean(pattern, list(GU1_EVENT_TYPES))}',
                            severity="warning",
                        )
                    )
    return problems


def load_tests(config: Config, doc: Document, environ: Any) -> tuple[list[LoadedTest], list[Problem]]:
    """The config tests, from `tests:` in the config or the file it names, with their events read."""
    spec = config.tests
    base_dir = os.path.dirname(os.path.abspath(doc.file))
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
        problems = tests_doc.duplicates + interpolate(tests_doc, environ)
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
    loaded, problems = [], []
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

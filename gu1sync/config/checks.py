"""Checks that need the whole config: rule names unique, the sources a rule names exist and can
send to it, `on:` patterns that can match something, throttle keys that tell events apart.

They read typed values: each source as its kind's model, and each rule's name, on, sources,
environment and throttle key with the Rule model's own types. A part that does not validate is
left to the model's own error, so these checks still run, and report along with every other
problem, when something else in the file is wrong.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pydantic import TypeAdapter, ValidationError

from connectors import REGISTRY
from gu1sync.core.templates import Template, Templated
from gu1sync.core.values import did_you_mean
from gu1sync.core.yamlfile import Document, Problem
from gu1sync.kinds import Source
from gu1sync.kinds.gu1 import EVENT_TYPES
from rules.model import Rule

_SOURCE = TypeAdapter(Source)
_KEY = TypeAdapter(Templated)
_RULE_FIELDS = {name: TypeAdapter(Rule.model_fields[name].rebuild_annotation()) for name in Rule.model_fields}


def _typed(adapter: TypeAdapter, value: Any) -> Any:
    """`value` validated by `adapter`, or None when it does not validate (its error is reported elsewhere)."""
    try:
        return adapter.validate_python(value)
    except (ValidationError, ValueError, TypeError):
        return None


def _field(rule: dict, name: str) -> Any:
    return _typed(_RULE_FIELDS[name], rule[name]) if name in rule else None


def check_config(doc: Document) -> list[Problem]:
    """Every cross-check of the config in `doc` (already interpolated): errors and warnings."""
    data = doc.data if isinstance(doc.data, dict) else {}
    raw_sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    sources = {name: source for name, spec in raw_sources.items() if (source := _typed(_SOURCE, spec)) is not None}
    rules = data.get("rules") if isinstance(data.get("rules"), list) else []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if isinstance(rule, dict):
            problems += _check_rule(doc, ("rules", index), rule, sources, raw_sources, seen)
    return problems


def _check_rule(
    doc: Document, here: tuple, rule: dict, sources: dict[str, Any], raw_sources: dict, seen: dict[str, int]
) -> list[Problem]:
    problems: list[Problem] = []
    throttle = rule.get("throttle")
    key = _typed(_KEY, throttle.get("key")) if isinstance(throttle, dict) and "key" in throttle else None
    if isinstance(key, str) and key.strip() and not isinstance(key, Template):
        problems.append(
            doc.problem(
                (*here, "throttle", "key"),
                f'"{key}" is the same for every event, so the actions run once per window in all; '
                'to throttle per entity write a template such as "{{ entity.id }}"',
                severity="warning",
            )
        )
    name = _field(rule, "name")
    if name is not None and name in seen:
        line = doc.position(("rules", seen[name], "name"))[0]
        problems.append(doc.problem((*here, "name"), f'a rule named "{name}" already exists (line {line})'))
    if name is not None:
        seen.setdefault(name, here[1])
    listed = _field(rule, "sources")
    environment = _field(rule, "environment")
    kinds = set()
    for n, source_name in enumerate(listed or []):
        if source_name not in raw_sources:
            hint = did_you_mean(source_name, [str(s) for s in raw_sources])
            problems.append(doc.problem((*here, "sources", n), f'no source named "{source_name}"{hint}'))
            continue
        source = sources.get(source_name)
        if source is None:
            kinds.add(None)  # a source with errors of its own: say nothing more of it here
            continue
        kinds.add(source.kind)
        if environment and source.environment != environment:
            problems.append(
                doc.problem(
                    (*here, "environment"),
                    f'source "{source_name}" is {source.environment}, so this rule can never match',
                )
            )
    actions = rule.get("actions") if isinstance(rule.get("actions"), list) else []
    kinds_of_actions = [next(iter(a)) for a in actions if isinstance(a, dict) and len(a) == 1]
    groupable = [kind for kind in kinds_of_actions if kind in REGISTRY.actions and REGISTRY.action(kind).group]
    if isinstance(rule.get("group"), dict) and actions and not groupable:
        known = ", ".join(name for name, declared in REGISTRY.actions.items() if declared.group is not None)
        problems.append(
            doc.problem((*here, "group"), f"group: gathers {known} actions into one message; this rule has none")
        )
    for n, action in enumerate(actions):
        if isinstance(action, dict) and len(action) == 1:
            [(kind, params)] = action.items()
            declared = REGISTRY.actions.get(kind)
            if declared is not None and declared.lint is not None and isinstance(params, dict):
                for path, message in declared.lint(params):
                    problems.append(doc.problem((*here, "actions", n, kind, *path), message, severity="warning"))
    if listed is None:
        kinds = {source.kind for source in sources.values()}
    patterns = _field(rule, "on") or []
    if "gu1" in kinds:
        for n, pattern in enumerate(patterns):
            if not fnmatch.filter(EVENT_TYPES, pattern):
                problems.append(
                    doc.problem(
                        (*here, "on", n) if isinstance(rule.get("on"), list) else (*here, "on"),
                        f'"{pattern}" matches no Gu1 event type{did_you_mean(pattern, list(EVENT_TYPES))}',
                        severity="warning",
                    )
                )
    return problems

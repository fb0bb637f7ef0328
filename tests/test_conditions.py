"""Every operator and shorthand of `when:`, against real event shapes; a missing field is false."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from rules.conditions import Condition

CTX = {
    "event": "entity.updated",
    "source": "gu1-production",
    "environment": "production",
    "occurred_at": "2025-01-07T10:05:00.000Z",
    "payload": {
        "status": "approved",
        "previousStatus": "in_review",
        "amount": 12500.5,
        "count": 3,
        "flag": True,
        "nothing": None,
        "text": "Document authenticity check failed",
        "tags": ["pep", "high-risk"],
        "attrs": {"tier": "premium"},
        "numeric_text": "42",
        "verifiedAt": "2025-01-15T11:00:00Z",
        "decision": {"id_verifications": [{"status": "pass"}]},
        "changes": {"attributes.email": {"old": "a@x", "new": "b@x"}, "entityData.person.occupation": {}},
        "rule": {"id": "rule_1", "severity": "high"},
        "ruleId": "rule_1",
    },
    "entity": {"type": "person", "externalId": "customer_1", "countryCode": "NO"},
}

adapter = TypeAdapter(Condition)


def holds(condition: dict, ctx: dict = CTX) -> bool:
    return adapter.validate_python(condition).holds(ctx)


CASES = [
    # eq / ne
    ({"field": "payload.status", "eq": "approved"}, True),
    ({"field": "payload.status", "eq": "rejected"}, False),
    ({"field": "payload.count", "eq": 3}, True),
    ({"field": "payload.count", "eq": 3.0}, True),
    ({"field": "payload.flag", "eq": True}, True),
    ({"field": "payload.flag", "eq": 1}, False),  # not Python's True == 1
    ({"field": "payload.nothing", "eq": None}, True),
    ({"field": "payload.status", "ne": "rejected"}, True),
    ({"field": "payload.status", "ne": "approved"}, False),
    ({"field": "payload.absent", "ne": "x"}, False),  # missing is false, even for ne
    # in / not_in
    ({"field": "entity.type", "in": ["person", "company"]}, True),
    ({"field": "entity.type", "in": ["company"]}, False),
    ({"field": "entity.type", "not_in": ["company"]}, True),
    ({"field": "entity.type", "not_in": ["person"]}, False),
    ({"field": "payload.absent", "not_in": ["x"]}, False),
    # contains: list, string, object
    ({"field": "payload.tags", "contains": "pep"}, True),
    ({"field": "payload.tags", "contains": "sanctions"}, False),
    ({"field": "payload.text", "contains": "authenticity"}, True),
    ({"field": "payload.attrs", "contains": "tier"}, True),
    ({"field": "payload.count", "contains": 3}, False),
    # starts_with / ends_with / matches
    ({"field": "entity.externalId", "starts_with": "customer_"}, True),
    ({"field": "entity.externalId", "ends_with": "_1"}, True),
    ({"field": "entity.externalId", "ends_with": "_2"}, False),
    ({"field": "payload.count", "starts_with": "3"}, False),
    ({"field": "payload.text", "matches": "^Document .* failed$"}, True),
    ({"field": "payload.text", "matches": "(?i)FACE"}, False),
    ({"field": "payload.count", "matches": "^3$"}, True),
    # exists
    ({"field": "payload.status", "exists": True}, True),
    ({"field": "payload.absent", "exists": True}, False),
    ({"field": "payload.absent", "exists": False}, True),
    ({"field": "payload.nothing", "exists": False}, True),
    # numbers
    ({"field": "payload.amount", "gt": 10000}, True),
    ({"field": "payload.amount", "gt": 12500.5}, False),
    ({"field": "payload.amount", "gte": 12500.5}, True),
    ({"field": "payload.amount", "lt": 12500.5}, False),
    ({"field": "payload.amount", "lte": 12500.5}, True),
    ({"field": "payload.numeric_text", "gt": 41}, True),
    ({"field": "payload.status", "gt": 1}, False),
    ({"field": "payload.flag", "gt": 0}, False),
    # timestamps
    ({"field": "payload.verifiedAt", "gt": "2025-01-15T10:59:59Z"}, True),
    ({"field": "payload.verifiedAt", "gt": "2025-01-15T12:00:00+01:00"}, False),  # the same instant
    ({"field": "payload.verifiedAt", "gte": "2025-01-15T12:00:00+01:00"}, True),
    ({"field": "occurred_at", "lt": "2025-01-08"}, True),
    ({"field": "payload.status", "lt": "2025-01-08"}, False),
    # paths
    ({"field": "payload.decision.id_verifications[0].status", "eq": "pass"}, True),
    ({"field": "payload.decision.id_verifications.0.status", "eq": "pass"}, True),
    ({"field": "payload.decision.id_verifications[3].status", "exists": False}, True),
    ({"field": 'payload.changes["attributes.email"].new', "eq": "b@x"}, True),
    ({"field": "entity.countryCode", "eq": "NO"}, True),
    # combinators
    ({"all": [{"field": "payload.status", "eq": "approved"}, {"entity_types": "person"}]}, True),
    ({"all": [{"field": "payload.status", "eq": "approved"}, {"entity_types": "company"}]}, False),
    ({"any": [{"field": "payload.status", "eq": "x"}, {"entity_types": ["person"]}]}, True),
    ({"any": [{"field": "payload.status", "eq": "x"}, {"entity_types": ["company"]}]}, False),
    ({"not": {"field": "payload.status", "eq": "x"}}, True),
    ({"not": {"field": "payload.absent", "eq": "x"}}, True),
    ({"not": {"any": [{"field": "payload.count", "gt": 1}]}}, False),
    # shorthands from Gu1's own filters
    ({"entity_types": "person"}, True),
    ({"entity_types": ["company", "device"]}, False),
    ({"status_changes": {"from": "in_review", "to": "approved"}}, True),
    ({"status_changes": {"to": ["approved", "active"]}}, True),
    ({"status_changes": {"from": ["active"]}}, False),
    ({"rule_severity": ["high", "critical"]}, True),
    ({"rule_severity": "critical"}, False),
    ({"rule_ids": ["rule_1"]}, True),
    ({"rule_ids": "rule_2"}, False),
    ({"changed": "attributes.email"}, True),
    ({"changed": "attributes"}, True),  # anything under it
    ({"changed": "entityData.person"}, True),
    ({"changed": ["taxId", "name"]}, False),
    ({"changed": "attributes.e"}, False),  # a prefix of a name is not a parent
]


@pytest.mark.parametrize(("condition", "expected"), CASES, ids=[str(c) for c, _ in CASES])
def test_condition(condition, expected):
    assert holds(condition) is expected


@pytest.mark.parametrize(
    "condition",
    [
        {"entity_types": "person"},
        {"status_changes": {"to": "blocked"}},
        {"rule_severity": "high"},
        {"rule_ids": "r"},
        {"changed": "a"},
        {"field": "payload.x", "eq": 1},
        {"field": "payload.x", "gt": 1},
    ],
)
def test_a_field_missing_from_the_event_is_false_not_an_error(condition):
    assert holds(condition, {"event": "x", "payload": {}}) is False
    assert holds(condition, {"event": "x", "payload": "not even an object"}) is False


def test_rule_ids_falls_back_to_the_rule_object():
    ctx = {"payload": {"rule": {"id": "rule_9"}}}
    assert holds({"rule_ids": ["rule_9"]}, ctx)


def test_why_not_names_the_first_failing_condition():
    condition = adapter.validate_python(
        {
            "all": [
                {"field": "payload.status", "eq": "approved"},
                {"field": "payload.count", "gt": 5},
                {"entity_types": "x"},
            ]
        }
    )
    assert condition.why_not(CTX) == "payload.count gt 5 (was 3)"
    assert (
        adapter.validate_python({"field": "payload.absent", "eq": 1}).why_not(CTX)
        == "payload.absent eq 1 (was missing)"
    )
    assert adapter.validate_python({"not": {"entity_types": "person"}}).why_not(CTX) == (
        "not (entity.type in ['person']): it held"
    )
    assert adapter.validate_python({"any": [{"rule_ids": "a"}, {"changed": "taxId"}]}).why_not(CTX) == (
        "none of: payload.ruleId in ['a'] (was 'rule_1'); changed taxId (changes were "
        "['attributes.email', 'entityData.person.occupation'])"
    )


NULLS = {
    "payload": {
        "reason": None,
        "flags": [True, False],
        "obj": {"active": True},
        "amount": "Infinity",
        "big": "1_000_000",
        "dict": {"a": 1},
    }
}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"field": "payload.reason", "eq": None}, True),
        ({"field": "payload.reason", "ne": "x"}, False),  # null is no value: only eq: null holds
        ({"field": "payload.reason", "not_in": ["x"]}, False),
        ({"field": "payload.reason", "exists": False}, True),
        ({"field": "payload.flags", "eq": [1, 0]}, False),  # true never equals 1, inside lists too
        ({"field": "payload.flags", "eq": [True, False]}, True),
        ({"field": "payload.obj", "eq": {"active": 1}}, False),
        ({"field": "payload.amount", "gt": 10000}, False),  # "Infinity" is not a plain number
        ({"field": "payload.big", "gt": 10000}, False),
        ({"field": "payload.dict", "contains": {"a": 1}}, False),  # no crash on unhashable values
    ],
)
def test_nulls_nested_values_and_odd_text(condition, expected):
    assert holds(condition, NULLS) is expected

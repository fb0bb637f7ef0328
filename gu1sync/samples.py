"""Realistic Gu1 envelopes for every event type, shaped like the examples in the sender's docs.

Used by `send-test`, by `simulate` examples and by the tests. KYC events come in two generations:
`legacy` (seed 001: `payload.validationId` and a small `entity` on every event) and `current`
(seed 002: `payload` is the validation row, `payload.id` is its id, `entity` only on approved and
rejected, `decision` in both singular and array forms). The people are made up.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from .core.timeutil import iso, utcnow
from .kinds.gu1 import ENTITY_EVENTS, FUTURE_EVENTS, KNOWN_EVENTS, KYC_EVENTS, KYC_STATUSES, RULE_EVENTS

# The status a KYC validation has in each kyc.* event (`created` is still pending).
VALIDATION_STATUS = {name: "pending" if name == "created" else name for name in KYC_STATUSES}
GENERATIONS = ("current", "legacy")


def _person(rng: random.Random, entity_id: str, status: str = "active") -> dict[str, Any]:
    first, last = rng.choice([("Ana", "Souza"), ("John", "Doe"), ("María", "López"), ("Chen", "Wei")])
    return {
        "id": entity_id,
        "externalId": f"customer_{rng.randrange(16**6):06x}",
        "name": f"{first} {last}",
        "type": "person",
        "taxId": f"{rng.randrange(1000):03d}-{rng.randrange(100):02d}-{rng.randrange(10000):04d}",
        "countryCode": rng.choice(["US", "AR", "BR", "ES"]),
        "status": status,
        "isClient": True,
        "attributes": {"email": f"{first.lower()}.{last.lower()}@example.com", "customerTier": "premium"},
        "entityData": {"person": {"firstName": first, "lastName": last, "dateOfBirth": "1990-01-15"}},
    }


def _decision(passed: bool) -> dict[str, Any]:
    verdict = "pass" if passed else "fail"
    out: dict[str, Any] = {}
    for single, plural in [
        ("id_verification", "id_verifications"),
        ("liveness", "liveness_checks"),
        ("face_match", "face_matches"),
        ("aml_screening", "aml_screenings"),
    ]:
        item = {"status": verdict if single != "liveness" else "pass"}
        out[single] = item
        out[plural] = [item]
    return out


def sample(
    event: str,
    *,
    generation: str = "current",
    when: datetime | None = None,
    seed: int | None = None,
    organization_id: str | None = "org-123",
) -> dict[str, Any]:
    """A Gu1 envelope `{event, timestamp, organizationId, payload}` for any event type.

    With a `seed` the same call gives the same envelope (ids and timestamp included).
    """
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}, got {generation!r}")
    rng = random.Random(seed)
    if when is None:
        when = utcnow() if seed is None else datetime(2025, 1, 15, 10, 0, tzinfo=UTC) + timedelta(minutes=seed)
    stamp = iso(when)
    entity_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    person = _person(rng, entity_id)
    family = event.split(".", 1)[0]
    if event in KYC_EVENTS:
        payload = _kyc_payload(event, generation, person, rng, stamp)
    elif event == "entity.created":
        payload = {"entity": {**person, "status": "under_review"}, "createdBy": "user_xyz789"}
    elif event == "entity.updated":
        payload = {
            "entity": person,
            "changes": {"attributes.email": {"old": "old.address@example.com", "new": person["attributes"]["email"]}},
            "updatedBy": "user_xyz789",
            "reason": "Customer provided updated information",
        }
    elif event == "entity.status_changed":
        payload = {
            "status": "blocked",
            "previousStatus": "active",
            "reason": "Sanctions list match confirmed by compliance",
            "entity": {**person, "status": "blocked"},
        }
    elif event == "rule.triggered":
        payload = {
            "ruleId": "rule_high_risk_country",
            "rule": {
                "id": "rule_high_risk_country",
                "name": "High Risk Country Check",
                "description": "Entity linked to a high-risk jurisdiction",
                "severity": "high",
                "category": "geographic_risk",
                "isActive": True,
            },
            "entityId": entity_id,
            "entity": {**person, "countryCode": "KP", "status": "blocked"},
            "evaluationId": f"eval_{rng.randrange(16**8):08x}",
            "triggerData": {"countryCode": "KP"},
        }
    else:  # a family Gu1 has announced but not documented: give it an id and a subject
        payload = {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "entityId": entity_id}
        if family == "transaction":
            payload.update(amount=12500.0, currency="USD")
    envelope: dict[str, Any] = {"event": event, "timestamp": stamp}
    if organization_id is not None:
        envelope["organizationId"] = organization_id
    envelope["payload"] = payload
    return envelope


def _kyc_payload(event: str, generation: str, person: dict, rng: random.Random, stamp: str) -> dict[str, Any]:
    name = event.removeprefix("kyc.validation_")
    status = VALIDATION_STATUS[name]
    validation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    terminal = name in ("approved", "rejected")
    extracted = {
        "firstName": person["entityData"]["person"]["firstName"],
        "lastName": person["entityData"]["person"]["lastName"],
        "dateOfBirth": "1990-01-15",
        "documentNumber": f"AB{rng.randrange(10**6):06d}",
        "documentType": "passport",
    }
    if generation == "legacy":
        small = {k: person[k] for k in ("id", "externalId", "name", "type")}
        payload: dict[str, Any] = {
            "validationId": validation_id,
            "entityId": person["id"],
            "entity": small,
            "status": status,
        }
        if terminal:
            payload.update(
                verifiedAt=stamp,
                extractedData=extracted if name == "approved" else {},
                verifiedFields=list(extracted) if name == "approved" else [],
                warnings=[] if name == "approved" else ["Document authenticity check failed"],
                decision={
                    "id_verification": "pass" if name == "approved" else "fail",
                    "face_match": "pass" if name == "approved" else "fail",
                    "liveness": "pass",
                },
            )
        if name == "expired":
            payload["expiresAt"] = stamp
        return payload
    payload = {
        "id": validation_id,
        "entityId": person["id"],
        "organizationId": "org-123",
        "status": status,
        "provider": "gu1-kyc",
        "metadata": {},
        "createdAt": stamp,
        "updatedAt": stamp,
    }
    if terminal or name == "in_review":
        payload["decision"] = _decision(name != "rejected")
    if terminal:
        payload.update(
            entity=person,
            verifiedAt=stamp,
            extractedData=extracted if name == "approved" else {},
            verifiedFields=list(extracted) if name == "approved" else [],
            warnings=[] if name == "approved" else ["Face match confidence low"],
        )
        if name == "rejected":
            payload["rejectionReason"] = "Face match confidence low"
    if name == "abandoned":
        payload["lastStep"] = "document_upload"
    return payload


__all__ = ["ENTITY_EVENTS", "FUTURE_EVENTS", "GENERATIONS", "KNOWN_EVENTS", "KYC_EVENTS", "RULE_EVENTS", "sample"]

"""Gu1's own webhooks (seeds 000-003).

X-Webhook-Signature is the hex HMAC-SHA256 of the raw body and nothing else, so a captured
delivery could be replayed at any time: the dedupe key, built from what the event is about and
when it happened, is what stops a replay from being processed twice. X-Webhook-ID names the
webhook *configuration*, not the event, and must not be used to deduplicate.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any, Literal

from ..core.errors import Unreadable
from ..core.records import Envelope
from ..core.timeutil import iso, parse_iso
from .base import (
    Headers,
    SourceSettings,
    hex_signature,
    matching_secret,
    optional_header,
    require_type,
    single_header,
)

# The event types Gu1 documents (seeds 000-003, and rule.triggered's public reference).
ENTITY_EVENTS = ("entity.created", "entity.updated", "entity.status_changed")
KYC_STATUSES = ("created", "in_progress", "in_review", "approved", "rejected", "abandoned", "expired", "cancelled")
KYC_EVENTS = tuple(f"kyc.validation_{status}" for status in KYC_STATUSES)
RULE_EVENTS = ("rule.triggered",)
KNOWN_EVENTS = ENTITY_EVENTS + KYC_EVENTS + RULE_EVENTS
# Announced by Gu1 as "coming soon": accepted and stored, matched by no rule unless one asks.
FUTURE_EVENTS = (
    "transaction.created",
    "transaction.updated",
    "transaction.flagged",
    "alert.created",
    "alert.resolved",
    "alert.status_changed",
    "entity.deleted",
)
EVENT_TYPES = KNOWN_EVENTS + FUTURE_EVENTS


class Gu1Source(SourceSettings):
    """Gu1 webhooks: X-Webhook-Signature is the hex HMAC-SHA256 of the raw body."""

    kind: Literal["gu1"]


def subject_of(event: str, payload: Any) -> str | None:
    """The id of what a Gu1 event is about: the validation, the entity or the rule evaluation."""
    if not isinstance(payload, dict):
        return None
    entity = payload.get("entity") if isinstance(payload.get("entity"), dict) else {}
    family = event.split(".", 1)[0]
    if family == "kyc":  # current generation: payload.id; older one: payload.validationId
        candidates = [payload.get("id"), payload.get("validationId")]
    elif family == "entity":
        candidates = [entity.get("id"), payload.get("entityId")]
    elif family == "rule":
        candidates = [payload.get("evaluationId")]
    else:
        return None
    for candidate in candidates:
        if isinstance(candidate, str | int) and not isinstance(candidate, bool) and str(candidate).strip():
            return str(candidate).strip()
    return None


class Gu1Kind:
    """Verifies and reads Gu1 deliveries for one configured source."""

    payload_field = "payload"
    name = "gu1"

    def __init__(self, source: Gu1Source):
        self.source = source
        self._keys = [(secret, secret.value.encode()) for secret in source.secrets]

    def verify(self, headers: Headers, body: bytes, now: datetime) -> str:
        """The name of the secret that signed `body`; NotAuthentic for anything else."""
        given = hex_signature(single_header(headers, "X-Webhook-Signature", "missing_signature", "malformed_signature"))
        return matching_secret(self._keys, body, [given])

    def sign(self, body: bytes, now: datetime, event_type: str) -> dict[str, str]:
        """Headers as Gu1 sends them, signed with the first configured secret (for send-test)."""
        digest = hmac.new(self._keys[0][1], body, hashlib.sha256).hexdigest()
        return {"X-Webhook-Signature": digest, "X-Webhook-Event": event_type, "X-Webhook-Timestamp": iso(now)}

    def parse(self, document: dict, headers: Headers) -> Envelope:
        """Read `{event, timestamp, organizationId?, payload}`; X-Webhook-Event must agree with it."""
        event = require_type(document.get("event"), "event")
        announced = optional_header(headers, "X-Webhook-Event")
        if announced is not None and announced != event:
            raise Unreadable(
                "event_header_mismatch",
                f"X-Webhook-Event says {announced[:80]!r} but the body says {event[:80]!r}",
            )
        payload = document.get(self.payload_field, {})
        occurred = parse_iso(document.get("timestamp"))
        subject = subject_of(event, payload)
        identity = None
        if subject is not None and occurred is not None:
            organization = document.get("organizationId")
            org = str(organization) if isinstance(organization, str | int) else "-"
            identity = f"{org}|{event}|{subject}|{iso(occurred)}"
            if event.startswith("rule.") and isinstance(payload, dict):
                # One evaluation may trigger several rules at once: each is an event of its own.
                details = payload.get("rule")
                rule = payload.get("ruleId") or (details.get("id") if isinstance(details, dict) else None)
                identity += f"|{rule}" if isinstance(rule, str | int) else ""
        return Envelope(type=event, occurred_at=occurred, payload=payload, subject=subject, identity=identity)

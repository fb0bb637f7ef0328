"""The KYC-Webhooks provider (seed 004): envelope {id, type, created, data}.

X-Webhook-ID is the event id, but it is not signed: the body's `id` (which says the same, and is
signed) is the identity, and a body without one is known by its hash. Were the header trusted, a
captured delivery resent with a new X-Webhook-ID would be a new event, and processed again.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Literal

from pydantic import Field

from ..core.records import Envelope
from ..core.timeutil import from_unix
from ..core.values import Duration
from .base import (
    Headers,
    SourceSettings,
    hex_signature,
    matching_secret,
    require_type,
    single_header,
    unix_timestamp,
)


class KycWebhooksSource(SourceSettings):
    """The KYC-Webhooks provider: `sha256=<hex>` signature and a unix X-Webhook-Timestamp."""

    kind: Literal["kyc-webhooks"]
    tolerance: Duration = Field(300, description="How far X-Webhook-Timestamp may be from now, either way.")
    signed_payload: Literal["body", "timestamp.body"] = Field(
        "body", description="What the provider signs: the raw body, or `{timestamp}.{body}`."
    )


class KycWebhooksKind:
    """Verifies `X-Webhook-Signature: sha256=<hex>` with a timestamp tolerance."""

    payload_field = "data"
    name = "kyc-webhooks"

    def __init__(self, source: KycWebhooksSource):
        self.source = source
        self._keys = [(secret, secret.value.encode()) for secret in source.secrets]

    def verify(self, headers: Headers, body: bytes, now: datetime) -> str:
        """The name of the secret that signed the body (or `{timestamp}.{body}`); NotAuthentic otherwise."""
        given = hex_signature(single_header(headers, "X-Webhook-Signature", "missing_signature", "malformed_signature"))
        stamp = single_header(headers, "X-Webhook-Timestamp", "missing_timestamp", "malformed_timestamp")
        unix_timestamp(stamp, now, self.source.tolerance)
        message = body if self.source.signed_payload == "body" else stamp.encode() + b"." + body
        return matching_secret(self._keys, message, [given])

    def sign(self, body: bytes, now: datetime, event_type: str) -> dict[str, str]:
        """Headers as the provider sends them, signed with the first configured secret (for send-test)."""
        stamp = str(int(now.timestamp()))
        message = body if self.source.signed_payload == "body" else stamp.encode() + b"." + body
        digest = hmac.new(self._keys[0][1], message, hashlib.sha256).hexdigest()
        return {
            "X-Webhook-Signature": f"sha256={digest}",
            "X-Webhook-Timestamp": stamp,
            "User-Agent": "KYC-Webhooks/1.0",
        }

    def parse(self, document: dict, headers: Headers) -> Envelope:
        """Read `{id, type, created, data}`; the id is the event's identity."""
        event = require_type(document.get("type"), "type")
        created = document.get("created")
        occurred = None
        if isinstance(created, int | float) and not isinstance(created, bool):
            occurred = from_unix(created)
        data = document.get(self.payload_field, {})
        event_id = document.get("id")
        identity = str(event_id) if isinstance(event_id, str | int) and str(event_id).strip() else None
        subject = None
        if isinstance(data, dict):
            for key in ("session_id", "sessionId", "id"):
                if isinstance(data.get(key), str | int) and not isinstance(data.get(key), bool):
                    subject = str(data[key])
                    break
        return Envelope(type=event, occurred_at=occurred, payload=data, subject=subject, identity=identity)

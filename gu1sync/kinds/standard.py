"""Standard Webhooks (standardwebhooks.com): webhook-id, webhook-timestamp, webhook-signature.

The `standardwebhooks` package raises ValueError or binascii.Error on malformed headers and
needs a UTF-8 body; this reading of the spec turns every malformed header into NotAuthentic (a 401)
and signs the raw bytes. The package is the reference the tests check this against.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from ..core.errors import NotAuthentic
from ..core.records import Envelope
from ..core.timeutil import from_unix, parse_iso
from ..core.values import Duration, Secret
from .base import Headers, SourceSettings, matching_secret, require_type, single_header, unix_timestamp

PREFIX = "whsec_"


def decode_secret(text: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (the prefix is optional); ValueError if not base64."""
    body = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:  # binascii.Error, and ValueError for text that is not even ASCII
        raise ValueError("not base64") from None
    if not key:
        raise ValueError("empty secret")
    return key


def _signatures(header: str) -> list[bytes]:
    found = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue  # other schemes (v1a, future versions) are not ours to check
        try:
            found.append(base64.b64decode(value, validate=True))
        except ValueError:  # binascii.Error, and ValueError for text that is not even ASCII
            continue
    if not found:
        raise NotAuthentic("malformed_signature", "webhook-signature has no v1,<base64> entry")
    return found


class StandardSource(SourceSettings):
    """Any sender following the Standard Webhooks spec (webhook-id, webhook-timestamp, webhook-signature)."""

    kind: Literal["standard"]
    tolerance: Duration = Field(300, description="How far webhook-timestamp may be from now, either way.")

    @field_validator("secrets")
    @classmethod
    def _secrets_decode(cls, secrets: list[Secret]) -> list[Secret]:
        for secret in secrets:
            try:
                decode_secret(secret.value)
            except ValueError:
                raise ValueError(
                    f"the value of ${secret.name} is not a Standard Webhooks secret (whsec_ followed by base64)"
                ) from None
        return secrets


class StandardKind:
    """Verifies Standard Webhooks deliveries for one configured source."""

    payload_field = "data"
    name = "standard"

    def __init__(self, source: StandardSource):
        self.source = source
        self._keys = [(secret, decode_secret(secret.value)) for secret in source.secrets]

    def verify(self, headers: Headers, body: bytes, now: datetime) -> str:
        """The name of the secret that signed `{id}.{timestamp}.{body}`; NotAuthentic otherwise."""
        msg_id = single_header(headers, "webhook-id", "missing_id", "malformed_id")
        stamp = single_header(headers, "webhook-timestamp", "missing_timestamp", "malformed_timestamp")
        given = _signatures(single_header(headers, "webhook-signature", "missing_signature", "malformed_signature"))
        unix_timestamp(stamp, now, self.source.tolerance)
        return matching_secret(self._keys, f"{msg_id}.{stamp}.".encode() + body, given)

    def sign(self, body: bytes, now: datetime, event_type: str) -> dict[str, str]:
        """Standard Webhooks headers, signed with the first configured secret (for send-test)."""
        msg_id, stamp = f"msg_{secrets.token_hex(12)}", str(int(now.timestamp()))
        digest = hmac.new(self._keys[0][1], f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }

    def parse(self, document: dict, headers: Headers) -> Envelope:
        """Read `{type, timestamp, data}`; webhook-id is the message's identity across retries."""
        event = require_type(document.get("type"), "type")
        occurred = parse_iso(document.get("timestamp"))
        if occurred is None:
            stamp = headers.getlist("webhook-timestamp")
            occurred = from_unix(int(stamp[0])) if stamp and stamp[0].strip().isdigit() else None
        data = document.get(self.payload_field, {})
        subject = str(data["id"]) if isinstance(data, dict) and isinstance(data.get("id"), str | int) else None
        msg_id = headers.getlist("webhook-id")
        return Envelope(
            type=event, occurred_at=occurred, payload=data, subject=subject, identity=msg_id[0].strip() or None
        )

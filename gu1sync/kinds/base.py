"""What every kind of source shares: its settings, strict header reading, and signature checks."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field

from ..core.errors import NotAuthentic, Unreadable
from ..core.values import OneOrMany, Secret, SecretValue, StrictModel


class Headers(Protocol):
    """Case-insensitive request headers (werkzeug's Headers)."""

    def getlist(self, key: str) -> list[str]: ...


class NoHeaders:
    """The headers of a body read outside a request (simulate, config tests): none."""

    def getlist(self, key: str) -> list[str]:
        return []


class SourceSettings(StrictModel):
    """What every source has: `sources.<name>` in config.yaml."""

    environment: Literal["sandbox", "production"] = Field(
        description="Which Gu1 environment sends to this source; rules can match on it."
    )
    secrets: Annotated[OneOrMany[SecretValue], Field(min_length=1)] = Field(
        description="Signing secrets, each ${ENV_VAR}. Any one verifies, so a new secret can be added "
        "before the old one is removed (rotation); each event records which one matched."
    )
    description: str | None = Field(None, description="Free text for people reading the config.")


def single_header(headers: Headers, name: str, missing: str, malformed: str) -> str:
    """The one value of header `name`; absent, empty or repeated is NotAuthentic with the given reasons."""
    values = headers.getlist(name)
    if not values or not values[0].strip():
        raise NotAuthentic(missing, f"the {name} header is missing")
    if len(values) > 1:
        raise NotAuthentic(malformed, f"the {name} header is given {len(values)} times")
    return values[0].strip()


def optional_header(headers: Headers, name: str) -> str | None:
    """The first value of header `name`, stripped, or None."""
    values = headers.getlist(name)
    return values[0].strip() if values and values[0].strip() else None


_HEX_SHA256 = re.compile(r"(?:sha256=)?([0-9a-f]{64})", re.IGNORECASE)
_UNIX_SECONDS = re.compile(r"\d{1,15}")


def hex_signature(value: str) -> bytes:
    """The digest in `<hex>` or `sha256=<hex>`; anything else is a malformed signature."""
    match = _HEX_SHA256.fullmatch(value)
    if match is None:
        raise NotAuthentic("malformed_signature", "the signature is not sha256=<64 hex digits>")
    return bytes.fromhex(match.group(1))


def unix_timestamp(value: str, now: datetime, tolerance: float) -> int:
    """Unix seconds from a header, within `tolerance` of `now` either way (the edge itself passes)."""
    if not _UNIX_SECONDS.fullmatch(value):
        raise NotAuthentic("malformed_timestamp", "the timestamp header is not unix seconds")
    seconds = int(value)
    if abs(now.timestamp() - seconds) > tolerance:
        raise NotAuthentic(
            "timestamp_out_of_tolerance",
            f"the timestamp is more than {tolerance:g} s from this server's clock",
        )
    return seconds


def matching_secret(secrets: Sequence[tuple[Secret, bytes]], message: bytes, given: Sequence[bytes]) -> str:
    """The name of the first secret whose HMAC-SHA256 of `message` equals one of `given` (NotAuthentic if none)."""
    for secret, key in secrets:
        expected = hmac.new(key, message, hashlib.sha256).digest()
        # Compare against every candidate, always, so timing does not depend on which one matched.
        if any([hmac.compare_digest(expected, candidate) for candidate in given]):
            return secret.name
    raise NotAuthentic("signature_mismatch", "the signature does not match any configured secret")


def require_type(value: Any, field: str) -> str:
    """The event type from `field`, which must be a non-empty string (Unreadable otherwise)."""
    if not isinstance(value, str) or not value.strip():
        raise Unreadable("missing_event_type", f"the body has no event type in {field!r}")
    return value.strip()

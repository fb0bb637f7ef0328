"""The one internal event that every kind of source becomes."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .timeutil import iso

if TYPE_CHECKING:
    from .kinds.base import Envelope


def event_id(dedupe_key: str) -> str:
    """The event's id: a digest of its dedupe key, safe in URLs, RQ job ids and shells."""
    return "ev_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]


_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def parse_json(raw: bytes) -> Any:
    """JSON from raw bytes; ValueError for anything unreadable, absurd nesting included.

    Liberal where it costs nothing: a UTF-8 byte order mark is skipped, and `\\ud83d`-style escapes
    that do not form a pair (senders cut strings in the middle of an emoji) become U+FFFD, since
    such text cannot be stored or encoded.
    """
    text = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    try:
        document = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if _LONE_SURROGATE.search(text):
        document = _mend(document)
    return document


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        # json.loads has already joined every proper pair; what is left of U+D800..U+DFFF is alone.
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend(v) for v in value]
    return value


def body_digest(raw: bytes) -> str:
    """The fallback identity of an event: what was signed, byte for byte."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def make_event(
    *,
    source: str,
    kind: str,
    environment: str,
    envelope: Envelope,
    raw: bytes,
    received_at: str,
    secret: str | None,
) -> Event:
    """The internal event for a parsed envelope; its id follows from the kind, environment and identity."""
    dedupe_key = f"{kind}:{environment}:{envelope.identity or body_digest(raw)}"
    return Event(
        id=event_id(dedupe_key),
        dedupe_key=dedupe_key,
        source=source,
        kind=kind,
        environment=environment,
        type=envelope.type,
        occurred_at=iso(envelope.occurred_at) if envelope.occurred_at else None,
        received_at=received_at,
        payload=envelope.payload,
        raw=raw,
        secret=secret,
        subject=envelope.subject,
    )


@dataclass
class Event:
    """An accepted webhook: verified, parsed, and kept with the raw bytes as received."""

    id: str
    dedupe_key: str
    source: str
    kind: str
    environment: str
    type: str | None
    occurred_at: str | None
    received_at: str
    payload: Any
    raw: bytes = field(repr=False)
    secret: str | None = None
    subject: str | None = None
    status: str = "received"
    error: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict; the raw bytes are left out (they can be large and carry personal data)."""
        out = asdict(self)
        out.pop("raw")
        return out

    @classmethod
    def from_row(cls, row: dict) -> Event:
        """Rebuild an event from its stored row; the payload is read again from the raw bytes."""
        from .kinds import payload_of

        payload = None
        if row["status"] != "invalid":  # invalid events are kept because they could not be read
            payload = payload_of(row["kind"], parse_json(row["raw"]))
        names = {f for f in cls.__dataclass_fields__ if f != "payload"}
        return cls(payload=payload, **{k: row[k] for k in names if k in row})

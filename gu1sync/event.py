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


_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile("[\ud800-\udfff]")
MAX_DEPTH = 100  # Gu1's payloads nest about 5 deep; a fixed limit, so the stack in use never decides


def parse_json(raw: bytes) -> Any:
    """JSON from raw bytes; ValueError for anything unreadable, absurd nesting included.

    Liberal where it costs nothing: a byte order mark is skipped, UTF-16 and UTF-32 are read as
    json.loads reads them, and surrogates that do not form a pair become U+FFFD, since such text
    cannot be stored or encoded: escaped (`\\ud83d`: senders cut strings in the middle of an emoji)
    or raw (CESU-8 bytes, a lone half in UTF-16).
    """
    text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads(bytes) does
    try:
        document = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting(document) > MAX_DEPTH:
        raise ValueError(f"JSON nested more than {MAX_DEPTH} deep")
    if _LONE_SURROGATE.search(text) or _SURROGATES.search(text):
        document = _mend(document)
    return document


def _nesting(document: Any) -> int:
    """How deep lists and objects nest, level by level (not recursively: it may be too deep for that)."""
    depth, level = 0, [document]
    while level and depth <= MAX_DEPTH:
        containers = [value for value in level if isinstance(value, dict | list)]
        if not containers:
            break
        depth += 1
        level = [child for value in containers for child in (value.values() if isinstance(value, dict) else value)]
    return depth


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        # json.loads has joined every escaped pair; what is left of U+D800..U+DFFF cannot be encoded.
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
        """Rebuild an event from its stored row; the payload is read again from the raw bytes (None for an
        event kept as invalid, or one whose body retention has purged)."""
        from .kinds import payload_of

        payload = None
        # Invalid events are kept because they could not be read; purged ones have no body left.
        if row["status"] != "invalid" and not row.get("purged_at"):
            payload = payload_of(row["kind"], parse_json(row["raw"]))
        names = {f for f in cls.__dataclass_fields__ if f != "payload"}
        return cls(payload=payload, **{k: row[k] for k in names if k in row})

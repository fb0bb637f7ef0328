"""The records gu1-sync keeps: an accepted event (what every kind of source becomes), and an action
of a matched rule with its delivery state. Both are plain dataclasses; the storage layer reads and
writes them, everything else passes them around."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .body import body_digest
from .status import ActionStatus, EventStatus
from .timeutil import iso


@dataclass(frozen=True)
class Envelope:
    """What a kind of source reads out of a verified body."""

    type: str
    occurred_at: datetime | None
    payload: Any
    subject: str | None = None  # the id of what the event is about: a validation, an entity, an evaluation
    identity: str | None = None  # what makes this event unique within its kind; None: hash the body


def event_id(dedupe_key: str) -> str:
    """The event's id: a digest of its dedupe key, safe in URLs, RQ job ids and shells."""
    return "ev_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]


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
    status: str = EventStatus.RECEIVED
    error: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict; the raw bytes are left out (they can be large and carry personal data)."""
        out = asdict(self)
        out.pop("raw")
        return out


def action_id(event_id: str, rule: str, index: int) -> str:
    """The idempotency key of one action of one rule for one event (safe as an RQ job id)."""
    return "act_" + hashlib.sha256(f"{event_id}\0{rule}\0{index}".encode()).hexdigest()[:32]


def attempt_job(action_id: str, attempt: int) -> str:
    """The RQ job id of an action's n-th attempt: `<action id>-<n>`."""
    return f"{action_id}-{attempt}"


def first_job(action_id: str) -> str:
    """The RQ job id of an action's first attempt."""
    return attempt_job(action_id, 1)


@dataclass
class Action:
    """One action of a matched rule for one event, rendered, with where its delivery stands."""

    id: str
    event_id: str
    rule: str
    action_index: int
    type: str  # salesforce.upsert, slack.post, ...
    status: ActionStatus
    params: dict[str, Any] | None  # the rendered request (None once retention has purged it)
    attempts: int = 0  # attempts made, all told
    retry_base: int = 0  # attempts made before the last replay: a replay gives a fresh set
    mode: str | None = None
    error: str | None = None
    error_code: str | None = None  # the service's code for the last failure: INVALID_FIELD, channel_not_found...
    status_code: int | None = None
    result: str | None = None
    job_id: str | None = None
    lease_until: str | None = None
    next_attempt_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    config_version: str | None = None
    alerted_at: str | None = None  # when the ops channel was told of it as a dead letter
    group_id: str | None = None  # the group whose one message carries it: the id of the group's first action
    group_line: str | None = None  # its line in that message
    interrupted: bool = False  # set by a claim: the previous attempt's worker died during it

    @property
    def attempts_since_replay(self) -> int:
        """Attempts that count against the retry policy."""
        return self.attempts - self.retry_base

    @property
    def carries_group(self) -> bool:
        """It is the first of a group: its attempts post the group's one message."""
        return self.group_id is not None and self.group_id == self.id

    @property
    def holder(self) -> str:
        """Who holds a record lock: this attempt, not just this action (a later attempt is someone else)."""
        return f"{self.id}#{self.attempts}"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Action:
        """An action from its stored row (params as stored JSON)."""
        names = cls.__dataclass_fields__
        values = {key: value for key, value in row.items() if key in names}
        values["status"] = ActionStatus(values["status"])
        params = values.get("params")
        values["params"] = json.loads(params) if isinstance(params, str | bytes) else params
        return cls(**values)


__all__ = ["Action", "Envelope", "Event", "action_id", "attempt_job", "event_id", "first_job", "make_event"]

"""Every status gu1-sync records, in one place: what an event, an action and an attempt can be.

StrEnums: each member is the text stored in the database and shown by the commands, so
`EventStatus.DONE == "done"` and a member can go wherever that text went before.
"""

from __future__ import annotations

from enum import StrEnum


class EventStatus(StrEnum):
    """Where an accepted event is: waiting, being processed, finished, or given up on."""

    RECEIVED = "received"  # stored, waiting for a worker
    PROCESSING = "processing"  # claimed by a worker (a claim older than STALE_CLAIM is a dead worker's)
    DONE = "done"  # the rules ran and every action was recorded
    FAILED = "failed"  # processing failed EVENT_ATTEMPTS times: waits for `replay`
    INVALID = "invalid"  # authentic but unreadable: kept for inspection, never processed


class EventOutcome(StrEnum):
    """What the rules made of a finished event."""

    MATCHED = "matched"
    NO_RULE_MATCHED = "no_rule_matched"


class ActionStatus(StrEnum):
    """Where one action of a matched rule is."""

    PENDING = "pending"  # recorded, its first attempt not made yet
    RUNNING = "running"  # an attempt holds it under a lease
    RETRYING = "retrying"  # failed in a way worth retrying: waits for its next attempt
    GROUPED = "grouped"  # waits to go out in its group's message (the group's first action carries it)
    DONE = "done"
    DEAD = "dead"  # a dead letter: failed for good, kept with its request and attempts for `replay`
    SKIPPED = "skipped"  # stale: a newer event already wrote everything it would write
    SHADOW = "shadow"  # its rule is in shadow mode: rendered and recorded, never sent
    THROTTLED = "throttled"  # its rule ran for the same key within the throttle window
    DRY_RUN = "dry_run"  # its connector has no credentials: rendered and recorded, never sent
    PURGED = "purged"  # a dead letter whose data retention removed: it can no longer be replayed

    @property
    def final(self) -> bool:
        """Nothing more will happen to it on its own (a dead one waits for a person)."""
        return self in FINAL_ACTION_STATUSES

    @property
    def in_flight(self) -> bool:
        """Work is still to be done for it."""
        return self in IN_FLIGHT_ACTION_STATUSES


FINAL_ACTION_STATUSES = frozenset({ActionStatus.DONE, ActionStatus.DEAD, ActionStatus.SKIPPED, ActionStatus.DRY_RUN})
IN_FLIGHT_ACTION_STATUSES = frozenset(
    {ActionStatus.PENDING, ActionStatus.RUNNING, ActionStatus.RETRYING, ActionStatus.GROUPED}
)
NOT_SENT_ACTION_STATUSES = frozenset(
    {ActionStatus.SHADOW, ActionStatus.THROTTLED, ActionStatus.SKIPPED, ActionStatus.DRY_RUN}
)


class AttemptOutcome(StrEnum):
    """How one attempt of one action ended."""

    STARTED = "started"  # not ended yet (or its worker died: see INTERRUPTED)
    OK = "ok"
    RETRY = "retry"  # failed; another attempt is scheduled
    FAILED = "failed"  # failed for good: the action is dead
    DEFERRED = "deferred"  # not tried: another action was writing the same record
    SKIPPED = "skipped"  # not sent: stale
    DRY_RUN = "dry_run"  # not sent: no credentials
    INTERRUPTED = "interrupted"  # its worker stopped during the call; the outcome is unknown


__all__ = ["ActionStatus", "AttemptOutcome", "EventOutcome", "EventStatus"]

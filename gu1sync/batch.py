"""Actions that share one call: a batch.

Actions of one type whose connector can carry out several in one call (ActionType.batch: Salesforce
upserts by object and external id field, creates, updates by record id) and that are ready at once
go together: the first attempts a job makes for the events it processed, and retries falling due
together. Everything else stays per action, as in gu1sync.delivery: each is claimed under its own
lease, gets its own outcome from its own row of the answer (done, retrying on its own schedule, or
dead alone), and writes to one record keep their order: of the actions in a batch that write the
same record, only the one of the earliest event goes; the others wait for the next call, and a
record another attempt is writing waits too.

A batch is one call: the connector's latency, its API usage and its verdict on the credentials are
counted once, and every outcome is recorded in one transaction.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from connectors import REGISTRY, ActionError, ActionMeta

from .config import Config
from .core.records import Action, Event
from .delivery import (
    Outcome,
    attempt,
    deferred,
    failed,
    limits,
    observe,
    record,
    stale_or_trimmed,
    succeeded,
)
from .runtime import Runtime
from .storage import StoreUnavailable

log = logging.getLogger(__name__)


def attempt_batch(
    runtime: Runtime,
    config: Config,
    action_type: str,
    action_ids: list[str],
    *,
    events: dict[str, Event] | None = None,
    killed_within: float | None = None,
) -> list[dict]:
    """One attempt of each of several actions of one type (and one batch key), in one call.

    `events`: the actions' events by id, when the caller has them at hand. `killed_within`: as for
    delivery.attempt, the seconds before RQ stops the calling job.
    """
    connector = runtime.connectors.get(action_type, config.connectors)
    if connector.dry_run or len(action_ids) == 1:
        known = next(iter(events.values())) if events and len(events) == 1 else None  # one event: theirs
        return [
            attempt(runtime, config, action_id, action_type=action_type, event=known, killed_within=killed_within)
            for action_id in action_ids
        ]
    lease, job_limit = limits(config, action_type)
    if killed_within is not None:
        lease = max(lease, killed_within + 10)
    started = time.perf_counter()
    claimed = runtime.actions.claim_many(action_ids, lease)
    if not claimed:
        return []
    events = dict(events or {})
    for action in claimed:
        if action.event_id not in events:
            found = runtime.store.event(action.event_id)
            if found is not None:
                events[action.event_id] = found
    outcomes, sending, holders = _order(runtime, claimed, events, lease)
    try:
        call = None
        if sending:
            call = _send(runtime, connector, action_type, sending, outcomes)
        return record(runtime, outcomes, started=started, job_limit=job_limit, call=call)
    finally:
        if holders:
            try:
                runtime.actions.unlock_many(holders)
            except StoreUnavailable as exc:  # the locks end with the leases; the outcomes are what mattered
                log.warning("%d record lock(s) not released (%s); they lapse with the leases", len(holders), exc)


def _order(
    runtime: Runtime, claimed: list[Action], events: dict[str, Event], lease: float
) -> tuple[list[Outcome], list[tuple[Action, dict, tuple | None, str | None]], dict[str, str]]:
    """Which claimed actions go in the call, with what params; the others' outcomes (deferred, stale).
    Returns (outcomes so far, what to send, the records locked: target -> holder)."""
    spec = REGISTRY.action(claimed[0].type)
    first: dict[str, Action] = {}  # target -> the action of the earliest event that writes it
    targets: dict[str, str] = {}  # action id -> its target
    for action in claimed:
        event = events.get(action.event_id)
        target = spec.target(action.params or {})
        if target is None or event is None or event.occurred_at is None:
            continue
        targets[action.id] = target
        held = first.get(target)
        if held is None or _when(events, action) < _when(events, held):
            first[target] = action
    locked = runtime.actions.lock_many({target: action.holder for target, action in first.items()}, lease)
    outcomes: list[Outcome] = []
    sending = []
    for action in claimed:
        params = action.params or {}
        target = targets.get(action.id)
        if target is None:
            sending.append((action, params, None, None))
        elif first[target] is not action:
            outcomes.append(deferred(runtime, action, "an earlier event's action for the same record goes first"))
        elif target not in locked:
            outcomes.append(deferred(runtime, action, "another action is writing the same record"))
        else:
            ordered = stale_or_trimmed(runtime, action, params, target, events[action.event_id])
            if isinstance(ordered, Outcome):
                outcomes.append(ordered)
            else:
                sending.append((action, *ordered))
    holders = {target: first[target].holder for target in locked}
    return outcomes, sending, holders


def _when(events: dict[str, Event], action: Action) -> tuple[str, str, str]:
    event = events[action.event_id]
    return (event.occurred_at or "", event.received_at, action.id)


def _send(
    runtime: Runtime,
    connector: Any,
    action_type: str,
    sending: list[tuple[Action, dict, tuple | None, str | None]],
    outcomes: list[Outcome],
) -> Any:
    """The one call; each action's outcome from its own row (appended to `outcomes`). Returns what the
    call showed of the service."""
    items = [(params, ActionMeta(action.id, action.event_id, action.rule)) for action, params, _, _ in sending]
    called = time.perf_counter()
    error: ActionError | None = None
    try:
        answers: list[Any] = connector.execute_batch(action_type, items)
    except ActionError as exc:
        error, answers = exc, [exc] * len(items)
    except Exception as exc:  # a bug of ours: each action a dead letter, with the traceback in the log
        log.exception("batch of %d %s: unexpected error", len(items), action_type)
        error = ActionError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)
        answers = [error] * len(items)
    call = observe(action_type, connector, called, error)
    for (action, _, written, note), answer in zip(sending, answers, strict=True):
        if isinstance(answer, ActionError):
            outcomes.append(failed(runtime, action, answer))
        else:
            outcomes.append(succeeded(action, answer, written, note))
    log.info(
        "batch type=%s actions=%d call=%s ms=%.0f",
        action_type,
        len(items),
        call.outcome,
        call.seconds * 1000,
        extra={"action_type": action_type, "actions": len(items), "outcome": call.outcome},
    )
    return call

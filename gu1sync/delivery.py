"""Delivering actions: each attempt of each action on its own.

An action's first attempt is made by the job that processed its event, straight away (one RQ job
per event, not one per action: RQ's own cost per job is the largest cost there is); every later
attempt is an RQ job of its own (gu1sync.jobs). An action is claimed under a lease, carried out by
its connector, and recorded: `done`, `retrying` (the next attempt is a job scheduled in Redis after
an exponential, jittered back-off; nothing sleeps in a worker), or `dead` (permanent, or out of
attempts) with its last error, its rendered request and every attempt kept for `replay`.

Writes to one record (the record an action type names, by the connector registry: a Salesforce
record by external id or record id) are serialised and ordered by the events' timestamps: a field
last written by a newer event is left out of an older event's request, and an action with nothing
left to write is skipped with the reason.

What remains of "exactly once": a call that succeeds but whose worker dies before the outcome is
committed (milliseconds) is made again when its lease expires. Upserts and updates are idempotent;
a Slack post or a created record would appear twice. The message carries the action id in its
metadata so that such a duplicate can be traced.

Long because every outcome of an attempt (done, retrying, deferred, stale, dead, superseded) is
decided and recorded here, for a single action and for a batch (gu1sync.batch) alike, and a reader
checks them side by side.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError

from connectors import REGISTRY, ActionError, ActionMeta, Connector, Result
from rules.engine import RuleResult, evaluate
from rules.model import RetrySettings

from .config import Config
from .core.records import Action, Event, attempt_job
from .core.status import ActionStatus, AttemptOutcome, EventStatus
from .pacing import WAIT_AT_MOST
from .runtime import Runtime, attempt_limits, event_job_limit
from .storage import StoreUnavailable
from .storage.counting import CallReport

log = logging.getLogger(__name__)

# The field an action that writes a whole record (no `fields` mapping) is ordered by.
WHOLE_RECORD = "*"


def backoff_delay(policy: RetrySettings, attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before attempt `attempt + 1`: exponential from `backoff`, capped, with jitter.

    A service's Retry-After is honoured: never sooner than it asked.
    """
    ceiling = min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1))
    delay = rng.uniform(ceiling / 2, ceiling)  # "equal jitter": spread out, never near zero
    if retry_after is not None:
        delay = max(delay, retry_after * rng.uniform(1.0, 1.1))
    return delay


def limits(config: Config, action_type: str) -> tuple[float, float]:
    """(lease, job time limit) for an action: see ConnectorSpec.limits."""
    return attempt_limits(config, action_type)


@dataclass
class Outcome:
    """How one attempt of one action ended: what ActionLog.finish records, and what follows once it is."""

    action: Action
    outcome: str
    status: str
    fields: dict[str, Any]
    code: str | None = None
    retry: tuple[str, float] | None = None  # (job id, seconds): the next attempt's job, queued once recorded


def succeeded(action: Action, result: Result, written: tuple | None, note: str | None) -> Outcome:
    """The call did what the action asked."""
    summary = result.summary + (f"; {note}" if note else "")
    fields = {"status_code": result.status_code, "result": summary, "written": written}
    return Outcome(action, AttemptOutcome.OK, ActionStatus.DONE, fields)


def failed(runtime: Runtime, action: Action, error: ActionError) -> Outcome:
    """Another attempt later (retryable, attempts left), or a dead letter."""
    # Attempts since the last replay count: a replayed action gets a fresh set of retries.
    attempt = action.attempts_since_replay
    policy = runtime.config.retry_for(action.rule)
    if error.retryable and attempt < policy.max_attempts:
        delay = backoff_delay(policy, attempt, error.retry_after, runtime.rng)
        return again(runtime, action, AttemptOutcome.RETRY, error.message, delay, error.status_code, error.code)
    message = error.message
    if error.retryable:
        message += f" (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
    fields = {"error": message, "status_code": error.status_code}
    return Outcome(action, AttemptOutcome.FAILED, ActionStatus.DEAD, fields, code=error.code)


def deferred(runtime: Runtime, action: Action, why: str, delay: float | None = None) -> Outcome:
    """Not an attempt (the record is busy, the channel's pace is used up): again shortly, without using up
    an attempt."""
    delay = delay if delay is not None else runtime.rng.uniform(0.5, 2.0)
    return again(runtime, action, AttemptOutcome.DEFERRED, why, delay, None, None, count=False)


def again(
    runtime: Runtime,
    action: Action,
    outcome: str,
    error: str,
    delay: float,
    status_code: int | None,
    code: str | None,
    *,
    count: bool = True,
) -> Outcome:
    """`retrying`, with the next attempt's job `delay` seconds from now."""
    # The n-th attempt runs as job <action>-<n>; a deferral reuses n, so its job needs a name of its own.
    job_id = attempt_job(action.id, action.attempts + 1 if count else action.attempts)
    if not count:
        job_id += f"-d{time.time_ns() // 1_000_000}"
    fields = {
        "error": error,
        "status_code": status_code,
        "next_attempt_at": runtime.clock() + timedelta(seconds=delay),
        "job_id": job_id,
        "count_attempt": count,
    }
    return Outcome(action, outcome, ActionStatus.RETRYING, fields, code=code, retry=(job_id, delay))


def stale_or_trimmed(
    runtime: Runtime, action: Action, params: dict[str, Any], target: str, event: Event
) -> Outcome | tuple[dict[str, Any], tuple, str | None]:
    """Leave out what a newer event already wrote: field by field where the action writes `fields`, else
    the record as a whole (WHOLE_RECORD). A `skipped` Outcome when nothing is left; else the params to
    send, what they write (for the record's versions), and a note of what was left out."""
    by_field = isinstance(params.get("fields"), dict)
    fields = list(params["fields"]) if by_field else [WHOLE_RECORD]
    newer = runtime.actions.newer(target, fields, event.occurred_at)
    if newer and set(newer) == set(fields):
        when, by = max(newer.values())
        error = (
            f"stale: this event occurred at {event.occurred_at}; {target} was already written by "
            f"event {by}, which occurred at {when}"
        )
        return Outcome(action, AttemptOutcome.SKIPPED, ActionStatus.SKIPPED, {"error": error})
    note = None
    if newer:
        params = {**params, "fields": {k: v for k, v in params["fields"].items() if k not in newer}}
        fields = list(params["fields"])
        note = f"left out {', '.join(sorted(newer))}: already written by a newer event"
    return params, (target, fields, event.occurred_at, event.id), note


def observe(action_type: str, connector: Connector, called: float, error: ActionError | None) -> CallReport:
    """What a call showed of the service, recorded with its outcome: its latency, whether it took the
    credentials (a refusal is told to the ops channel), the API usage it reported."""
    spec = REGISTRY.connector_of(action_type)
    if error is None:
        credentials: bool | None = True
    elif spec.refuses_credentials(error):
        credentials = False
    elif error.status_code is not None and error.status_code != 401:
        credentials = True  # an answer of the service (not a network failure): it got past the credentials
    else:  # no answer, or a 401 worth another try (a session expired again): it cannot tell
        credentials = None
    if error is None:
        outcome = AttemptOutcome.OK
    else:
        outcome = AttemptOutcome.RETRY if error.retryable else AttemptOutcome.FAILED
    return CallReport(
        connector.name,
        outcome,
        time.perf_counter() - called,
        credentials,
        error.code if credentials is False and error is not None else None,
        getattr(connector, "api_usage", None),
    )


def record(
    runtime: Runtime, outcomes: list[Outcome], *, started: float, job_limit: float, call: CallReport | None = None
) -> list[dict]:
    """Record the attempts' outcomes (one transaction), queue the retries they scheduled, and log them.

    Tries again while SQLite is locked: the call has been made, and an outcome left unrecorded would
    have it made again once the lease ends (a second post). Gives up (raises) only when the attempt's
    time limit is near.
    """
    duration = (time.perf_counter() - started) * 1000
    rows = [
        (o.action, {**o.fields, "outcome": o.outcome, "status": o.status, "duration_ms": duration}) for o in outcomes
    ]
    for (_, fields), o in zip(rows, outcomes, strict=True):
        fields["error_code"] = o.code
    deadline = started + job_limit - 1
    while True:
        try:
            kept = runtime.actions.finish_many(rows, call)
            break
        except StoreUnavailable:
            if time.perf_counter() + runtime.store.busy_timeout > deadline:
                raise
            log.warning("%d outcome(s) not recorded yet (SQLite is busy); trying again", len(rows))
    results = []
    for o, recorded in zip(outcomes, kept, strict=True):
        action = o.action
        if not recorded:
            log.warning(
                "action=%s attempt=%d outcome=%s came after its lease expired; another attempt has the action",
                action.id,
                action.attempts,
                o.outcome,
            )
            results.append({"action": action.id, "outcome": o.outcome, "status": "superseded"})
            continue
        if o.retry is not None:
            job_id, delay = o.retry
            if not runtime.queue.enqueue_action(action.id, job_id, delay=delay, timeout=job_limit):
                log.warning("action=%s: retry not queued (Redis); the sweep will queue it when due", action.id)
        _log_outcome(o, duration)
        result = {"action": action.id, "outcome": o.outcome, "status": o.status}
        if o.retry is not None:
            result["retry_in"] = round(o.retry[1], 1)
        results.append(result)
    return results


def _log_outcome(o: Outcome, duration: float) -> None:
    action, status_code = o.action, o.fields.get("status_code")
    log.info(
        "action=%s rule=%s type=%s attempt=%d outcome=%s status=%s code=%s ms=%.0f",
        action.id,
        action.rule,
        action.type,
        action.attempts,
        o.outcome,
        status_code or "-",
        o.code or "-",
        duration,
        extra={
            "action_id": action.id,
            "event_id": action.event_id,
            "rule": action.rule,
            "action_type": action.type,
            "attempt": action.attempts,
            "outcome": o.outcome,
            "status": o.status,
            "status_code": status_code,
            "code": o.code,
            "ms": round(duration),
        },
    )


@dataclass
class Attempt:
    """One attempt of one action, from claim to record."""

    runtime: Runtime
    action: Action
    connector: Connector
    lease: float
    job_limit: float
    event: Event | None = None  # the action's event, when the caller has it at hand
    call: CallReport | None = None  # what the connector call showed, once it is made
    turn_wait: float = WAIT_AT_MOST  # how long a paced call may wait here for its turn

    def run(self) -> dict:
        started = time.perf_counter()
        outcome, unlock = self._decide()
        # The call is counted under the attempt's outcome: ok, retry, or failed (out of attempts too).
        call = replace(self.call, outcome=outcome.outcome) if self.call is not None else None
        try:
            [result] = record(self.runtime, [outcome], started=started, job_limit=self.job_limit, call=call)
            return result
        finally:
            if unlock is not None:
                try:
                    self.runtime.actions.unlock(unlock, self.action.holder)
                except StoreUnavailable as exc:  # the lock ends with the lease; the outcome is what mattered
                    log.warning(
                        "action=%s: record lock not released (%s); it lapses with the lease", self.action.id, exc
                    )

    def _decide(self) -> tuple[Outcome, str | None]:
        """The attempt's outcome, and the record it locked (to release once the outcome is recorded)."""
        action, runtime = self.action, self.runtime
        event = self.event if self.event is not None and self.event.id == action.event_id else None
        event = event or runtime.store.event(action.event_id)
        params: dict[str, Any] = action.params or {}
        if self.connector.dry_run:
            result = f"not sent: connectors.{self.connector.name} has no credentials (dry run)"
            return Outcome(action, AttemptOutcome.DRY_RUN, ActionStatus.DRY_RUN, {"result": result}), None
        target = REGISTRY.action(action.type).target(params)
        if target is None or event is None or event.occurred_at is None:
            return self._call(params, None), None
        if not runtime.actions.lock(target, action.holder, self.lease):
            return deferred(runtime, action, "another action is writing the same record"), None
        try:
            ordered = stale_or_trimmed(runtime, action, params, target, event)
            if isinstance(ordered, Outcome):
                return ordered, target
            params, written, note = ordered
            return self._call(params, written, note), target
        except BaseException:
            runtime.actions.unlock(target, action.holder)
            raise

    def _call(self, params: dict, written: tuple | None, note: str | None = None) -> Outcome:
        action = self.action
        if action.carries_group:
            params, note = self._group_message(params)
        paced = REGISTRY.action(action.type).pace
        if paced is not None:
            turn = paced(params, REGISTRY.settings_of(self.runtime.config.connectors, action.type))
            wait = self.runtime.pacer.turn(*turn, wait_at_most=self.turn_wait) if turn is not None else 0.0
            if wait > 0:
                why = f"paced: {turn[1]} call(s) to {turn[0]} in {turn[2]} s already"
                return deferred(self.runtime, action, why, delay=wait + self.runtime.rng.uniform(0, 0.5))
        meta = ActionMeta(action.id, action.event_id, action.rule)
        called = time.perf_counter()
        try:
            result = self.connector.execute(action.type, params, meta)
        except ActionError as error:
            self.call = observe(action.type, self.connector, called, error)
            return failed(self.runtime, action, error)
        except Exception as exc:  # a bug of ours: keep it as a dead letter, with the traceback in the log
            log.exception("action=%s: unexpected error", action.id)
            error = ActionError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)
            return failed(self.runtime, action, error)
        self.call = observe(action.type, self.connector, called, None)
        return succeeded(action, result, written, note)

    def _group_message(self, params: dict) -> tuple[dict, str]:
        """The one message of the group this action carries: its window has passed, so it is closed to
        new members (a match from now on opens the next group), and every member gets a line."""
        members, max_lines = self.runtime.actions.close_group(self.action.id)
        grouping = REGISTRY.action(self.action.type).group
        assert grouping is not None  # only a groupable type is ever grouped
        lines = [member["group_line"] or f"event {member['event_id']}" for member in members]
        return grouping.compose(params, lines, self.action.rule, max_lines), f"group of {len(members)}"


def attempt(
    runtime: Runtime,
    config: Config,
    action_id: str,
    *,
    action_type: str | None = None,
    event: Event | None = None,
    killed_within: float | None = None,
    turn_wait: float = WAIT_AT_MOST,
) -> dict:
    """One attempt of one action, in the job that calls it (`action_type` and `event` when known).

    `killed_within`: the seconds left before RQ stops the calling job, when that job is not the
    attempt's own; the lease then lasts until after that moment, so that no second attempt can
    start while this one may still be running. `turn_wait`: how long a paced call may wait for its
    turn in this thread before it is deferred instead (an event's job, with others' attempts to
    make, waits for none).
    """
    if action_type is None:
        known = runtime.actions.get(action_id)
        if known is None:
            log.warning("action=%s: no such action", action_id)
            return {"action": action_id, "skipped": True}
        action_type = known.type
    connector = runtime.connectors.get(action_type, config.connectors)
    lease, job_limit = limits(config, action_type)
    if killed_within is not None:
        lease = max(lease, killed_within + 10)
    action = runtime.actions.claim(action_id, lease)
    if action is None:
        log.info("skip action=%s: not due (done, dead, running or waiting for its retry)", action_id)
        return {"action": action_id, "skipped": True}
    if action.interrupted:
        log.warning("action=%s: its previous attempt was interrupted (worker stopped); trying again", action_id)
    return Attempt(runtime, action, connector, lease, job_limit, event, turn_wait=turn_wait).run()


UNFINISHED = (EventStatus.RECEIVED, EventStatus.PROCESSING, EventStatus.FAILED)


def replay(
    runtime: Runtime,
    *,
    event_id: str | None = None,
    action_id: str | None = None,
    since: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Dead actions go again, rendered with the config in force now; returns a line per action or event.

    Events that never finished processing are queued again as a whole. `progress` is told (actions
    done, actions in all) as it goes.
    """
    config = runtime.config
    lines: list[str] = []
    if action_id is not None:
        found = runtime.actions.get(action_id)
        if found is None:
            return [f"{action_id}: no such action"]
        if found.status != ActionStatus.DEAD:
            return [f"{action_id}: not replayed, it is {found.status} (only dead actions are replayed)"]
        dead = [found]
    else:
        dead = runtime.actions.dead(event_id=event_id, since=since)
    if event_id is not None:
        event = runtime.store.event(event_id)
        if event is None:
            return [f"{event_id}: no such event"]
        if event.status in UNFINISHED:
            runtime.store.retry_failed(event_id)  # a failed event becomes received again
            try:
                queued, state = runtime.queue.requeue_event(event_id)
            except RedisError:
                queued, state = False, "not queued yet: Redis is down, the sweep will queue it"
            if queued:
                lines.append(f"{event_id}: event queued to be processed again")
            else:
                lines.append(f"{event_id}: event will be processed again (its job is {state or 'on its way'})")
        elif not dead:
            lines.append(f"{event_id}: nothing to replay (no dead actions)")
    # A group's members go again with its first action, which carries the group's one message.
    members = [action for action in dead if action.group_id is not None and not action.carries_group]
    dead = [action for action in dead if action not in members]
    for carrier_id in dict.fromkeys(member.group_id for member in members):
        if carrier_id is not None and all(action.id != carrier_id for action in dead):
            carrier = runtime.actions.get(carrier_id)
            if carrier is not None and carrier.status == ActionStatus.DEAD:
                dead.append(carrier)
    for member in members:
        lines.append(f"{member.id}: goes again in its group's message (action {member.group_id})")
    by_event: dict[str, list[Action]] = {}
    for action in dead:
        by_event.setdefault(action.event_id, []).append(action)
    done = 0
    for owner, actions in by_event.items():
        event = runtime.store.event(owner)
        results = {result.rule: result for result in evaluate(config.rules, event)} if event else {}
        for action in actions:
            lines.append(_replay_one(runtime, config, action, results.get(action.rule)))
            done += 1
            if progress is not None:
                progress(done, len(dead))
    return lines


def _replay_one(runtime: Runtime, config: Config, action: Action, result: RuleResult | None) -> str:
    name = f"{action.id} ({action.rule} #{action.action_index} {action.type})"
    if result is None:
        return f"{name}: not replayed, the rule is no longer in the config"
    if not result.matched:
        return f"{name}: not replayed, the rule no longer matches: {result.reason}"
    if result.mode == "shadow":
        return f"{name}: not replayed, the rule is in shadow mode now"
    rendered = next((a for a in result.actions if a.index == action.action_index), None)
    if rendered is None or rendered.type != action.type:
        return f"{name}: not replayed, the rule's action #{action.action_index} is not a {action.type} any more"
    if rendered.error:
        return f"{name}: not replayed, it still cannot be rendered: {rendered.error}"
    if not runtime.actions.reset(action.id, rendered.params or {}, config.digest):
        return f"{name}: not replayed, it is no longer dead"
    job_id = attempt_job(action.id, action.attempts + 1)
    runtime.actions.set_job(action.id, job_id)
    queued = runtime.queue.enqueue_action(action.id, job_id, timeout=limits(config, action.type)[1])
    return f"{name}: queued again" + ("" if queued else " (Redis is down: the sweep will queue it)")


__all__ = [
    "Attempt",
    "Outcome",
    "attempt",
    "backoff_delay",
    "deferred",
    "event_job_limit",
    "failed",
    "limits",
    "observe",
    "record",
    "replay",
    "stale_or_trimmed",
    "succeeded",
]

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
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError

from connectors import REGISTRY, ActionError, ActionMeta, Connector
from rules.engine import RuleResult, evaluate
from rules.model import RetrySettings

from .config import Config
from .core.records import Action, Event, attempt_job
from .core.status import ActionStatus, AttemptOutcome, EventStatus
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
class Attempt:
    """One attempt of one action, from claim to record."""

    runtime: Runtime
    action: Action
    connector: Connector
    lease: float
    job_limit: float
    event: Event | None = None  # the action's event, when the caller has it at hand
    call: tuple | None = None  # what the connector call showed (see _observe), once it is made

    def run(self) -> dict:
        action, runtime = self.action, self.runtime
        started = time.perf_counter()
        event = self.event if self.event is not None else runtime.store.event(action.event_id)
        params: dict[str, Any] = action.params or {}
        meta = ActionMeta(action.id, action.event_id, action.rule)
        if self.connector.dry_run:
            return self._end(
                started,
                AttemptOutcome.DRY_RUN,
                ActionStatus.DRY_RUN,
                result=f"not sent: connectors.{self.connector.name} has no credentials (dry run)",
            )
        target = REGISTRY.action(action.type).target(params)
        if target is None or event is None or event.occurred_at is None:
            return self._call(started, params, meta, None)
        if not runtime.actions.lock(target, action.holder, self.lease):
            return self._defer(started, "another action is writing the same record")
        try:
            return self._ordered(started, params, meta, target, event)
        finally:
            try:
                runtime.actions.unlock(target, action.holder)
            except StoreUnavailable as exc:  # the lock ends with the lease; the outcome is what mattered
                log.warning("action=%s: record lock not released (%s); it lapses with the lease", action.id, exc)

    def _ordered(self, started: float, params: dict, meta: ActionMeta, target: str, event: Event) -> dict:
        """Leave out what a newer event already wrote: field by field where the action writes `fields`,
        else the record as a whole (WHOLE_RECORD)."""
        by_field = isinstance(params.get("fields"), dict)
        fields = list(params["fields"]) if by_field else [WHOLE_RECORD]
        newer = self.runtime.actions.newer(target, fields, event.occurred_at)
        if newer and set(newer) == set(fields):
            when, by = max(newer.values())
            return self._end(
                started,
                AttemptOutcome.SKIPPED,
                ActionStatus.SKIPPED,
                error=f"stale: this event occurred at {event.occurred_at}; {target} was already written by "
                f"event {by}, which occurred at {when}",
            )
        note = None
        if newer:
            params = {**params, "fields": {k: v for k, v in params["fields"].items() if k not in newer}}
            fields = list(params["fields"])
            note = f"left out {', '.join(sorted(newer))}: already written by a newer event"
        written = (target, fields, event.occurred_at, event.id)
        return self._call(started, params, meta, written, note)

    def _call(self, started: float, params: dict, meta: ActionMeta, written: tuple | None, note: str | None = None):
        called = time.perf_counter()
        try:
            result = self.connector.execute(self.action.type, params, meta)
        except ActionError as error:
            self._observe(called, error)
            return self._failed(started, error)
        except Exception as exc:  # a bug of ours: keep it as a dead letter, with the traceback in the log
            log.exception("action=%s: unexpected error", self.action.id)
            return self._failed(started, ActionError(f"unexpected {type(exc).__name__}: {exc}", retryable=False))
        self._observe(called, None)
        summary = result.summary + (f"; {note}" if note else "")
        return self._end(
            started,
            AttemptOutcome.OK,
            ActionStatus.DONE,
            status_code=result.status_code,
            result=summary,
            written=written,
        )

    def _observe(self, called: float, error: ActionError | None) -> None:
        """What the call showed of the service, recorded with the outcome: its latency, whether it took the
        credentials (a refusal is told to the ops channel), the API usage it reported."""
        spec = REGISTRY.connector_of(self.action.type)
        if error is None:
            credentials: bool | None = True
        elif spec.refuses_credentials(error):
            credentials = False
        else:  # an answer of the service (not a network failure): it got past the credentials
            credentials = True if error.status_code is not None else None
        self.call = (
            time.perf_counter() - called,
            credentials,
            error.code if credentials is False and error is not None else None,
            getattr(self.connector, "api_usage", None),
        )

    def _failed(self, started: float, error: ActionError) -> dict:
        # Attempts since the last replay count: a replayed action gets a fresh set of retries.
        attempt = self.action.attempts_since_replay
        policy = self.runtime.config.retry_for(self.action.rule)
        if error.retryable and attempt < policy.max_attempts:
            delay = backoff_delay(policy, attempt, error.retry_after, self.runtime.rng)
            return self._again(
                started, AttemptOutcome.RETRY, error.message, delay, error.status_code, count=True, code=error.code
            )
        message = error.message
        if error.retryable:
            message += f" (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
        return self._end(
            started,
            AttemptOutcome.FAILED,
            ActionStatus.DEAD,
            error=message,
            status_code=error.status_code,
            code=error.code,
        )

    def _defer(self, started: float, why: str) -> dict:
        # Not an attempt: the record is busy. Try again shortly, without using up an attempt.
        return self._again(started, AttemptOutcome.DEFERRED, why, self.runtime.rng.uniform(0.5, 2.0), None, count=False)

    def _again(
        self,
        started: float,
        outcome: str,
        error: str,
        delay: float,
        status_code: int | None,
        count: bool,
        code: str | None = None,
    ):
        action = self.action
        # The n-th attempt runs as job <action>-<n>; a deferral reuses n, so its job needs a name of its own.
        job_id = attempt_job(action.id, action.attempts + 1 if count else action.attempts)
        if not count:
            job_id += f"-d{time.time_ns() // 1_000_000}"
        next_at = self.runtime.clock() + timedelta(seconds=delay)
        self._end(
            started,
            outcome,
            ActionStatus.RETRYING,
            code=code,
            error=error,
            status_code=status_code,
            next_attempt_at=next_at,
            job_id=job_id,
            count_attempt=count,
        )
        if not self.runtime.queue.enqueue_action(action.id, job_id, delay=delay, timeout=self.job_limit):
            log.warning("action=%s: retry not queued (Redis); the sweep will queue it when due", action.id)
        return {"action": action.id, "outcome": outcome, "retry_in": round(delay, 1)}

    def _finish(self, started: float, **fields: Any) -> bool:
        """Record the attempt's outcome, trying again while SQLite is locked: the call has been made, and
        an outcome left unrecorded would have it made again once the lease ends (a second post). Gives
        up (raises) only when the attempt's time limit is near."""
        deadline = started + self.job_limit - 1
        while True:
            try:
                return self.runtime.actions.finish(self.action, **fields)
            except StoreUnavailable:
                if time.perf_counter() + self.runtime.store.busy_timeout > deadline:
                    raise
                log.warning("action=%s: outcome not recorded yet (SQLite is busy); trying again", self.action.id)

    def _end(self, started: float, outcome: str, status: str, *, code: str | None = None, **fields: Any) -> dict:
        action = self.action
        duration = (time.perf_counter() - started) * 1000
        if self.call is not None:
            seconds, credentials, refusal, usage = self.call
            fields["call"] = CallReport(self.connector.name, outcome, seconds, credentials, refusal, usage)
        if not self._finish(started, outcome=outcome, status=status, duration_ms=duration, error_code=code, **fields):
            log.warning(
                "action=%s attempt=%d outcome=%s came after its lease expired; another attempt has the action",
                action.id,
                action.attempts,
                outcome,
            )
            return {"action": action.id, "outcome": outcome, "status": "superseded"}
        log.info(
            "action=%s rule=%s type=%s attempt=%d outcome=%s status=%s code=%s ms=%.0f",
            action.id,
            action.rule,
            action.type,
            action.attempts,
            outcome,
            fields.get("status_code") or "-",
            code or "-",
            duration,
            extra={
                "action_id": action.id,
                "event_id": action.event_id,
                "rule": action.rule,
                "action_type": action.type,
                "attempt": action.attempts,
                "outcome": outcome,
                "status": status,
                "status_code": fields.get("status_code"),
                "code": code,
                "ms": round(duration),
            },
        )
        return {"action": action.id, "outcome": outcome, "status": status}


def attempt(
    runtime: Runtime,
    config: Config,
    action_id: str,
    *,
    action_type: str | None = None,
    event: Event | None = None,
    killed_within: float | None = None,
) -> dict:
    """One attempt of one action, in the job that calls it (`action_type` and `event` when known).

    `killed_within`: the seconds left before RQ stops the calling job, when that job is not the
    attempt's own; the lease then lasts until after that moment, so that no second attempt can
    start while this one may still be running.
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
    return Attempt(runtime, action, connector, lease, job_limit, event).run()


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


__all__ = ["Attempt", "attempt", "backoff_delay", "event_job_limit", "limits", "replay"]

"""The RQ jobs, and the only module RQ names by string (gu1sync.queue puts them on the queue):

- `process_event(event_id)`: run the rules on one stored event, record what they made of it, and
  make its actions' first attempts; then the same for the next stored events while the job is young;
- `run_action(action_id)`: one attempt of one action (every retry is one of these), with the other
  retries of its kind that fall due with it when its connector can make them one call (gu1sync.batch).

Jobs work with this process's Runtime (`use_runtime`; a plain `rq worker` builds one from
$GU1_SYNC_CONFIG on first use), so connectors and a logged-in Salesforce client live from job to job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from redis.exceptions import RedisError
from rq import get_current_job

from connectors import REGISTRY
from rules.engine import evaluate

from .batch import attempt_batch
from .config import Config, load_config
from .core.records import Event, first_job
from .core.records import action_id as action_id_of
from .delivery import attempt, limits
from .runtime import Runtime
from .storage import StoreUnavailable

log = logging.getLogger(__name__)

_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's Runtime; a plain `rq worker` builds it from $GU1_SYNC_CONFIG on first use."""
    global _runtime
    if _runtime is None:
        config = load_config(os.environ.get("GU1_SYNC_CONFIG", "config.yaml"))
        _runtime = Runtime.for_service(config, role="worker")
    return _runtime


def use_runtime(value: Runtime | None) -> None:
    """Set (or clear) the Runtime jobs in this process use."""
    global _runtime
    _runtime = value


# A job that has processed its own event goes on with the next stored ones, for this long at most:
# under load, one RQ job carries a batch of events instead of one each (RQ's own cost per job is
# several times the cost of processing an event), and the jobs of the events it took are dropped.
BATCH_SECONDS = 0.5
BATCH_EVENTS = 200


class JobClock:
    """How long the RQ job running now may still run (None outside RQ: no limit)."""

    def __init__(self) -> None:
        job = get_current_job()
        self.started = time.monotonic()
        self.limit: float | None = float(job.timeout) if job is not None and job.timeout else None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float | None:
        return None if self.limit is None else self.limit - self.elapsed()

    def fits(self, seconds: float) -> bool:
        """Whether something that may take `seconds` ends well before RQ stops this job."""
        remaining = self.remaining()
        return remaining is None or remaining >= seconds + 5


def process_event(event_id: str) -> dict:
    """RQ job: run the rules on one stored event, record what they made of it, and make its actions'
    first attempts; then the same for the next stored events, while the job is young (a batch).

    Running it twice for one event does nothing the second time.
    """
    rt = runtime()
    clock = JobClock()
    first_attempts = FirstAttempts(rt, clock)
    try:
        event = rt.store.claim(event_id)
        if event is None:
            log.info("skip event=%s: already processed or being processed", event_id)
            own = None
        else:
            own = _process(rt, event, first_attempts)  # a failure fails the job: its traceback is in RQ's log
        batch, exhausted = 0, False
        while batch < BATCH_EVENTS and (clock.elapsed() < BATCH_SECONDS or first_attempts.linger_left() > 0):
            event = rt.store.claim_next()
            if event is None:
                # Actions held for a batch may wait a little for others (connectors.<name>.batch.linger).
                wait = first_attempts.linger_left()
                if wait > 0:
                    time.sleep(min(wait, 0.05))
                    continue
                exhausted = True
                break
            batch += 1
            rt.queue.discard_event_job(event.id)
            try:
                _process(rt, event, first_attempts)
            except Exception:  # logged and given back by _process; its own job is gone, the sweep queues it
                exhausted = True
                break
        if not exhausted and (waiting := rt.store.next_waiting()) is not None:
            # Stored events may have no job of their own (the receiver queues one per burst): the
            # next job goes on from where this one stopped.
            rt.queue.enqueue(waiting)
    finally:
        first_attempts.flush()
        first_attempts.wait()
    result: dict = {"event": event_id, "batch": batch}
    if own is None:
        result["skipped"] = True
    else:
        result.update(own)
    return result


def run_action(action_id: str) -> dict:
    """RQ job: one attempt of one action. Does nothing if the action is done, dead, or not due.

    Retries falling due together (after an outage, say) share a call where the connector can make
    one of several: those of the same type and batch key due now go with this one."""
    rt = runtime()
    config = rt.config
    action = rt.actions.get(action_id)
    key = _batch_key(config, action.type, action.params) if action is not None else None
    if action is None or key is None:
        return attempt(rt, config, action_id, action_type=action.type if action is not None else None)
    batching = REGISTRY.batching(config.connectors, action.type)
    assert batching is not None  # a batch key means the connector batches this type
    alike = [
        other.id
        for other in rt.actions.due_alike(action.type, action_id, limit=4 * batching.max)
        if _batch_key(config, other.type, other.params) == key
    ][: batching.max - 1]
    if not alike:
        return attempt(rt, config, action_id, action_type=action.type)
    outcomes = attempt_batch(rt, config, action.type, [action_id, *alike])
    return {"action": action_id, "batch": len(outcomes), "outcomes": outcomes}


def _batch_key(config: Config, action_type: str, params: dict | None) -> str | None:
    """Which of this type's actions may share a call with this one (None: it goes alone)."""
    if params is None or REGISTRY.batching(config.connectors, action_type) is None:
        return None
    batch = REGISTRY.action(action_type).batch
    return batch(params) if batch is not None else None


def _process(rt: Runtime, event: Event, first_attempts: FirstAttempts) -> dict:
    """Evaluate and record one claimed event, and hand its actions' first attempts over."""
    config = rt.config
    try:
        results = evaluate(config.rules, event)
        recorded = rt.store.record_evaluation(event.id, results, config.digest)
    except Exception as exc:
        # Give the claim back, so the event goes again (the sweep re-queues it), or stops as `failed`
        # after a few tries.
        status = rt.store.release(event.id, f"{type(exc).__name__}: {exc}")
        log.error(
            "event=%s: processing failed (%s); the event is %s now",
            event.id,
            type(exc).__name__,
            status,
            extra={"event_id": event.id, "error_type": type(exc).__name__, "status": status},
        )
        raise
    matched = [r.rule for r in results if r.matched]
    pending = recorded.pending
    log.info(
        "processed event=%s type=%s config=%s matched=%s actions_pending=%d",
        event.id,
        event.type,
        config.digest,
        ",".join(matched) or "-",
        len(pending),
        extra={
            "event_id": event.id,
            "event_type": event.type,
            "config_version": config.digest,
            "rules": matched,
            "actions_pending": len(pending),
        },
    )
    rendered = {
        action_id_of(event.id, result.rule, action.index): action.params
        for result in results
        if result.matched
        for action in result.actions
    }
    for pending_id, action_type in pending:
        first_attempts.submit(config, pending_id, action_type, event, rendered.get(pending_id))
    for carrier_id, action_type, delay in recorded.later:  # a group's message, once its window has passed
        if not rt.queue.enqueue_action(
            carrier_id, first_job(carrier_id), delay=delay, timeout=limits(config, action_type)[1]
        ):
            log.warning("action=%s: group message not scheduled (Redis); the sweep will queue it when due", carrier_id)
    return {"matched": matched, "pending": [pending_id for pending_id, _ in pending]}


ATTEMPT_THREADS = 4  # first attempts in flight at once, per worker process
# Calls whose repetition shows (a second Slack post, a second created record: the registry says which)
# go one at a time in a process, so that a worker killed mid-call leaves at most one of them with an
# unknown outcome (made again when its lease ends). Those that land the same when repeated go side by side.
_one_at_a_time = threading.Lock()
_executor: tuple[int, ThreadPoolExecutor] | None = None


def _attempt_threads() -> ThreadPoolExecutor:
    """This process's threads for first attempts (a forked worker makes its own)."""
    global _executor
    if _executor is None or _executor[0] != os.getpid():
        _executor = (os.getpid(), ThreadPoolExecutor(ATTEMPT_THREADS, thread_name_prefix="gu1sync-attempt"))
    return _executor[1]


class FirstAttempts:
    """The first attempts of a job's actions, made by a few threads while the job goes on with its
    batch: an event's wait on Salesforce does not hold up the next event, nor its own Slack post.
    Actions whose connector can make one call of several (ActionType.batch) are held and go together:
    when they reach the connector's `batch.max`, when no stored event waits any more (after
    `batch.linger`, 0 by default), or when the job's turn ends. The job waits for all of them before it
    ends, so RQ's time limit still covers every attempt."""

    def __init__(self, rt: Runtime, clock: JobClock):
        self.runtime = rt
        self.clock = clock
        self.futures: list[Future] = []
        # (action type, batch key) -> [(action id, event)], and when the first of them was held.
        self.held: dict[tuple[str, str], list[tuple[str, Event]]] = {}
        self.held_since: dict[tuple[str, str], float] = {}

    def submit(
        self, config: Config, action_id: str, action_type: str, event: Event, params: dict | None = None
    ) -> None:
        """Make the attempt soon (or hold it for a batch); a job that runs too far ahead of its attempts
        waits for them."""
        connector = self.runtime.connectors.get(action_type, config.connectors)  # built here, not by two threads
        key = None if connector.dry_run else _batch_key(config, action_type, params)
        if key is None:
            self._start(self._run, config, action_id, action_type, event)
            return
        group = self.held.setdefault((action_type, key), [])
        if not group:
            self.held_since[(action_type, key)] = time.monotonic()
        group.append((action_id, event))
        batching = REGISTRY.batching(config.connectors, action_type)
        if batching is not None and len(group) >= batching.max:
            self._flush((action_type, key))

    def linger_left(self) -> float:
        """How much longer the actions held may wait for others to share their call (0: no longer)."""
        left = 0.0
        for (action_type, _), since in self.held_since.items():
            batching = REGISTRY.batching(self.runtime.config.connectors, action_type)
            if batching is not None:
                left = max(left, batching.linger - (time.monotonic() - since))
        return left

    def flush(self) -> None:
        """Send every batch held."""
        for group in list(self.held):
            self._flush(group)

    def _flush(self, group: tuple[str, str]) -> None:
        items = self.held.pop(group)
        self.held_since.pop(group, None)
        self._start(self._run_batch, self.runtime.config, group[0], items)

    def _start(self, work: Callable[..., None], *args: object) -> None:
        self.futures = [future for future in self.futures if not future.done()]
        while len(self.futures) >= 2 * ATTEMPT_THREADS:  # wait on those in flight only: a done one returns at once
            self.futures = list(wait(self.futures, return_when=FIRST_COMPLETED).not_done)
        self.futures.append(_attempt_threads().submit(work, *args))

    def _run(self, config: Config, action_id: str, action_type: str, event: Event) -> None:
        if not REGISTRY.action(action_type).repeat_harmless:
            with _one_at_a_time:
                return self._attempt(config, action_id, action_type, event)
        return self._attempt(config, action_id, action_type, event)

    def _run_batch(self, config: Config, action_type: str, items: list[tuple[str, Event]]) -> None:
        if not REGISTRY.action(action_type).repeat_harmless:
            with _one_at_a_time:
                return self._attempt_batch(config, action_type, items)
        return self._attempt_batch(config, action_type, items)

    def _attempt(self, config: Config, action_id: str, action_type: str, event: Event) -> None:
        job_limit = limits(config, action_type)[1]
        if self.clock.fits(job_limit):
            try:
                attempt(
                    self.runtime,
                    config,
                    action_id,
                    action_type=action_type,
                    event=event,
                    killed_within=self.clock.remaining(),
                    turn_wait=0.0,  # the job's other attempts wait for this thread: a later turn is deferred
                )
                return
            except (StoreUnavailable, RedisError) as exc:
                log.warning("action=%s: first attempt not made (%s: %s)", action_id, type(exc).__name__, exc)
            except Exception:
                log.exception("action=%s: first attempt failed unexpectedly", action_id)
        self._own_job(action_id, job_limit)

    def _attempt_batch(self, config: Config, action_type: str, items: list[tuple[str, Event]]) -> None:
        job_limit = limits(config, action_type)[1]
        ids = [action_id for action_id, _ in items]
        if self.clock.fits(job_limit):
            try:
                attempt_batch(
                    self.runtime,
                    config,
                    action_type,
                    ids,
                    events={event.id: event for _, event in items},
                    killed_within=self.clock.remaining(),
                )
                return
            except (StoreUnavailable, RedisError) as exc:
                log.warning("batch of %d: first attempts not made (%s: %s)", len(ids), type(exc).__name__, exc)
            except Exception:
                log.exception("batch of %d: first attempts failed unexpectedly", len(ids))
        for action_id in ids:
            self._own_job(action_id, job_limit)

    def _own_job(self, action_id: str, job_limit: float) -> None:
        """A job of its own then, as every retry is; a claimed action's job waits for its lease to end."""
        if not self.runtime.queue.enqueue_action(action_id, first_job(action_id), timeout=job_limit):
            log.warning("action=%s not queued (Redis); the sweep will queue it", action_id)

    def wait(self) -> None:
        """Until every attempt handed over has been made (or handed to a job of its own)."""
        wait(self.futures)

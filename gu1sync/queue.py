"""RQ between the receiver and the workers, and between an action and its next attempt.

The receiver enqueues an event only after it is committed to SQLite, so Redis is never the only
copy. If Redis is unreachable the event simply waits in SQLite: the sweep (run by workers at start
and every `queue.sweep_interval`) queues every stored event that is unfinished and has no live job,
and every action that is due (or whose worker died mid-call) and has no live job. Job ids are
derived from event and action ids and enqueues are `unique`, so the receiver and any number of
sweeps never put the same work on the queue twice.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from queue import Empty, SimpleQueue

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from .core.records import attempt_job
from .core.status import ActionStatus
from .core.timeutil import Clock, utcnow
from .storage import ActionLog, Store

log = logging.getLogger(__name__)

# The jobs, by the names RQ imports them by (gu1sync.jobs is the only module named here).
PROCESS_EVENT = "gu1sync.jobs.process_event"
RUN_ACTION = "gu1sync.jobs.run_action"
RESULT_TTL = 24 * 3600  # a finished job's hash stays this long; `unique` refuses a second enqueue meanwhile
# A failed job keeps its traceback, whose last line may quote event data: a week, not RQ's year. The
# work itself is in SQLite (`failed` events, dead actions), where retention reaches it.
FAILURE_TTL = 7 * 24 * 3600
# What the sweep calls a job that Redis still shows as started or scheduled but nobody will run: its
# worker died before claiming the work, or no scheduler is left to move it to the queue.
ABANDONED, OVERDUE = "abandoned", "overdue"
# Job states that mean nobody is on it: no job at all, or one that ended, or one that never will.
NOT_LIVE = {
    None,
    JobStatus.FINISHED.value,
    JobStatus.FAILED.value,
    JobStatus.STOPPED.value,
    JobStatus.CANCELED.value,
    ABANDONED,
    OVERDUE,
}


def redact(url: str) -> str:
    """A Redis URL with any password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ':'}***@{host}"


def redis_client(url: str, *, connect_timeout: float, timeout: float | None) -> Redis:
    """A Redis client that fails fast instead of retrying with back-off inside a request."""
    return Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


class EventQueue:
    """Puts stored work on the RQ queue, and finds the work that never got there."""

    def __init__(
        self,
        redis_url: str,
        name: str,
        store: Store,
        clock: Clock = utcnow,
        *,
        cooldown: float = 5.0,
        connect_timeout: float = 0.5,
        timeout: float = 2.0,
        connection: Redis | None = None,
    ):
        self.redis_url = redis_url
        self.store = store
        self.clock = clock
        self.cooldown = cooldown
        self.redis = connection or redis_client(redis_url, connect_timeout=connect_timeout, timeout=timeout)
        self.queue = Queue(name, connection=self.redis, serializer=JSONSerializer)
        self._scheduled_key = self.queue.scheduled_job_registry.key
        self._down_until = 0.0
        # The RQ time limits of an event's job, and of an action's job by action type (set from the config).
        self.event_timeout: float | None = None
        self.action_timeout: Callable[[str], float | None] = lambda action_type: None
        # Takes a queued job off the queue, atomically: only a job nobody has started can be taken.
        self._take = self.redis.register_script(
            "if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) return 1 end return 0"
        )

    def _put(self, function: str, argument: str, job_id: str, delay: float = 0, timeout: float | None = None) -> None:
        """One unique job; DuplicateJobError when a job of that id still exists."""
        if delay <= 0:
            self.queue.enqueue_call(
                function,
                args=(argument,),
                job_id=job_id,
                unique=True,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                timeout=timeout,
            )
            return
        job = self.queue.create_job(
            function,
            args=(argument,),
            job_id=job_id,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            timeout=timeout,
            status=JobStatus.SCHEDULED,
        )
        # The wait happens in Redis (the scheduler moves it to the queue when due), never in a worker.
        # RQ keeps whole seconds and drops the fraction, which would release the job up to 1 s early
        # (before a Retry-After has passed): round up instead.
        when = utcnow() + timedelta(seconds=delay)  # RQ's clock, not a test's
        if when.microsecond:
            when = when.replace(microsecond=0) + timedelta(seconds=1)
        self.queue.schedule_job(job, when, unique=True)

    def _guarded(self, put: Callable[[], object]) -> bool:
        """Run `put` (it queues something); False when Redis is unreachable (the sweep will queue it later).

        After a failure, Redis is not tried again for `cooldown` seconds, so that a dead Redis
        costs each request nothing instead of a connect timeout.
        """
        if time.monotonic() < self._down_until:
            return False
        try:
            put()
        except DuplicateJobError:
            return True  # already queued (by a sweep, or an earlier delivery)
        except RedisError as exc:
            if time.monotonic() >= self._down_until:
                log.warning(
                    "redis unreachable at %s (%s); work stays in SQLite until the sweep queues it",
                    redact(self.redis_url),
                    type(exc).__name__,
                )
            self._down_until = time.monotonic() + self.cooldown
            return False
        self._down_until = 0.0
        return True

    def enqueue(self, event_id: str) -> bool:
        """Queue the event's job (its id is the event id)."""
        return self._guarded(lambda: self._put(PROCESS_EVENT, event_id, event_id, timeout=self.event_timeout))

    def enqueue_many(self, event_ids: list[str]) -> bool:
        """Queue several events' jobs in one round trip; False when Redis is unreachable.

        Not `unique` (RQ cannot be, many at a time): for events just stored, no job can exist yet
        but one a sweep made in the meantime, and a second job for an event finds it claimed.
        """
        datas = [
            Queue.prepare_data(
                PROCESS_EVENT,
                args=(event_id,),
                job_id=event_id,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                timeout=self.event_timeout,
            )
            for event_id in event_ids
        ]

        def put() -> None:
            with self.redis.pipeline() as pipe:
                self.queue.enqueue_many(datas, pipeline=pipe)
                pipe.execute()

        return self._guarded(put)

    def discard_event_job(self, event_id: str) -> bool:
        """Take the event's job off the queue if it is still waiting there (a batch has processed the
        event in its place); a job already started, or never queued, is left alone. False then."""
        try:
            return bool(self._take(keys=[self.queue.key, Job.key_for(event_id)], args=[event_id]))
        except RedisError:
            return False  # the job will run, find the event processed, and do nothing

    def enqueue_action(self, action_id: str, job_id: str, delay: float = 0, timeout: float | None = None) -> bool:
        """Queue an action's attempt, now or after `delay` seconds."""
        return self._guarded(lambda: self._put(RUN_ACTION, action_id, job_id, delay, timeout))

    def _job_states(self, job_ids: list[str], grace: float | None = None) -> list[str | None]:
        """Each job's status. With `grace` (the sweep, for work that is unfinished and due), a job still
        `started` after the time a live worker needs to claim its work (busy_timeout + grace) belonged
        to a worker that died: ABANDONED; a job still `scheduled` more than `grace` after it was due has
        no scheduler left to move it (RQ's dies with its worker, or on a Redis error): OVERDUE."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(Job.key_for(job_id), "status", "started_at")
            pipe.zscore(self._scheduled_key, job_id)
        replies = pipe.execute()
        now = utcnow()
        states: list[str | None] = []
        for (status, started_at), due in zip(replies[::2], replies[1::2], strict=True):
            state = status.decode() if status else None
            if grace is not None and state == JobStatus.STARTED.value and started_at:
                if (now - utcparse(started_at.decode())).total_seconds() > grace + self.store.busy_timeout:
                    state = ABANDONED
            elif grace is not None and state == JobStatus.SCHEDULED.value and due is not None:
                if due < now.timestamp() - grace:
                    state = OVERDUE
            states.append(state)
        return states

    def _requeue(
        self, function: str, argument: str, job_id: str, state: str | None, timeout: float | None = None
    ) -> bool:
        if state == OVERDUE:  # else a scheduler that comes back would run it a second time
            self.redis.zrem(self._scheduled_key, job_id)
        if state is not None:  # finished, failed, stopped or abandoned: the old hash would make `unique` refuse
            self.redis.delete(Job.key_for(job_id))
        try:
            self._put(function, argument, job_id, timeout=timeout)
        except DuplicateJobError:
            return False  # queued a moment ago by someone else
        return True

    def requeue_event(self, event_id: str) -> tuple[bool, str | None]:
        """Queue an event's job unless a live one exists: (queued, the state of the job found)."""
        [state] = self._job_states([event_id])
        queued = state in NOT_LIVE and self._requeue(PROCESS_EVENT, event_id, event_id, state, self.event_timeout)
        return queued, state

    def sweep(self, grace: float = 5.0) -> list[str]:
        """Queue every unfinished event and every due action that has no live job; return their ids.

        A job counts as live while it is queued, scheduled or started. One that finished while its
        work is still unfinished was turned away (the work was claimed, or not yet due): it goes
        again too. Work younger than `grace` seconds is left to whoever is queueing it right now.
        Raises RedisError when Redis is still down.
        """
        actions = ActionLog(self.store)
        queued = []
        for events in self.store.unfinished(received_before=self.clock() - timedelta(seconds=grace)):
            for event_id, state in zip(events, self._job_states(events, grace), strict=True):  # one round trip
                if state in NOT_LIVE and self._requeue(PROCESS_EVENT, event_id, event_id, state, self.event_timeout):
                    queued.append(event_id)
        for rows in actions.due(grace):
            # A running action's next job is its next attempt; a pending or retrying one has its job named.
            jobs = [
                row["job_id"]
                if row["status"] != ActionStatus.RUNNING and row["job_id"]
                else attempt_job(row["id"], row["attempts"] + 1)
                for row in rows
            ]
            for row, job_id, state in zip(rows, jobs, self._job_states(jobs, grace), strict=True):
                timeout = self.action_timeout(row["type"])
                if state in NOT_LIVE and self._requeue(RUN_ACTION, row["id"], job_id, state, timeout):
                    if job_id != row["job_id"]:
                        actions.set_job(row["id"], job_id)
                    queued.append(row["id"])
        self._down_until = 0.0
        if queued:
            log.info("sweep queued %d stored event(s) or action(s) that had no live job", len(queued))
        return queued

    def ping(self) -> bool:
        """Whether Redis answers right now."""
        try:
            return bool(self.redis.ping())
        except RedisError:
            return False


class BackgroundEnqueuer:
    """Queues the receiver's events from a thread of its own: a request answers as soon as its event
    is committed to SQLite, and RQ's cost per job is paid per burst, not per event.

    A job takes the next stored events after its own (jobs.process_event) and, when it stops with
    some still waiting, queues the next one's job: so a job queued after an event was committed is
    enough to get that event processed. This thread queues a job for each event as it comes, but at
    most one per RING_INTERVAL: an event that comes sooner waits for the end of that interval, and
    the newest event of those that came meanwhile then gets the job.

    Nothing can be lost here: every event is in SQLite already. Ids still in memory when the process
    dies, or handed over while Redis is down, are queued by the workers' sweep.
    """

    RING_INTERVAL = 0.005

    def __init__(self, queue: EventQueue):
        self.queue = queue
        self._ids: SimpleQueue[str | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gu1sync-enqueuer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def enqueue(self, event_id: str) -> None:
        """Hand an event over to be queued in a moment."""
        self._ids.put(event_id)

    def _run(self) -> None:
        rung = 0.0
        while True:
            newest = self._ids.get()
            if newest is None:
                return
            closing = False
            while (left := rung + self.RING_INTERVAL - time.monotonic()) > 0:
                try:
                    more = self._ids.get(timeout=left)
                except Empty:
                    break
                if more is None:
                    closing = True
                    break
                newest = more
            self._ring(newest)
            rung = time.monotonic()
            if closing:
                return

    def _ring(self, event_id: str) -> None:
        try:
            self.queue.enqueue_many([event_id])
        except Exception:  # the thread must outlive anything; the sweep queues what this missed
            log.exception("could not queue event %s; the sweep will queue it", event_id)

    def close(self, timeout: float = 2.0) -> None:
        """Queue what has been handed over (waiting at most `timeout` seconds), then stop."""
        if self._thread.is_alive():
            self._ids.put(None)
            self._thread.join(timeout)


def wait_for_redis(url: str, patience: float | None = None, *, grace: float = 0.0) -> bool:
    """Block until Redis answers (True), or until `patience` seconds have passed (False). Says it waits
    only once `grace` seconds have passed (a Redis just started takes a moment: that is no news)."""
    client = redis_client(url, connect_timeout=2, timeout=2)
    started = last_said = time.monotonic()
    said = False
    while True:
        try:
            client.ping()
            if said:
                log.info("redis at %s answers again", redact(url))
            return True
        except RedisError as exc:
            now = time.monotonic()
            if patience is not None and now - started >= patience:
                return False
            if now - started >= grace and (not said or now - last_said >= 30):
                log.warning("waiting for redis at %s (%s)", redact(url), type(exc).__name__)
                said, last_said = True, now
            time.sleep(0.1 if now - started < grace else 1)

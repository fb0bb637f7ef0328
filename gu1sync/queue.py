"""RQ between the receiver and the workers, and between an action and its next attempt.

The receiver enqueues an event only after it is committed to SQLite, so Redis is never the only
copy. If Redis is unreachable the event simply waits in SQLite: the sweep (run by workers at start
and every `queue.sweep_interval`) queues every stored event that is unfinished and has no live job,
and every action that is due (or whose worker died mid-call) and has no live job. Job ids are
derived from event and action ids and enqueues are `unique`, so the receiver and any number of
sweeps never put the same work on the queue twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .store import Store
from .timeutil import Clock, utcnow

log = logging.getLogger(__name__)

PROCESS_EVENT = "gu1sync.worker.process_event"
RUN_ACTION = "gu1sync.delivery.run_action"
RESULT_TTL = 24 * 3600  # a finished job's hash stays this long; `unique` refuses a second enqueue meanwhile
# Job states that mean nobody is on it: no job at all, or one that ended.
NOT_LIVE = {
    None,
    JobStatus.FINISHED.value,
    JobStatus.FAILED.value,
    JobStatus.STOPPED.value,
    JobStatus.CANCELED.value,
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
        self._down_until = 0.0
        # The RQ time limit of an action's job, by action type (the worker sets it from the config).
        self.action_timeout: Callable[[str], float | None] = lambda action_type: None

    def _put(self, function: str, argument: str, job_id: str, delay: float = 0, timeout: float | None = None) -> None:
        """One unique job; DuplicateJobError when a job of that id still exists."""
        if delay <= 0:
            self.queue.enqueue_call(
                function, args=(argument,), job_id=job_id, unique=True, result_ttl=RESULT_TTL, timeout=timeout
            )
            return
        job = self.queue.create_job(
            function,
            args=(argument,),
            job_id=job_id,
            result_ttl=RESULT_TTL,
            timeout=timeout,
            status=JobStatus.SCHEDULED,
        )
        # The wait happens in Redis (the scheduler moves it to the queue when due), never in a worker.
        self.queue.schedule_job(job, utcnow() + timedelta(seconds=delay), unique=True)  # RQ's clock, not a test's

    def _guarded(
        self, function: str, argument: str, job_id: str, delay: float = 0, timeout: float | None = None
    ) -> bool:
        """Queue a job; False when Redis is unreachable (the sweep will queue it later).

        After a failure, Redis is not tried again for `cooldown` seconds, so that a dead Redis
        costs each request nothing instead of a connect timeout.
        """
        if time.monotonic() < self._down_until:
            return False
        try:
            self._put(function, argument, job_id, delay, timeout)
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
        return self._guarded(PROCESS_EVENT, event_id, event_id)

    def enqueue_action(self, action_id: str, job_id: str, delay: float = 0, timeout: float | None = None) -> bool:
        """Queue an action's attempt, now or after `delay` seconds."""
        return self._guarded(RUN_ACTION, action_id, job_id, delay, timeout)

    def _job_states(self, job_ids: list[str]) -> list[str | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        return [state.decode() if state else None for state in pipe.execute()]

    def _requeue(
        self, function: str, argument: str, job_id: str, state: str | None, timeout: float | None = None
    ) -> bool:
        if state is not None:  # finished, failed or stopped: the old hash would make `unique` refuse
            self.redis.delete(Job.key_for(job_id))
        try:
            self._put(function, argument, job_id, timeout=timeout)
        except DuplicateJobError:
            return False  # queued a moment ago by someone else
        return True

    def requeue_event(self, event_id: str) -> tuple[bool, str | None]:
        """Queue an event's job unless a live one exists: (queued, the state of the job found)."""
        [state] = self._job_states([event_id])
        return state in NOT_LIVE and self._requeue(PROCESS_EVENT, event_id, event_id, state), state

    def sweep(self, grace: float = 5.0) -> list[str]:
        """Queue every unfinished event and every due action that has no live job; return their ids.

        A job counts as live while it is queued, scheduled or started. One that finished while its
        work is still unfinished was turned away (the work was claimed, or not yet due): it goes
        again too. Work younger than `grace` seconds is left to whoever is queueing it right now.
        Raises RedisError when Redis is still down.
        """
        from .actionlog import ActionLog

        actions = ActionLog(self.store)
        queued = []
        for events in self.store.unfinished(received_before=self.clock() - timedelta(seconds=grace)):
            for event_id, state in zip(events, self._job_states(events), strict=True):  # one round trip a page
                if state in NOT_LIVE and self._requeue(PROCESS_EVENT, event_id, event_id, state):
                    queued.append(event_id)
        for rows in actions.due(grace):
            # A running action's next job is its next attempt; a pending or retrying one has its job named.
            jobs = [
                row["job_id"] if row["status"] != "running" and row["job_id"] else f"{row['id']}-{row['attempts'] + 1}"
                for row in rows
            ]
            for row, job_id, state in zip(rows, jobs, self._job_states(jobs), strict=True):
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

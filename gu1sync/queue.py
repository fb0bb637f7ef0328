"""RQ between the receiver and the workers.

The receiver enqueues an event only after it is committed to SQLite, so Redis is never the only
copy. If Redis is unreachable the event simply waits in SQLite: the sweep (run by workers at start
and every `queue.sweep_interval`) enqueues every stored event that is unfinished and has no job.
The job id is the event id and enqueues are `unique`, so the receiver and any number of sweeps
never put the same event on the queue twice.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from .store import Store
from .timeutil import Clock, utcnow

log = logging.getLogger(__name__)

PROCESS_EVENT = "gu1sync.worker.process_event"
RESULT_TTL = 24 * 3600  # a finished job's hash stays this long; `unique` refuses a second enqueue meanwhile


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
    """Puts stored events on the RQ queue, and finds the ones that never got there."""

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

    def enqueue(self, event_id: str) -> bool:
        """Queue the event's job; False when Redis is unreachable (the sweep will queue it later).

        After a failure, Redis is not tried again for `cooldown` seconds, so that a dead Redis
        costs each request nothing instead of a connect timeout.
        """
        if time.monotonic() < self._down_until:
            return False
        try:
            self._put(event_id)
        except DuplicateJobError:
            return True  # already queued (by a sweep, or an earlier delivery)
        except RedisError as exc:
            if self._down_until == 0.0 or time.monotonic() >= self._down_until:
                log.warning(
                    "redis unreachable at %s (%s); events stay in SQLite until the sweep queues them",
                    redact(self.redis_url),
                    type(exc).__name__,
                )
            self._down_until = time.monotonic() + self.cooldown
            return False
        self._down_until = 0.0
        return True

    def _put(self, event_id: str) -> None:
        self.queue.enqueue_call(
            PROCESS_EVENT,
            args=(event_id,),
            job_id=event_id,
            unique=True,
            result_ttl=RESULT_TTL,
            description=f"process {event_id}",
        )

    def sweep(self, grace: float = 5.0) -> list[str]:
        """Queue every unfinished event that has no job in Redis; return their ids.

        Events younger than `grace` seconds are left to the receiver that is storing them.
        Raises RedisError when Redis is still down.
        """
        candidates = self.store.unfinished(received_before=self.clock() - timedelta(seconds=grace))
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for event_id in candidates:
            pipe.exists(Job.key_for(event_id))
        present = pipe.execute()
        enqueued = []
        for event_id, exists in zip(candidates, present, strict=True):
            if exists:
                continue
            try:
                self._put(event_id)
            except DuplicateJobError:
                continue  # the receiver queued it a moment ago
            enqueued.append(event_id)
        self._down_until = 0.0
        if enqueued:
            log.info("sweep queued %d stored event(s) that were not on the queue", len(enqueued))
        return enqueued

    def ping(self) -> bool:
        """Whether Redis answers right now."""
        try:
            return bool(self.redis.ping())
        except RedisError:
            return False

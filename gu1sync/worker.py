"""The worker side: the RQ job that processes one stored event, and the worker process itself.

A worker process sweeps once at start (events stored while Redis was down get queued), keeps
sweeping every `queue.sweep_interval` in a background thread, and runs RQ jobs with the scheduler
so that retries parked for later are run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from .config import Config, load_config
from .queue import EventQueue, redact, redis_client
from .store import DONE, Store, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What jobs in this process work with; built once per worker process."""

    config: Config
    store: Store
    queue: EventQueue

    @classmethod
    def from_config(cls, config: Config) -> WorkerContext:
        """Open the store and the queue described by `config`."""
        store = Store(config.storage_path, config.storage.busy_timeout)
        store.migrate()
        queue = EventQueue(config.queue.redis_url, config.queue.name, store, cooldown=0)
        return cls(config, store, queue)


_context: WorkerContext | None = None


def context() -> WorkerContext:
    """This process's context; a plain `rq worker` builds it from $GU1_SYNC_CONFIG on first use."""
    global _context
    if _context is None:
        _context = WorkerContext.from_config(load_config(os.environ.get("GU1_SYNC_CONFIG", "config.yaml")))
    return _context


def use_context(ctx: WorkerContext | None) -> None:
    """Set (or clear) the context jobs in this process use."""
    global _context
    _context = ctx


def process_event(event_id: str) -> dict:
    """RQ job: process one stored event. Running it twice for one event does nothing the second time."""
    ctx = context()
    event = ctx.store.claim(event_id)
    if event is None:
        log.info("skip event=%s: already processed or being processed", event_id)
        return {"event": event_id, "skipped": True}
    outcome = "no_rule_matched"  # with no rules configured, every event matches none
    ctx.store.finish(event_id, DONE, outcome, None, ctx.config.digest)
    log.info("processed event=%s type=%s outcome=%s", event_id, event.type, outcome)
    return {"event": event_id, "outcome": outcome}


class Sweeper(threading.Thread):
    """Runs the queue's sweep every `interval` seconds until stopped."""

    def __init__(self, queue: EventQueue, interval: float):
        super().__init__(name="gu1sync-sweeper", daemon=True)
        self.queue = queue
        self.interval = interval
        self._stopped = threading.Event()

    def sweep_once(self) -> list[str]:
        """One sweep; a Redis or SQLite failure is logged and left for the next one."""
        try:
            return self.queue.sweep()
        except (RedisError, StoreUnavailable) as exc:
            log.warning("sweep skipped: %s: %s", type(exc).__name__, exc)
            return []

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.sweep_once()

    def stop(self) -> None:
        """Stop after the current sweep."""
        self._stopped.set()


def wait_for_redis(url: str, patience: float | None = None) -> bool:
    """Block until Redis answers (True), or until `patience` seconds have passed (False)."""
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
            if not said or now - last_said >= 30:
                log.warning("waiting for redis at %s (%s)", redact(url), type(exc).__name__)
                said, last_said = True, now
            time.sleep(1)


def run_worker(config: Config, *, burst: bool = False, with_scheduler: bool = True) -> None:
    """Run one RQ worker (forking a work horse per job) plus the sweeper, until stopped."""
    ctx = WorkerContext.from_config(config)
    use_context(ctx)
    wait_for_redis(config.queue.redis_url)
    sweeper = Sweeper(ctx.queue, config.queue.sweep_interval)
    swept = sweeper.sweep_once()
    log.info("worker start: config %s, %d stored event(s) queued by the start-up sweep", config.digest, len(swept))
    if not burst:
        sweeper.start()
    connection = redis_client(config.queue.redis_url, connect_timeout=5, timeout=None)
    queue = Queue(config.queue.name, connection=connection, serializer=JSONSerializer)
    worker = Worker([queue], connection=connection, serializer=JSONSerializer)
    try:
        worker.work(
            burst=burst, with_scheduler=with_scheduler, logging_level=logging.getLevelName(log.getEffectiveLevel())
        )
    finally:
        sweeper.stop()

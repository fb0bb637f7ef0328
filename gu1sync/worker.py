"""The worker side: the RQ job that processes one stored event, and the workers themselves.

Each worker process sweeps once at start (work stored while Redis was down gets queued), keeps
sweeping every `queue.sweep_interval` in a background thread, and runs RQ jobs with the scheduler
so that retries parked for later are run. `gu1-sync worker --processes N` runs an RQ worker pool.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from connectors import Connectors
from rules.engine import evaluate

from . import logs
from .actionlog import ActionLog
from .config import Config, ConfigError, load_config
from .delivery import limits
from .queue import EventQueue, redact, redis_client
from .store import Store, StoreUnavailable, first_job

log = logging.getLogger(__name__)


class ConfigWatcher:
    """The config in force, re-read when its file changes; a broken new file is refused, loudly."""

    def __init__(self, config: Config):
        self.config = config
        self.path = config.file
        self._stamp = self._stat()

    def _stat(self) -> tuple | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def current(self) -> Config:
        """The last good config; a changed file is loaded first (costs one stat when unchanged)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return self.config
        self._stamp = stamp
        try:
            fresh = load_config(self.path)
        except Exception as exc:  # a bug in loading must not take the last good config away either
            if not isinstance(exc, ConfigError):
                log.exception(
                    "config %s changed but could not be loaded; version %s stays", self.path, self.config.digest
                )
                return self.config
            log.error(
                "config %s changed but has %d error(s); version %s stays in force:\n%s",
                self.path,
                len(exc.errors),
                self.config.digest,
                exc,
            )
            return self.config
        if fresh.digest != self.config.digest:
            log.info(
                "config reloaded: version %s -> %s (%d rule(s))", self.config.digest, fresh.digest, len(fresh.rules)
            )
            for section in ("storage", "queue"):
                if getattr(fresh, section) != getattr(self.config, section):
                    log.warning("config %s: changes to %s: take effect when the workers restart", self.path, section)
        self.config = fresh
        return fresh


@dataclass
class WorkerContext:
    """What jobs in this process work with; built once per worker process, so that connectors (and a
    logged-in Salesforce client) are reused from job to job."""

    watcher: ConfigWatcher
    store: Store
    queue: EventQueue
    actions: ActionLog
    connectors: Connectors = field(default_factory=Connectors)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, config: Config, connectors: Connectors | None = None) -> WorkerContext:
        """Open the store and the queue described by `config`."""
        store = Store(config.storage_path, config.storage.busy_timeout)
        store.migrate()
        queue = EventQueue(config.queue.redis_url, config.queue.name, store, cooldown=0)
        ctx = cls(ConfigWatcher(config), store, queue, ActionLog(store), connectors or Connectors())
        queue.action_timeout = lambda action_type: limits(ctx.config, action_type)[1]
        return ctx

    @property
    def config(self) -> Config:
        """The config in force now (hot-reloaded)."""
        return self.watcher.current()


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
    """RQ job: run the rules on one stored event and record what they made of it.

    Running it twice for one event does nothing the second time.
    """
    ctx = context()
    config = ctx.config
    event = ctx.store.claim(event_id)
    if event is None:
        log.info("skip event=%s: already processed or being processed", event_id)
        return {"event": event_id, "skipped": True}
    try:
        results = evaluate(config.rules, event)
        pending = ctx.store.record_evaluation(event_id, results, config.digest)
    except Exception as exc:
        # Give the claim back, so the event goes again (the sweep re-queues it), or stops as `failed`
        # after a few tries; the job fails too, with the traceback in RQ's log.
        status = ctx.store.release(event_id, f"{type(exc).__name__}: {exc}")
        log.error("event=%s: processing failed (%s); the event is %s now", event_id, type(exc).__name__, status)
        raise
    types = {a["id"]: a["type"] for a in ctx.store.actions(event_id)}
    for action_id in pending:  # each action is its own job, retried on its own
        limit = limits(config, types[action_id])[1]
        if not ctx.queue.enqueue_action(action_id, first_job(action_id), timeout=limit):
            log.warning("action=%s not queued (Redis); the sweep will queue it", action_id)
    matched = [r.rule for r in results if r.matched]
    log.info(
        "processed event=%s type=%s config=%s matched=%s actions_pending=%d",
        event_id,
        event.type,
        config.digest,
        ",".join(matched) or "-",
        len(pending),
    )
    return {"event": event_id, "matched": matched, "pending": pending}


class JsonQueue(Queue):
    """An RQ queue that always speaks JSON, however it is built (the worker pool builds its own)."""

    def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003 - RQ's signature
        kwargs["serializer"] = JSONSerializer
        super().__init__(*args, **kwargs)


class Gu1Worker(SimpleWorker):
    """RQ's worker without a fork per job, so that connectors and their sessions live from job to job
    (and it is several times faster). It sweeps at start and every `queue.sweep_interval` in a thread
    of its own, and brings the config up to date before each job."""

    def work(self, *args, **kwargs) -> bool:  # noqa: ANN002, ANN003 - RQ's signature
        # RQ's pool passes INFO to the workers it respawns; keep its chatter at our level.
        kwargs["logging_level"] = logs.rq_level(logging.getLevelName(logging.getLogger().level))
        ctx = context()
        sweeper = Sweeper(ctx.queue, ctx.config.queue.sweep_interval)
        swept = sweeper.sweep_once()
        if swept:
            log.info("start-up sweep queued %d stored event(s) or action(s)", len(swept))
        if not kwargs.get("burst"):
            sweeper.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            sweeper.stop()

    def execute_job(self, job, queue):  # noqa: ANN001 - RQ's signature
        context().watcher.current()
        return super().execute_job(job, queue)


class Sweeper(threading.Thread):
    """Runs the queue's sweep every `interval` seconds until stopped."""

    def __init__(self, queue: EventQueue, interval: float):
        super().__init__(name="gu1sync-sweeper", daemon=True)
        self.queue = queue
        self.interval = interval
        self._stopped = threading.Event()

    def sweep_once(self) -> list[str]:
        """One sweep; a failure is logged and left for the next one (the thread must outlive it)."""
        try:
            return self.queue.sweep()
        except (RedisError, StoreUnavailable, sqlite3.Error) as exc:
            log.warning("sweep skipped: %s: %s", type(exc).__name__, exc)
        except Exception:
            log.exception("sweep failed; the next one is in %g s", self.interval)
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


def dry_run_notice(config: Config) -> list[str]:
    """One plain sentence per connector that has no credentials (its actions are recorded, never sent)."""
    lines = []
    if config.connectors.salesforce.auth is None:
        lines.append(
            "Salesforce has no credentials (connectors.salesforce.auth): salesforce.* actions run dry, "
            "rendered and recorded but never sent."
        )
    if config.connectors.slack.token is None and config.connectors.slack.webhook_url is None:
        lines.append(
            "Slack has no credentials (connectors.slack.token or webhook_url): slack.post actions run dry, "
            "rendered and recorded but never sent."
        )
    return lines


def run_worker(config: Config, *, burst: bool = False, processes: int = 1) -> None:
    """Run RQ workers with the scheduler until stopped: one in this process, or a pool of `processes`.

    SIGTERM or Ctrl-C stops them warmly: each finishes the job in hand first.
    """
    os.environ["GU1_SYNC_CONFIG"] = os.path.abspath(config.file)  # pool workers load it themselves
    wait_for_redis(config.queue.redis_url)
    log.info("workers start: %d process(es), config %s, %d rule(s)", processes, config.digest, len(config.rules))
    for line in dry_run_notice(config):
        log.warning(line)
    connection = redis_client(config.queue.redis_url, connect_timeout=5, timeout=None)
    level = logs.rq_level(logging.getLevelName(log.getEffectiveLevel()))
    logs.quiet_rq()
    if processes == 1:
        use_context(WorkerContext.from_config(config))
        worker = Gu1Worker(
            [JsonQueue(config.queue.name, connection=connection)], connection=connection, serializer=JSONSerializer
        )
        worker.work(burst=burst, with_scheduler=True, logging_level=level)
        return
    # The pool process forks the workers; it holds no database connection and no thread of its own.
    pool = WorkerPool(
        [config.queue.name],
        connection=connection,
        num_workers=processes,
        worker_class=Gu1Worker,
        serializer=JSONSerializer,
        queue_class=JsonQueue,
    )
    logs.quiet_rq()  # the pool set its own logger to INFO
    pool.start(burst=burst, logging_level=level)

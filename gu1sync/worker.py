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
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, get_current_job
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from connectors import Connectors
from rules.engine import evaluate

from . import logs
from .actionlog import ActionLog
from .config import Config, ConfigError, load_config
from .delivery import attempt, event_job_limit, limits
from .event import Event
from .queue import EventQueue, redact, redis_client
from .retention import run_retention
from .store import Store, StoreUnavailable, first_job
from .timeutil import utcnow

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
        store = Store(config.storage_path, config.storage.busy_timeout, durable=False)
        wait_for_store(store)
        queue = EventQueue(config.queue.redis_url, config.queue.name, store, cooldown=0)
        ctx = cls(ConfigWatcher(config), store, queue, ActionLog(store), connectors or Connectors())
        queue.event_timeout = event_job_limit(config)
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
    ctx = context()
    clock = JobClock()
    first_attempts = FirstAttempts(ctx, clock)
    try:
        event = ctx.store.claim(event_id)
        if event is None:
            log.info("skip event=%s: already processed or being processed", event_id)
            own = None
        else:
            own = _process(ctx, event, first_attempts)  # a failure fails the job: its traceback is in RQ's log
        batch, exhausted = 0, False
        while batch < BATCH_EVENTS and clock.elapsed() < BATCH_SECONDS:
            event = ctx.store.claim_next()
            if event is None:
                exhausted = True
                break
            batch += 1
            ctx.queue.discard_event_job(event.id)
            try:
                _process(ctx, event, first_attempts)
            except Exception:  # logged and given back by _process; its own job is gone, the sweep queues it
                exhausted = True
                break
        if not exhausted and (waiting := ctx.store.next_waiting()) is not None:
            # Stored events may have no job of their own (the receiver queues one per burst): the
            # next job goes on from where this one stopped.
            ctx.queue.enqueue(waiting)
    finally:
        first_attempts.wait()
    result: dict = {"event": event_id, "batch": batch}
    if own is None:
        result["skipped"] = True
    else:
        result.update(own)
    return result


def _process(ctx: WorkerContext, event: Event, first_attempts: FirstAttempts) -> dict:
    """Evaluate and record one claimed event, and hand its actions' first attempts over."""
    config = ctx.config
    try:
        results = evaluate(config.rules, event)
        pending = ctx.store.record_evaluation(event.id, results, config.digest)
    except Exception as exc:
        # Give the claim back, so the event goes again (the sweep re-queues it), or stops as `failed`
        # after a few tries.
        status = ctx.store.release(event.id, f"{type(exc).__name__}: {exc}")
        log.error("event=%s: processing failed (%s); the event is %s now", event.id, type(exc).__name__, status)
        raise
    matched = [r.rule for r in results if r.matched]
    log.info(
        "processed event=%s type=%s config=%s matched=%s actions_pending=%d",
        event.id,
        event.type,
        config.digest,
        ",".join(matched) or "-",
        len(pending),
    )
    for action_id, action_type in pending:
        first_attempts.submit(config, action_id, action_type, event)
    return {"matched": matched, "pending": [action_id for action_id, _ in pending]}


ATTEMPT_THREADS = 4  # first attempts in flight at once, per worker process
# Calls whose repetition shows (a second Slack post, a second created record) go one at a time in a
# process, so that a worker killed mid-call leaves at most one of them with an unknown outcome (made
# again when its lease ends). Upserts and updates land the same when repeated: they go side by side.
NOT_IDEMPOTENT = ("slack.post", "salesforce.create")
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
    The job waits for all of them before it ends, so RQ's time limit still covers every attempt."""

    def __init__(self, ctx: WorkerContext, clock: JobClock):
        self.ctx = ctx
        self.clock = clock
        self.futures: list[Future] = []

    def submit(self, config: Config, action_id: str, action_type: str, event: Event) -> None:
        """Make the attempt soon; a job that runs too far ahead of its attempts waits for them."""
        self.ctx.connectors.get(action_type, config.connectors)  # built here, not by two threads at once
        self.futures = [future for future in self.futures if not future.done()]
        while len(self.futures) >= 2 * ATTEMPT_THREADS:  # wait on those in flight only: a done one returns at once
            self.futures = list(wait(self.futures, return_when=FIRST_COMPLETED).not_done)
        self.futures.append(_attempt_threads().submit(self._run, config, action_id, action_type, event))

    def _run(self, config: Config, action_id: str, action_type: str, event: Event) -> None:
        if action_type in NOT_IDEMPOTENT:
            with _one_at_a_time:
                return self._attempt(config, action_id, action_type, event)
        return self._attempt(config, action_id, action_type, event)

    def _attempt(self, config: Config, action_id: str, action_type: str, event: Event) -> None:
        job_limit = limits(config, action_type)[1]
        if self.clock.fits(job_limit):
            try:
                attempt(
                    self.ctx,
                    config,
                    action_id,
                    action_type=action_type,
                    event=event,
                    killed_within=self.clock.remaining(),
                )
                return
            except (StoreUnavailable, sqlite3.Error, RedisError) as exc:
                log.warning("action=%s: first attempt not made (%s: %s)", action_id, type(exc).__name__, exc)
            except Exception:
                log.exception("action=%s: first attempt failed unexpectedly", action_id)
        # A job of its own then, as every retry is; a claimed action's job waits for its lease to end.
        if not self.ctx.queue.enqueue_action(action_id, first_job(action_id), timeout=job_limit):
            log.warning("action=%s not queued (Redis); the sweep will queue it", action_id)

    def wait(self) -> None:
        """Until every attempt handed over has been made (or handed to a job of its own)."""
        wait(self.futures)


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
        sweeper = Sweeper(ctx.queue, ctx.config.queue.sweep_interval, lambda: ctx.config)
        swept = sweeper.sweep_once()
        if swept:
            log.info("start-up sweep queued %d stored event(s) or action(s)", len(swept))
        if not kwargs.get("burst"):
            sweeper.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            sweeper.stop()

    stop_asked = False  # set when SIGTERM or Ctrl-C asked this worker to stop (RQ's own note is private)

    def request_stop(self, signum, frame):  # noqa: ANN001, ANN201 - RQ's signature
        self.stop_asked = True
        return super().request_stop(signum, frame)

    def execute_job(self, job, queue):  # noqa: ANN001 - RQ's signature
        context().watcher.current()
        return super().execute_job(job, queue)


class Sweeper(threading.Thread):
    """Runs the queue's sweep every `interval` seconds until stopped, and the data retention (which
    purges at most hourly, whichever worker process gets to it) after it when given the config."""

    def __init__(self, queue: EventQueue, interval: float, config: Callable[[], Config] | None = None):
        super().__init__(name="gu1sync-sweeper", daemon=True)
        self.queue = queue
        self.interval = interval
        self.config = config
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
            if self.config is not None:
                run_retention(self.queue.store, self.config(), utcnow())  # never raises

    def stop(self) -> None:
        """Stop after the current sweep."""
        self._stopped.set()


def wait_for_store(store: Store) -> None:
    """Bring the file's schema up to date, waiting while another process holds its lock for longer than
    busy_timeout (a backup, a VACUUM, someone's sqlite3 shell): a worker starting then must not end."""
    said = False
    while True:
        try:
            store.migrate()
            if said:
                log.info("SQLite at %s takes writes again", store.path)
            return
        except StoreUnavailable as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise  # not a lock: an unreadable or missing file is for a person to see, at once
            if not said:
                log.warning("waiting for SQLite at %s: %s", store.path, exc)
                said = True
            time.sleep(1)


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
        while True:
            worker = Gu1Worker(
                [JsonQueue(config.queue.name, connection=connection)], connection=connection, serializer=JSONSerializer
            )
            try:
                worker.work(burst=burst, with_scheduler=True, logging_level=level)
            except RedisError as exc:  # RQ's teardown, with Redis still away
                log.warning("worker stopped by a Redis error (%s)", type(exc).__name__)
            # RQ's loop also quits when Redis goes away while it finishes a job; only a stop ends ours
            # (SIGTERM or Ctrl-C: RQ notes when it was asked).
            if burst or worker.stop_asked:
                return
            log.warning("worker loop ended without being asked to; starting it again once Redis answers")
            time.sleep(1)  # a loop that keeps ending (a bug) must not spin
            wait_for_redis(config.queue.redis_url)
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

"""The workers: RQ's worker (without a fork per job), a pool of them, and the sweeper and the ops
alerts beside each.

Each worker process sweeps once at start (work stored while Redis was down gets queued), keeps
sweeping every `queue.sweep_interval` in a background thread (and runs the data retention after
it), looks at gu1-sync's health every `ops.check_every` (one process of all tells the ops channel),
and runs the jobs of gu1sync.jobs with the scheduler, so that retries parked for later are run.
`gu1-sync worker --processes N` runs an RQ worker pool.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from connectors import REGISTRY, Connectors

from . import jobs, logs
from .alerts import NOT_CONFIGURED, AlerterThread
from .config import Config
from .core.timeutil import utcnow
from .queue import EventQueue, redis_client, wait_for_redis
from .runtime import Runtime
from .storage import StoreUnavailable
from .storage.retention import run_retention

log = logging.getLogger(__name__)


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
        rt = jobs.runtime()
        sweeper = Sweeper(rt.queue, rt.config.queue.sweep_interval, lambda: rt.config)
        alerts = AlerterThread(rt)
        swept = sweeper.sweep_once()
        if swept:
            log.info("start-up sweep queued %d stored event(s) or action(s)", len(swept))
        if not kwargs.get("burst"):
            sweeper.start()
            alerts.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            sweeper.stop()
            alerts.stop()

    stop_asked = False  # set when SIGTERM or Ctrl-C asked this worker to stop (RQ's own note is private)

    def request_stop(self, signum, frame):  # noqa: ANN001, ANN201 - RQ's signature
        self.stop_asked = True
        return super().request_stop(signum, frame)

    def execute_job(self, job, queue):  # noqa: ANN001 - RQ's signature
        jobs.runtime().watcher.current()
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
        except (RedisError, StoreUnavailable) as exc:
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


def run_worker(config: Config, *, burst: bool = False, processes: int = 1) -> None:
    """Run RQ workers with the scheduler until stopped: one in this process, or a pool of `processes`.

    SIGTERM or Ctrl-C stops them warmly: each finishes the job in hand first.
    """
    os.environ["GU1_SYNC_CONFIG"] = os.path.abspath(config.file)  # pool workers load it themselves
    wait_for_redis(config.queue.redis_url)
    log.info("workers start: %d process(es), config %s, %d rule(s)", processes, config.digest, len(config.rules))
    for line in REGISTRY.dry_run_notices(config.connectors, Connectors()):
        log.warning(line)
    if config.ops.slack is None:
        log.warning(NOT_CONFIGURED)
    connection = redis_client(config.queue.redis_url, connect_timeout=5, timeout=None)
    level = logs.rq_level(logging.getLevelName(log.getEffectiveLevel()))
    logs.quiet_rq()
    if processes == 1:
        jobs.use_runtime(Runtime.for_service(config, role="worker"))
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

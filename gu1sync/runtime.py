"""A Runtime: what one gu1-sync process works with, built in one place for every part.

The config in force (re-read when its file changes), the storage (events and the action log), the
RQ queue, and this process's connectors. Two ways to build one:

- `Runtime.for_service(config, role=...)`: the receiver, the console and the workers. Brings the
  database's schema up to date, waiting for as long as another process holds the write lock: a
  worker waits before it starts; the receiver and the console start at once (so /healthz answers)
  and wait in a thread, not ready (`Runtime.ready`) until the schema is this code's.
- `Runtime.for_command(config)`: the operator commands. Never changes the schema and never waits
  longer than `storage.busy_timeout`; says plainly when the schema is older or newer than this code.
  Read-only unless it is asked to write (`replay`, `purge`, `sweep`).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from redis import Redis

from connectors import REGISTRY, Connectors

from .config import Config, ConfigError, load_config
from .core.timeutil import Clock, utcnow
from .pacing import Pacer
from .queue import EventQueue
from .storage import (
    ActionLog,
    SchemaMismatch,
    SchemaState,
    Store,
    StoreUnavailable,
    engine_name,
    lock_held,
    open_database,
)
from .storage.engine import AnyDatabase
from .storage.migrations import MIGRATIONS

log = logging.getLogger(__name__)

# Seconds an event's job may spend on its batch on top of one attempt's time limit.
EVENT_JOB_SLACK = 30.0


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


def attempt_limits(config: Config, action_type: str) -> tuple[float, float]:
    """(lease, time limit) of one attempt of an action type, under this config's connector settings."""
    return REGISTRY.limits(config.connectors, action_type)


def event_job_limit(config: Config) -> float:
    """The RQ time limit of an event's job: enough for one first attempt of the slowest connector and
    the rest of a batch; first attempts that would not fit in what is left go to jobs of their own."""
    return REGISTRY.longest_attempt(config.connectors) + EVENT_JOB_SLACK


class Readiness(threading.Event):
    """Set once the database's schema is this code's; `failed` once bringing it up to date failed for
    another reason than a lock (a person must look: /readyz says so, the log says why)."""

    failed = False


def _set_event() -> Readiness:
    event = Readiness()
    event.set()
    return event


@dataclass
class Runtime:
    """What jobs, requests and commands in this process work with. Connectors (and a logged-in
    Salesforce client) live as long as the Runtime, from job to job."""

    watcher: ConfigWatcher
    store: Store
    actions: ActionLog
    queue: EventQueue
    connectors: Connectors = field(default_factory=Connectors)
    rng: random.Random = field(default_factory=random.Random)
    # Set once the database's schema is this code's; until then nothing may be stored (see for_service).
    ready: Readiness = field(default_factory=_set_event)
    _pacer: Pacer | None = field(default=None, repr=False)

    @property
    def pacer(self) -> Pacer:
        """Turns for paced calls (a Slack channel's posts), shared through Redis by every process."""
        if self._pacer is None:
            self._pacer = Pacer(self.queue.redis, self.config.queue.name)
        return self._pacer

    @property
    def config(self) -> Config:
        """The config in force now (hot-reloaded)."""
        return self.watcher.current()

    @property
    def clock(self) -> Clock:
        return self.store.clock

    def when_ready(self, start: Callable[[], None]) -> None:
        """Call `start` now if the schema is up to date, else from a thread as soon as it is."""
        if self.ready.is_set():
            start()
            return

        def later() -> None:
            self.ready.wait()
            start()

        threading.Thread(target=later, name="gu1sync-when-ready", daemon=True).start()

    def limits(self, action_type: str) -> tuple[float, float]:
        """(lease, time limit) of one attempt of an action type, under the config in force."""
        return attempt_limits(self.config, action_type)

    @classmethod
    def for_service(
        cls,
        config: Config,
        *,
        role: Literal["receiver", "worker", "console"],
        clock: Clock = utcnow,
        connectors: Connectors | None = None,
        redis: Redis | None = None,
    ) -> Runtime:
        """The Runtime of the receiver, the console or a worker, the schema brought up to date.

        The receiver commits every event to disk before it answers (durable); a worker's bookkeeping
        commits without waiting for the disk. While another process holds the database's lock for
        longer than busy_timeout (a backup, a VACUUM), a worker waits before it starts; the receiver
        and the console are built at once and bring the schema up to date from a thread, `ready` set
        when it is done: a gunicorn worker must boot (and answer /healthz), not fail and take its
        arbiter down with it. `redis`: a connection to use (the tests').
        """
        worker = role == "worker"
        database = open_database(config.storage_url, config.storage.busy_timeout, clock, durable=not worker)
        ready = _set_event()
        if worker:
            wait_for_database(database)
        else:
            try:
                database.migrate()
            except StoreUnavailable as exc:
                if not lock_held(exc):
                    raise  # an unreadable or missing file is for a person to see, at once
                ready.clear()
                log.warning(
                    "%s at %s is held by another process or not answering (%s): the %s starts now, answers "
                    "/healthz, and takes events once it is free and its schema is up to date",
                    engine_name(database),
                    database.path,
                    exc,
                    role,
                )
                threading.Thread(
                    target=_migrate_when_free, args=(database, ready), name="gu1sync-migrate", daemon=True
                ).start()
        store = Store(database)
        queue = EventQueue(
            config.queue.redis_url, config.queue.name, store, clock, cooldown=0 if worker else 5.0, connection=redis
        )
        runtime = cls._assemble(config, store, queue, connectors)
        runtime.ready = ready
        return runtime

    @classmethod
    def for_command(
        cls, config: Config, *, writes: bool = False, any_schema: bool = False, redis: Redis | None = None
    ) -> Runtime:
        """The Runtime of an operator command: never migrates, never waits past `storage.busy_timeout`.

        Raises SchemaMismatch, saying what to do, when the database is missing, older or newer than
        this code (unless `any_schema`: a command that copies the file, such as `backup`, takes any
        version); StoreUnavailable when it cannot be read at all.
        """
        if config.storage.engine == "sqlite" and not os.path.exists(config.storage_path):
            path = config.storage_path
            raise SchemaMismatch(SchemaState(0, len(MIGRATIONS)).problem(path) or path)
        database = open_database(config.storage_url, config.storage.busy_timeout, read_only=not writes)
        if not any_schema:
            database.check_schema()
        store = Store(database)
        queue = EventQueue(config.queue.redis_url, config.queue.name, store, connection=redis)
        return cls._assemble(config, store, queue, None)

    @classmethod
    def _assemble(cls, config: Config, store: Store, queue: EventQueue, connectors: Connectors | None) -> Runtime:
        runtime = cls(ConfigWatcher(config), store, ActionLog(store), queue, connectors or Connectors())
        queue.event_timeout = event_job_limit(config)
        queue.action_timeout = lambda action_type: runtime.limits(action_type)[1]
        return runtime


def _migrate_when_free(database: AnyDatabase, ready: Readiness) -> None:
    try:
        wait_for_database(database, said=True)
    except StoreUnavailable as exc:  # no longer a lock: the file itself went wrong; /readyz says so
        log.error("%s at %s cannot be brought up to date: %s", engine_name(database), database.path, exc)
        ready.failed = True
        return
    ready.set()


def wait_for_database(database: AnyDatabase, *, said: bool = False) -> None:
    """Bring the schema up to date, waiting while another process holds the lock for longer than
    busy_timeout (a backup, a VACUUM, someone's sqlite3 shell): a worker starting then must not end.
    `said`: the wait was announced already."""
    while True:
        try:
            database.migrate()
            if said:
                log.info("%s at %s takes writes again", engine_name(database), database.path)
            return
        except StoreUnavailable as exc:
            if not lock_held(exc):
                raise  # not a lock: an unreadable or missing file is for a person to see, at once
            if not said:
                log.warning("waiting for %s at %s: %s", engine_name(database), database.path, exc)
                said = True
            time.sleep(1)

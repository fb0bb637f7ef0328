"""The database file itself: connections, transactions, the schema and its version, and the
maintenance that needs the file (a consistent copy, truncating the WAL, VACUUM).

SQLite, in WAL mode, shared by the receiver and the workers of one box. Every write starts with
BEGIN IMMEDIATE, so that writers of several processes queue on the lock instead of failing; a
reader never waits for a writer. The modules beside this one hold every query gu1-sync makes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from ..core.timeutil import Clock, iso, utcnow
from .migrations import MIGRATIONS

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The database could not be read or written (locked past the busy timeout, disk full, unreadable file)."""


def lock_held(exc: StoreUnavailable) -> bool:
    """Whether `exc` says another process held the database's lock past busy_timeout (a backup, a
    VACUUM, someone's sqlite3 shell), or that the PostgreSQL server did not answer (restarting, a
    fail-over): worth waiting for, unlike an unreadable or missing file, or a login PostgreSQL refused."""
    text = str(exc)
    return "locked" in text or "busy" in text or _UNREACHABLE in text


_UNREACHABLE = "cannot reach PostgreSQL"


class SchemaMismatch(StoreUnavailable):
    """The database's schema is not the one this code reads: older (not upgraded yet) or newer."""


@dataclass(frozen=True)
class SchemaState:
    """The schema version in the file, and the one this code writes."""

    found: int
    expected: int

    def problem(self, path: str) -> str | None:
        """What to tell a person when the two differ; None when they agree."""
        if self.found == self.expected:
            return None
        if self.found == 0:
            return f"{path} has no gu1-sync data yet: start the receiver or the workers once (they create it)"
        if self.found < self.expected:
            return (
                f"{path} has schema version {self.found}, older than this version of gu1-sync ({self.expected}): "
                "start the receiver or the workers once (they upgrade it), then run this again"
            )
        return (
            f"{path} has schema version {self.found}, newer than this version of gu1-sync ({self.expected}): "
            "it was upgraded by a newer gu1-sync; run that version"
        )


def _private(path: str) -> None:
    """Create the file readable by its owner alone (it holds personal data) unless it exists already;
    SQLite gives its -wal and -shm files the same mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


class SchemaChecks:
    """What both engines (this SQLite Database, and postgres.PostgresDatabase) derive from their own
    `schema()`, `transaction()`, `path` and `clock`."""

    path: str
    clock: Clock

    def schema(self) -> SchemaState:
        raise NotImplementedError

    def transaction(self) -> Any:
        raise NotImplementedError

    def check_schema(self) -> None:
        """SchemaMismatch, saying what to do, unless the database's schema is this code's."""
        problem = self.schema().problem(self.path)
        if problem is not None:
            raise SchemaMismatch(problem)

    def check_writable(self) -> None:
        """Prove the database takes a write (for /readyz); raises StoreUnavailable if not."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('ready_check', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (iso(self.clock()),),
            )


class Database(SchemaChecks):
    """The SQLite file, with one connection per thread and per process (connections never cross a fork).

    `durable=True` (the receiver) syncs every commit to disk before it returns: an accepted event
    survives a power cut. The workers open it with `durable=False`: their commits survive a crash of
    any process, and reach the disk at the next durable commit or checkpoint; a power cut can undo the
    last moments of their bookkeeping, which then runs again (events and actions are idempotent; a
    Slack post may repeat). That is what lets one worker process handle hundreds of events a second.

    `read_only=True` (the operator commands that only look): nothing is written, not even the switch
    to WAL mode, and no wait is longer than the busy timeout.
    """

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        busy_timeout: float = 5.0,
        clock: Clock = utcnow,
        *,
        durable: bool = True,
        read_only: bool = False,
    ):
        self.path = path
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.read_only = read_only
        self.synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        # Threads of one process take turns to write here, not by SQLite's busy handler, which sleeps
        # a millisecond or more each time it finds the file locked.
        self._writing = threading.RLock()

    # -- connections ------------------------------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, opened on first use (and again after a fork)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.db = self._connect()
            local.pid = os.getpid()
        return local.db

    def _connect(self) -> sqlite_utils.Database:
        if self.read_only and not os.path.exists(self.path):
            raise SchemaMismatch(SchemaState(0, len(MIGRATIONS)).problem(self.path) or self.path)
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        try:
            if not self.read_only:
                _private(self.path)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            db = sqlite_utils.Database(conn, execute_plugins=False)
            if self.read_only:
                conn.execute("PRAGMA query_only=ON")
            else:
                self._wal(db)
            # FULL: a commit is on disk before the 2xx leaves, even if the machine loses power.
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            # Freed space is zeroed, so that a rewritten row or a purged body leaves no copy behind.
            conn.execute("PRAGMA secure_delete=ON")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        return db

    def _wal(self, db: sqlite_utils.Database) -> None:
        """WAL mode (it persists in the file). Switching needs the file to itself, and the busy timeout
        does not cover it: processes opening a new file together retry until one of them has switched."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if db.journal_mode != "wal":
                    db.enable_wal()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- reading ----------------------------------------------------------------------------------

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """Every row a query returns, as dicts."""
        try:
            return list(self.db.query(sql, params))
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    def one(self, sql: str, params: Any = ()) -> tuple | None:
        """The first row a query returns, as a tuple, or None."""
        try:
            return self.db.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    def all(self, sql: str, params: Any = ()) -> list[tuple]:
        """Every row a query returns, as tuples."""
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    # -- writing ----------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (BEGIN IMMEDIATE) and commits on exit.

        `durable=False`: this commit need not survive a power cut (a counter), so it does not wait for
        the disk even in a durable process.
        """
        if self.read_only:
            raise StoreUnavailable("this command only reads the database")
        conn = self.db.conn
        with self._writing:
            relaxed = not durable and self.synchronous != "NORMAL"
            if relaxed:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                try:
                    self._begin(conn)
                except sqlite3.Error as exc:
                    raise StoreUnavailable(str(exc)) from exc
                try:
                    yield conn
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    _rollback(conn)
                    raise StoreUnavailable(str(exc)) from exc
                except BaseException:
                    _rollback(conn)
                    raise
            finally:
                if relaxed:
                    conn.execute(f"PRAGMA synchronous={self.synchronous}")

    @contextmanager
    def trial(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that always rolls back (a dry run shows what a change would do)."""
        conn = self.db.conn
        with self._writing:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable(str(exc)) from exc
            try:
                yield conn
            except sqlite3.Error as exc:
                raise StoreUnavailable(str(exc)) from exc
            finally:
                _rollback(conn)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write as long as the busy timeout allows.

        SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 and more between tries: far longer than
        a write here holds the lock (a fraction of a millisecond), so two busy processes would spend
        most of their time asleep. This one tries again after 50 µs, doubling up to 0.5 ms.
        """
        conn.execute("PRAGMA busy_timeout=0")
        try:
            delay, deadline = 0.00005, time.monotonic() + self.busy_timeout
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, 0.0005)
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")

    # -- the schema -------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Bring the file's schema up to date; safe to run from several processes at once."""
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, len(MIGRATIONS)):
                MIGRATIONS[number](self.db)
                conn.execute(f"PRAGMA user_version={number + 1}")
        return len(MIGRATIONS)

    def schema(self) -> SchemaState:
        """The schema version in the file, next to the one this code writes (reads only)."""
        row = self.one("PRAGMA user_version")
        return SchemaState(row[0] if row else 0, len(MIGRATIONS))

    # -- maintenance ------------------------------------------------------------------------------

    def backup(self, destination: str, progress: Callable[[int, int], None] | None = None) -> int:
        """A consistent copy of the whole file at `destination`, taken while everything runs (SQLite's
        online backup in one step: writers are not stopped, and the copy is of the moment it began).
        `progress` is told (pages copied, pages in all) before and after. Returns the pages copied.

        One step, not a chunk at a time: SQLite starts a chunked backup over whenever another
        connection writes between two chunks, so on a busy database it might never end."""
        copied = [0]

        def step(status: int, remaining: int, total: int) -> None:
            copied[0] = total - remaining
            if progress is not None:
                progress(total - remaining, total)

        try:
            if progress is not None:
                row = self.one("PRAGMA page_count")
                progress(0, int(row[0]) if row else 0)
            _private(destination)
            with sqlite3.connect(destination) as target:
                self.db.conn.backup(target, pages=-1, progress=step)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return copied[0]

    def truncate_wal(self, attempts: int = 3) -> bool:
        """Checkpoint the write-ahead log into the database and truncate it to nothing, so that the old
        versions of the pages just rewritten are gone from it; False while a reader keeps it busy."""
        for attempt in range(attempts):
            row = self.one("PRAGMA wal_checkpoint(TRUNCATE)")
            if row is not None and row[0] == 0:
                return True
            time.sleep(0.1 * (attempt + 1))
        return False

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file, without waiting for anyone."""
        self.one("PRAGMA wal_checkpoint(PASSIVE)")

    def hold_checkpoints(self) -> None:
        """This thread's commits leave checkpoints to `checkpoint` (see groupcommit)."""
        self.one("PRAGMA wal_autocheckpoint=0")

    def vacuum(self) -> bool:
        """Rebuild the database file from its live rows only (frees space; clears pages freed before
        secure_delete was on), then truncate the WAL. Holds the write lock while it runs."""
        try:
            self.db.conn.execute("VACUUM")
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        return self.truncate_wal()


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open; a rollback that fails (the connection broke) must not hide why we got here."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("rollback failed (%s); SQLite rolls the transaction back when the connection closes", exc)

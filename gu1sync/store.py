"""SQLite: the durable record of every accepted event, every delivery of it, and every rejection.

The receiver commits an event here *before* it answers 2xx, so an accepted event survives a crash
of anything after that point. The file is shared by the receiver and the workers (WAL mode);
writes start with BEGIN IMMEDIATE so that concurrent writers queue on the lock instead of failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import sqlite_utils

from .event import Event
from .timeutil import Clock, iso, utcnow

# Statuses an event moves through. `invalid` events were authentic but unreadable (kept for inspection).
RECEIVED, PROCESSING, DONE, FAILED, INVALID = "received", "processing", "done", "failed", "invalid"
UNFINISHED = (RECEIVED, PROCESSING)


def _migration_1(db: sqlite_utils.Database) -> None:
    db["events"].create(
        {
            "id": str,
            "dedupe_key": str,
            "source": str,
            "kind": str,
            "environment": str,
            "type": str,
            "subject": str,
            "occurred_at": str,
            "received_at": str,
            "secret": str,
            "raw": bytes,
            "status": str,
            "outcome": str,
            "error": str,
            "started_at": str,
            "finished_at": str,
            "config_version": str,
        },
        pk="id",
        not_null={"dedupe_key", "source", "kind", "environment", "received_at", "raw", "status"},
    )
    db["events"].create_index(["status", "received_at"])
    db["events"].create_index(["received_at"])
    db["events"].create_index(["subject"])
    db["deliveries"].create(
        {
            "id": int,
            "event_id": str,
            "source": str,
            "received_at": str,
            "secret": str,
            "duplicate": int,
            "headers": str,
        },
        pk="id",
        not_null={"event_id", "source", "received_at", "duplicate"},
        foreign_keys=[("event_id", "events", "id")],
    )
    db["deliveries"].create_index(["event_id"])
    db["rejections"].create(
        {"source": str, "reason": str, "status": int, "count": int, "first_at": str, "last_at": str},
        pk=("source", "reason"),
        not_null={"status", "count", "first_at", "last_at"},
    )
    db["meta"].create({"key": str, "value": str}, pk="key")


# Append only: each entry moves the file from user_version N to N + 1.
MIGRATIONS = [_migration_1]


class StoreUnavailable(Exception):
    """SQLite could not be read or written (locked past the busy timeout, disk full, unreadable file)."""


class Store:
    """The SQLite file, with one connection per thread and per process (connections never cross a fork)."""

    def __init__(self, path: str, busy_timeout: float = 5.0, clock: Clock = utcnow):
        self.path = path
        self.busy_timeout = busy_timeout
        self.clock = clock
        self._local = threading.local()

    # -- connections and transactions -------------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, opened on first use (and again after a fork)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.db = self._connect()
            local.pid = os.getpid()
        return local.db

    def _connect(self) -> sqlite_utils.Database:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            db = sqlite_utils.Database(conn, execute_plugins=False)
            db.enable_wal()
            # FULL: a commit is on disk before the 2xx leaves, even if the machine loses power.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (BEGIN IMMEDIATE) and commits on exit."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailable(str(exc)) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def migrate(self) -> int:
        """Bring the file's schema up to date; safe to run from several processes at once."""
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, len(MIGRATIONS)):
                MIGRATIONS[number](self.db)
                conn.execute(f"PRAGMA user_version={number + 1}")
        return len(MIGRATIONS)

    # -- the receiver's writes --------------------------------------------------------------------

    def record(self, event: Event, headers: dict[str, str]) -> bool:
        """Store `event` unless its id is known, and log this delivery either way; True if it was new.

        One transaction: when this returns, the event and its delivery are committed.
        """
        with self.transaction() as conn:
            cursor = conn.execute(
                """INSERT INTO events (id, dedupe_key, source, kind, environment, type, subject, occurred_at,
                                       received_at, secret, raw, status, error)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO NOTHING""",
                (
                    event.id,
                    event.dedupe_key,
                    event.source,
                    event.kind,
                    event.environment,
                    event.type,
                    event.subject,
                    event.occurred_at,
                    event.received_at,
                    event.secret,
                    event.raw,
                    event.status,
                    event.error,
                ),
            )
            new = cursor.rowcount == 1
            conn.execute(
                """INSERT INTO deliveries (event_id, source, received_at, secret, duplicate, headers)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (event.id, event.source, event.received_at, event.secret, int(not new), json.dumps(headers)),
            )
        return new

    def count_rejection(self, source: str, reason: str, status: int) -> None:
        """Add one to the count of rejections for (source, reason)."""
        now = iso(self.clock())
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO rejections (source, reason, status, count, first_at, last_at)
                   VALUES (?, ?, ?, 1, ?, ?)
                   ON CONFLICT(source, reason) DO UPDATE SET count = count + 1, last_at = excluded.last_at""",
                (source, reason, status, now, now),
            )

    def check_writable(self) -> None:
        """Prove the file takes a write (for /readyz); raises StoreUnavailable if not."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('ready_check', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (iso(self.clock()),),
            )

    # -- the workers' side ------------------------------------------------------------------------

    def claim(self, event_id: str, stale_after: float = 600) -> Event | None:
        """Mark an event as being processed and return it; None if it is finished or being processed.

        An event left `processing` for longer than `stale_after` seconds belongs to a worker that
        died, and may be claimed again.
        """
        now = self.clock()
        with self.transaction() as conn:
            cursor = conn.execute(
                """UPDATE events SET status = ?, started_at = ?
                   WHERE id = ? AND (status = ? OR (status = ? AND started_at < ?))""",
                (PROCESSING, iso(now), event_id, RECEIVED, PROCESSING, iso(now - timedelta(seconds=stale_after))),
            )
            if cursor.rowcount != 1:
                return None
        return self.event(event_id)

    def finish(self, event_id: str, status: str, outcome: str | None, error: str | None, config_version: str) -> None:
        """Record how processing of an event ended."""
        with self.transaction() as conn:
            conn.execute(
                """UPDATE events SET status = ?, outcome = ?, error = ?, finished_at = ?, config_version = ?
                   WHERE id = ?""",
                (status, outcome, error, iso(self.clock()), config_version, event_id),
            )

    def unfinished(self, received_before: datetime, limit: int = 1000) -> list[str]:
        """Ids of events received before a moment and not finished, oldest first."""
        rows = self.db.execute(
            f"SELECT id FROM events WHERE status IN ({','.join('?' * len(UNFINISHED))}) AND received_at < ? "
            "ORDER BY received_at LIMIT ?",
            (*UNFINISHED, iso(received_before), limit),
        ).fetchall()
        return [row[0] for row in rows]

    # -- reading ----------------------------------------------------------------------------------

    def event(self, event_id: str) -> Event | None:
        """One event by id."""
        rows = list(self.db.query("SELECT * FROM events WHERE id = ?", (event_id,)))
        return Event.from_row(rows[0]) if rows else None

    def deliveries(self, event_id: str) -> list[dict]:
        """Every delivery of an event, first first."""
        return list(self.db.query("SELECT * FROM deliveries WHERE event_id = ? ORDER BY id", (event_id,)))

    def rejections(self) -> list[dict]:
        """Rejection counts by source and reason."""
        return list(self.db.query("SELECT * FROM rejections ORDER BY source, reason"))

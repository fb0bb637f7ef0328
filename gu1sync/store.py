"""SQLite: the durable record of every accepted event, every delivery of it, and every rejection.

The receiver commits an event here *before* it answers 2xx, so an accepted event survives a crash
of anything after that point. The file is shared by the receiver and the workers (WAL mode);
writes start with BEGIN IMMEDIATE so that concurrent writers queue on the lock instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlite_utils

from .event import Event
from .migrations import MIGRATIONS

if TYPE_CHECKING:
    from rules.engine import RuleResult
from .timeutil import Clock, iso, utcnow

# Statuses an event moves through. `invalid` events were authentic but unreadable (kept for inspection).
RECEIVED, PROCESSING, DONE, FAILED, INVALID = "received", "processing", "done", "failed", "invalid"

STALE_CLAIM = 120  # seconds: a `processing` claim older than this belongs to a worker that died
EVENT_ATTEMPTS = 5  # an event whose processing fails this many times is left `failed`, for replay

# Statuses of an action. `dead` keeps a permanent failure (or retries run out) for replay.
PENDING, SHADOW, THROTTLED, DEAD = "pending", "shadow", "throttled", "dead"


def first_job(action_id: str) -> str:
    """The RQ job id of an action's first attempt (the n-th is `<action id>-<n>`)."""
    return f"{action_id}-1"


def action_id(event_id: str, rule: str, index: int) -> str:
    """The idempotency key of one action of one rule for one event (safe as an RQ job id)."""
    return "act_" + hashlib.sha256(f"{event_id}\0{rule}\0{index}".encode()).hexdigest()[:32]


class StoreUnavailable(Exception):
    """SQLite could not be read or written (locked past the busy timeout, disk full, unreadable file)."""


class Store:
    """The SQLite file, with one connection per thread and per process (connections never cross a fork).

    `durable=True` (the receiver) syncs every commit to disk before it returns: an accepted event
    survives a power cut. The workers open it with `durable=False`: their commits survive a crash of
    any process, and reach the disk at the next durable commit or checkpoint; a power cut can undo the
    last moments of their bookkeeping, which then runs again (events and actions are idempotent; a
    Slack post may repeat). That is what lets one worker process handle hundreds of events a second.
    """

    def __init__(self, path: str, busy_timeout: float = 5.0, clock: Clock = utcnow, *, durable: bool = True):
        self.path = path
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        # Threads of one process take turns to write here, not by SQLite's busy handler, which sleeps
        # a millisecond or more each time it finds the file locked.
        self._writing = threading.RLock()

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
            self._wal(db)
            # FULL: a commit is on disk before the 2xx leaves, even if the machine loses power.
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            # Freed space is zeroed, so that a rewritten row or a purged body leaves no copy behind.
            conn.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as exc:
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

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (BEGIN IMMEDIATE) and commits on exit."""
        conn = self.db.conn
        with self._writing:
            try:
                self._begin(conn)
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

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write as long as the busy timeout allows.

        SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 and more between tries: far longer than
        a write here holds the lock (a fraction of a millisecond), so two busy processes would spend
        most of their time asleep. This one tries again after 50 µs, doubling up to 5 ms.
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
        return self.record_many([(event, headers)])[0]

    def record_many(self, deliveries: list[tuple[Event, dict[str, str]]]) -> list[bool]:
        """`record` for several deliveries in one transaction (one sync to disk); new or not, each."""
        out = []
        with self.transaction() as conn:
            for event, headers in deliveries:
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
                out.append(new)
        return out

    def count_rejection(self, source: str, reason: str, status: int) -> None:
        """Add one to the count of rejections for (source, reason)."""
        now = iso(self.clock())
        # A counter need not survive a power cut: no fsync, so a flood of forged requests cannot slow
        # the commits of real events down (WAL at synchronous=NORMAL only syncs at checkpoints).
        self.db.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._count(now, source, reason, status)
        finally:
            self.db.conn.execute(f"PRAGMA synchronous={self.synchronous}")

    def _count(self, now: str, source: str, reason: str, status: int) -> None:
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

    def claim(self, event_id: str, stale_after: float = STALE_CLAIM) -> Event | None:
        """Mark an event as being processed and return it; None if it is finished or being processed.

        An event left `processing` for longer than `stale_after` seconds belongs to a worker that
        died, and may be claimed again.
        """
        now = self.clock()
        with self.transaction() as conn:
            cursor = conn.execute(
                """UPDATE events SET status = ?, started_at = ?, attempts = attempts + 1
                   WHERE id = ? AND (status = ? OR (status = ? AND started_at < ?))""",
                (PROCESSING, iso(now), event_id, RECEIVED, PROCESSING, iso(now - timedelta(seconds=stale_after))),
            )
            if cursor.rowcount != 1:
                return None
        return self.event(event_id)

    def claim_next(self, cooldown: float = 30.0) -> Event | None:
        """Claim the oldest event waiting to be processed, if any; None when there is none.

        An event whose last processing failed less than `cooldown` seconds ago is left for later, so
        that a batch does not spend an event's attempts on it in a row.
        """
        now = self.clock()
        with self.transaction() as conn:
            row = conn.execute(
                """UPDATE events SET status = ?, started_at = ?, attempts = attempts + 1
                   WHERE id = (SELECT id FROM events
                               WHERE status = ? AND (error IS NULL OR started_at IS NULL OR started_at < ?)
                               ORDER BY received_at, id LIMIT 1)
                   RETURNING id""",
                (PROCESSING, iso(now), RECEIVED, iso(now - timedelta(seconds=cooldown))),
            ).fetchone()
        return self.event(row[0]) if row else None

    def next_waiting(self) -> str | None:
        """The id of the oldest event waiting to be processed (what claim_next would take), if any."""
        row = self.db.execute(
            "SELECT id FROM events WHERE status = ? AND error IS NULL ORDER BY received_at, id LIMIT 1", (RECEIVED,)
        ).fetchone()
        return row[0] if row else None

    def release(self, event_id: str, error: str, max_attempts: int = EVENT_ATTEMPTS) -> str:
        """Give back a claim whose processing failed: `received` to be tried again, or `failed` once
        it has failed `max_attempts` times. Returns the new status."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE events SET status = CASE WHEN attempts >= ? THEN ? ELSE ? END, error = ? "
                "WHERE id = ? AND status = ?",
                (max_attempts, FAILED, RECEIVED, error[:1000], event_id, PROCESSING),
            )
            row = conn.execute("SELECT status FROM events WHERE id = ?", (event_id,)).fetchone()
        return row[0] if row else "unknown"

    def retry_failed(self, event_id: str) -> bool:
        """Let a `failed` event be processed again (replay); False if it is not failed."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE events SET status = ?, attempts = 0, error = NULL WHERE id = ? AND status = ?",
                (RECEIVED, event_id, FAILED),
            )
            return cursor.rowcount == 1

    def record_evaluation(self, event_id: str, results: list[RuleResult], config_version: str) -> list[tuple[str, str]]:
        """Record what each rule made of an event and its actions, and finish the event; one transaction.

        Live actions are stored `pending` (their (id, type) pairs are returned), shadow ones `shadow`, those of
        a throttled rule `throttled`, and those that could not be rendered `dead`. Recording twice
        changes nothing that was recorded the first time.
        """
        now = self.clock()
        pending = []
        with self.transaction() as conn:
            for result in results:
                conn.execute(
                    """INSERT INTO evaluations (event_id, rule, matched, reason, mode, throttle_key, error,
                                                config_version, evaluated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(event_id, rule) DO UPDATE SET matched = excluded.matched,
                           reason = excluded.reason, mode = excluded.mode, throttle_key = excluded.throttle_key,
                           error = excluded.error, config_version = excluded.config_version,
                           evaluated_at = excluded.evaluated_at""",
                    (
                        event_id,
                        result.rule,
                        int(result.matched),
                        result.reason,
                        result.mode,
                        result.throttle_key,
                        result.error,
                        config_version,
                        iso(now),
                    ),
                )
                if not result.matched:
                    continue
                throttled = result.throttle_key is not None and not self._take_throttle(
                    conn, result.rule, result.throttle_key, result.throttle_window or 0, event_id, now
                )
                for action in result.actions:
                    if action.error is not None:
                        status = DEAD
                    elif throttled:
                        status = THROTTLED
                    else:
                        status = SHADOW if result.mode == "shadow" else PENDING
                    identifier = action_id(event_id, result.rule, action.index)
                    cursor = conn.execute(
                        """INSERT INTO actions (id, event_id, rule, action_index, type, mode, params, status, error,
                                                attempts, created_at, updated_at, config_version, job_id)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)
                           ON CONFLICT(id) DO NOTHING""",
                        (
                            identifier,
                            event_id,
                            result.rule,
                            action.index,
                            action.type,
                            result.mode,
                            json.dumps(action.params, ensure_ascii=False, default=str),
                            status,
                            action.error,
                            iso(now),
                            iso(now),
                            config_version,
                            first_job(identifier) if status == PENDING else None,
                        ),
                    )
                    if cursor.rowcount == 1 and status == PENDING:
                        pending.append((identifier, action.type))
            matched = any(result.matched for result in results)
            conn.execute(
                """UPDATE events SET status = ?, outcome = ?, error = NULL, finished_at = ?, config_version = ?
                   WHERE id = ?""",
                (DONE, "matched" if matched else "no_rule_matched", iso(now), config_version, event_id),
            )
        return pending

    @staticmethod
    def _take_throttle(
        conn: sqlite3.Connection, rule: str, key: str, window: float, event_id: str, now: datetime
    ) -> bool:
        """Whether this event may run the rule's actions for `key` (and, if so, start a new window)."""
        cursor = conn.execute(
            """INSERT INTO throttles (rule, key, until, event_id) VALUES (?, ?, ?, ?)
               ON CONFLICT(rule, key) DO UPDATE SET until = excluded.until, event_id = excluded.event_id
               WHERE throttles.until <= ? OR throttles.event_id = excluded.event_id""",
            (rule, key, iso(now + timedelta(seconds=window)), event_id, iso(now)),
        )
        return cursor.rowcount == 1

    def evaluations(self, event_id: str) -> list[dict]:
        """What each rule made of an event, in the order they were recorded."""
        return list(self.db.query("SELECT * FROM evaluations WHERE event_id = ? ORDER BY rowid", (event_id,)))

    def actions(self, event_id: str) -> list[dict]:
        """An event's actions."""
        return list(self.db.query("SELECT * FROM actions WHERE event_id = ? ORDER BY rowid", (event_id,)))

    def unfinished(self, received_before: datetime, page: int = 1000) -> Iterator[list[str]]:
        """Ids of events that should be on the queue: received before a moment and not processed, or
        claimed by a worker whose claim has gone stale. Oldest first, a page at a time."""
        stale = iso(self.clock() - timedelta(seconds=STALE_CLAIM))
        after = ("", "")
        while True:
            rows = self.db.execute(
                """SELECT id, received_at FROM events
                   WHERE ((status = ? AND received_at < ?) OR (status = ? AND started_at < ?))
                     AND (received_at, id) > (?, ?)
                   ORDER BY received_at, id LIMIT ?""",
                (RECEIVED, iso(received_before), PROCESSING, stale, *after, page),
            ).fetchall()
            if rows:
                yield [row[0] for row in rows]
            if len(rows) < page:
                return
            after = (rows[-1][1], rows[-1][0])

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

"""Events: the durable record of every accepted event, every delivery of it, every rejection, and
what the rules made of it (their results, the actions they recorded, throttle windows).

The receiver commits an event here *before* it answers 2xx, so an accepted event survives a crash
of anything after that point. Workers claim events here, and record what the rules made of them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..core.body import parse_json, search_keys
from ..core.records import Event, action_id, first_job
from ..core.status import ActionStatus, EventOutcome, EventStatus
from ..core.timeutil import Clock, iso, utcnow
from ..kinds import payload_of
from . import groups
from .counting import count
from .engine import AnyDatabase, open_database

if TYPE_CHECKING:
    from rules.engine import RuleResult

STALE_CLAIM = 120  # seconds: a `processing` claim older than this belongs to a worker that died
EVENT_ATTEMPTS = 5  # an event whose processing fails this many times is left `failed`, for replay


@dataclass
class Recorded:
    """What recording an event's evaluation left to do."""

    pending: list[tuple[str, str]] = field(default_factory=list)  # (action id, type): first attempts due now
    # (action id, type, seconds): groups' first actions, whose message goes when their window closes
    later: list[tuple[str, str, float]] = field(default_factory=list)


def event_from_row(row: dict[str, Any]) -> Event:
    """An event from its stored row; the payload is read again from the raw bytes (None for an event
    kept as invalid, or one whose body retention has purged)."""
    payload = None
    if row["status"] != EventStatus.INVALID and not row.get("purged_at"):
        payload = payload_of(row["kind"], parse_json(row["raw"]))
    names = {name for name in Event.__dataclass_fields__ if name != "payload"}
    return Event(payload=payload, **{key: row[key] for key in names if key in row})


class Store:
    """Events and what became of them, in a Database (given, or opened at `path`)."""

    def __init__(self, path: str | AnyDatabase, busy_timeout: float = 5.0, clock: Clock = utcnow, *, durable=True):
        self.database = open_database(path, busy_timeout, clock, durable=durable) if isinstance(path, str) else path

    # The database's handle, for those that hold a Store.
    @property
    def path(self) -> str:
        return self.database.path

    @property
    def busy_timeout(self) -> float:
        return self.database.busy_timeout

    @property
    def clock(self) -> Clock:
        return self.database.clock

    @property
    def db(self) -> Any:
        """This thread's connection (for tests and tools that look inside the file)."""
        return self.database.db

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.database.transaction()

    def migrate(self) -> int:
        """Bring the schema up to date (see Database.migrate)."""
        return self.database.migrate()

    def check_writable(self) -> None:
        """Prove the database takes a write (for /readyz)."""
        self.database.check_writable()

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
                if new:  # the ids it can be found by (the console's search)
                    keys = dict.fromkeys([*([event.subject] if event.subject else []), *search_keys(event.payload)])
                    conn.executemany(
                        "INSERT INTO event_keys (key, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                        [(key, event.id) for key in keys],
                    )
                outcome = "invalid" if event.status == EventStatus.INVALID else "accepted" if new else "duplicate"
                labels = {"source": event.source, "type": (event.type or "-")[:100], "outcome": outcome}
                count(conn, "events_received", labels)
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
        with self.database.transaction(durable=False) as conn:
            conn.execute(
                """INSERT INTO rejections (source, reason, status, count, first_at, last_at)
                   VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(source, reason)
                   DO UPDATE SET count = rejections.count + 1, last_at = excluded.last_at""",
                (source, reason, status, now, now),
            )
            conn.execute(  # by the second: how many a source refused lately (the ops alerts ask)
                """INSERT INTO rejection_seconds (source, reason, second, count) VALUES (?, ?, ?, 1)
                   ON CONFLICT(source, reason, second) DO UPDATE SET count = rejection_seconds.count + 1""",
                (source, reason, now[:19]),
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
                (
                    EventStatus.PROCESSING,
                    iso(now),
                    event_id,
                    EventStatus.RECEIVED,
                    EventStatus.PROCESSING,
                    iso(now - timedelta(seconds=stale_after)),
                ),
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
                (EventStatus.PROCESSING, iso(now), EventStatus.RECEIVED, iso(now - timedelta(seconds=cooldown))),
            ).fetchone()
        return self.event(row[0]) if row else None

    def next_waiting(self) -> str | None:
        """The id of the oldest event waiting to be processed (what claim_next would take), if any."""
        row = self.database.one(
            "SELECT id FROM events WHERE status = ? AND error IS NULL ORDER BY received_at, id LIMIT 1",
            (EventStatus.RECEIVED,),
        )
        return row[0] if row else None

    def release(self, event_id: str, error: str, max_attempts: int = EVENT_ATTEMPTS) -> str:
        """Give back a claim whose processing failed: `received` to be tried again, or `failed` once
        it has failed `max_attempts` times. Returns the new status."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE events SET status = CASE WHEN attempts >= ? THEN ? ELSE ? END, error = ? "
                "WHERE id = ? AND status = ?",
                (
                    max_attempts,
                    EventStatus.FAILED,
                    EventStatus.RECEIVED,
                    error[:1000],
                    event_id,
                    EventStatus.PROCESSING,
                ),
            )
            row = conn.execute("SELECT status FROM events WHERE id = ?", (event_id,)).fetchone()
        return row[0] if row else "unknown"

    def retry_failed(self, event_id: str) -> bool:
        """Let a `failed` event be processed again (replay); False if it is not failed."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE events SET status = ?, attempts = 0, error = NULL WHERE id = ? AND status = ?",
                (EventStatus.RECEIVED, event_id, EventStatus.FAILED),
            )
            return cursor.rowcount == 1

    def record_evaluation(self, event_id: str, results: list[RuleResult], config_version: str) -> Recorded:
        """Record what each rule made of an event and its actions, and finish the event; one transaction.

        Live actions are stored `pending` (their first attempts are due now: `Recorded.pending`), shadow
        ones `shadow`, those of a throttled rule `throttled`, and those that could not be rendered `dead`.
        An action of a grouping rule joins its open group (`grouped`), or opens one: it is then the
        group's first action, whose attempt, once the group's window has passed, posts the group's one
        message (`Recorded.later`). Recording twice changes nothing that was recorded the first time.
        """
        now = self.clock()
        recorded = Recorded()
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
                    identifier = action_id(event_id, result.rule, action.index)
                    if conn.execute("SELECT 1 FROM actions WHERE id = ?", (identifier,)).fetchone():
                        continue  # recorded before: this is the same event's evaluation again
                    if action.error is not None:
                        status = ActionStatus.DEAD
                    elif throttled:
                        status = ActionStatus.THROTTLED
                    else:
                        status = ActionStatus.SHADOW if result.mode == "shadow" else ActionStatus.PENDING
                    group_id, next_at = None, None
                    if status == ActionStatus.PENDING and action.group_key is not None:
                        group_id = groups.join(
                            conn,
                            identifier,
                            result.rule,
                            action.index,
                            action.group_key,
                            wait=result.group_wait or 0,
                            max_lines=result.group_max or 50,
                            now=now,
                        )
                        if group_id == identifier:  # it opened the group: it goes when the window closes
                            next_at = now + timedelta(seconds=result.group_wait or 0)
                        else:
                            status = ActionStatus.GROUPED
                    conn.execute(
                        """INSERT INTO actions (id, event_id, rule, action_index, type, mode, params, status, error,
                                                error_code, attempts, created_at, updated_at, config_version, job_id,
                                                group_id, group_line, next_attempt_at)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)""",
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
                            "template_error" if action.error is not None else None,
                            iso(now),
                            iso(now),
                            config_version,
                            first_job(identifier) if status == ActionStatus.PENDING else None,
                            group_id,
                            action.group_line if group_id is not None else None,
                            iso(next_at) if next_at is not None else None,
                        ),
                    )
                    if status == ActionStatus.PENDING and next_at is not None:
                        recorded.later.append((identifier, action.type, (next_at - now).total_seconds()))
                    elif status == ActionStatus.PENDING:
                        recorded.pending.append((identifier, action.type))
            matched = any(result.matched for result in results)
            conn.execute(
                """UPDATE events SET status = ?, outcome = ?, error = NULL, finished_at = ?, config_version = ?
                   WHERE id = ?""",
                (
                    EventStatus.DONE,
                    EventOutcome.MATCHED if matched else EventOutcome.NO_RULE_MATCHED,
                    iso(now),
                    config_version,
                    event_id,
                ),
            )
        return recorded

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
        return self.database.rows("SELECT * FROM evaluations WHERE event_id = ? ORDER BY rowid", (event_id,))

    def actions(self, event_id: str) -> list[dict]:
        """An event's actions."""
        return self.database.rows("SELECT * FROM actions WHERE event_id = ? ORDER BY rowid", (event_id,))

    def unfinished(self, received_before: datetime, page: int = 1000) -> Iterator[list[str]]:
        """Ids of events that should be on the queue: received before a moment and not processed, or
        claimed by a worker whose claim has gone stale. Oldest first, a page at a time."""
        stale = iso(self.clock() - timedelta(seconds=STALE_CLAIM))
        after = ("", "")
        while True:
            rows = self.database.all(
                """SELECT id, received_at FROM events
                   WHERE ((status = ? AND received_at < ?) OR (status = ? AND started_at < ?))
                     AND (received_at, id) > (?, ?)
                   ORDER BY received_at, id LIMIT ?""",
                (EventStatus.RECEIVED, iso(received_before), EventStatus.PROCESSING, stale, *after, page),
            )
            if rows:
                yield [row[0] for row in rows]
            if len(rows) < page:
                return
            after = (rows[-1][1], rows[-1][0])

    # -- reading ----------------------------------------------------------------------------------

    def event(self, event_id: str) -> Event | None:
        """One event by id."""
        rows = self.database.rows("SELECT * FROM events WHERE id = ?", (event_id,))
        return event_from_row(rows[0]) if rows else None

    def deliveries(self, event_id: str) -> list[dict]:
        """Every delivery of an event, first first."""
        return self.database.rows("SELECT * FROM deliveries WHERE event_id = ? ORDER BY id", (event_id,))

    def rejections(self) -> list[dict]:
        """Rejection counts by source and reason."""
        return self.database.rows("SELECT * FROM rejections ORDER BY source, reason")

"""Retention: personal data leaves SQLite once it has served its purpose, or when a person asks.

A purge keeps the audit trail and removes what was in the event. Kept: the event's id, source, kind,
environment, type, times, status and outcome, which secret verified it, its deliveries, which rules
matched, each action's rule, type, status, result (a Salesforce record id, a Slack message stamp)
and its attempts' outcomes, codes and durations. Removed: the raw body, the subject id and the
dedupe key built from it, the rules' reasons (they quote values), throttle keys and template errors,
each action's rendered request and error, each attempt's error, and the ordering marks and throttle
windows (they hold external ids). The event's id stays, so a replayed delivery is still a duplicate.

Only finished events are purged: `done` or `invalid`, with no action pending, running or retrying.
A dead letter that is purged becomes `purged`: nothing is left to render it again with.

Every connection zeroes freed space (PRAGMA secure_delete, set by the store), and a purge ends
with a checkpoint that truncates the write-ahead log, so no copy of the removed bytes is left in
the database files.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..core.body import ID_KEY, parse_json
from ..core.status import IN_FLIGHT_ACTION_STATUSES, ActionStatus, EventStatus
from ..core.timeutil import iso
from .database import StoreUnavailable
from .events import Store

log = logging.getLogger(__name__)

DONE, INVALID = EventStatus.DONE, EventStatus.INVALID
DEAD, PURGED = ActionStatus.DEAD, ActionStatus.PURGED  # a purged dead letter can no longer be replayed
RUN_EVERY = 3600.0  # seconds between the workers' retention runs (one run for all of them)
BATCH = 200  # events per write transaction: the receiver never waits long for the lock
PAGE = 1000  # candidate events read at a time
SUBJECT_LENGTH = (4, 256)

_UNFINISHED = ", ".join(f"'{status}'" for status in sorted(IN_FLIGHT_ACTION_STATUSES))
_FINISHED = f"""e.status IN ('{DONE}', '{INVALID}') AND NOT EXISTS (
    SELECT 1 FROM actions a WHERE a.event_id = e.id AND a.status IN ({_UNFINISHED}))"""
_ACTIVE_SINCE = """(COALESCE(e.finished_at, '') >= :cutoff
    OR EXISTS (SELECT 1 FROM actions a WHERE a.event_id = e.id AND a.updated_at >= :cutoff))"""


@dataclass
class Purge:
    """What a purge removed, or in a dry run would remove: counts, never data."""

    dry_run: bool = False
    events: int = 0  # events whose body and derived texts were removed
    evaluations: int = 0  # rule results whose reasons, throttle keys or errors were removed
    actions: int = 0  # actions whose rendered request or error was removed
    attempts: int = 0  # attempt errors removed
    marks: int = 0  # ordering marks, throttle windows and expired record locks deleted
    unfinished: int = 0  # events that qualified but are not finished: left as they are
    wal_truncated: bool | None = None  # None: not tried (dry run, or nothing changed)

    def add(self, other: Purge) -> None:
        for name in ("events", "evaluations", "actions", "attempts", "marks", "unfinished"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def changed(self) -> bool:
        return bool(self.events or self.evaluations or self.actions or self.attempts or self.marks)

    def summary(self) -> str:
        """One line of counts, e.g. for the log."""
        return (
            f"events={self.events} evaluations={self.evaluations} actions={self.actions} "
            f"attempts={self.attempts} marks={self.marks} unfinished={self.unfinished}"
        )


def _write(store: Store, dry_run: bool) -> AbstractContextManager[sqlite3.Connection]:
    """A write transaction that commits, or in a dry run always rolls back."""
    return store.database.trial() if dry_run else store.database.transaction()


def _redact(conn: sqlite3.Connection, ids: list[str], now: datetime, erase: bool) -> Purge:
    """Remove the personal data of these events and of everything derived from them. A throttle window
    still open stays until it ends (its key may hold an id), unless this is an erasure."""
    marks = ",".join("?" * len(ids))
    done = Purge()
    done.events = conn.execute(
        f"""UPDATE events SET raw = ?, subject = NULL, dedupe_key = kind || ':' || environment || ':purged',
                  error = CASE WHEN status = '{INVALID}' THEN error END, purged_at = ?
            WHERE id IN ({marks}) AND purged_at IS NULL""",
        (b"", iso(now), *ids),
    ).rowcount
    done.evaluations = conn.execute(
        f"""UPDATE evaluations SET reason = NULL, throttle_key = NULL, error = NULL
            WHERE event_id IN ({marks}) AND (reason IS NOT NULL OR throttle_key IS NOT NULL OR error IS NOT NULL)""",
        ids,
    ).rowcount
    done.attempts = conn.execute(
        f"""UPDATE attempts SET error = NULL
            WHERE action_id IN (SELECT id FROM actions WHERE event_id IN ({marks})) AND error IS NOT NULL""",
        ids,
    ).rowcount
    done.actions = conn.execute(
        f"""UPDATE actions SET params = NULL, error = NULL, group_line = NULL,
                  status = CASE WHEN status = '{DEAD}' THEN '{PURGED}' ELSE status END
            WHERE event_id IN ({marks})
              AND (params IS NOT NULL OR error IS NOT NULL OR group_line IS NOT NULL OR status = '{DEAD}')""",
        ids,
    ).rowcount
    # A group's key is rendered from its first event (an entity id, a status): it goes with that event.
    conn.execute(
        f"""DELETE FROM action_groups
            WHERE status = 'closed' AND id IN (SELECT id FROM actions WHERE event_id IN ({marks}))""",
        ids,
    )
    done.marks = conn.execute(f"DELETE FROM record_versions WHERE event_id IN ({marks})", ids).rowcount
    conn.execute(f"DELETE FROM event_keys WHERE event_id IN ({marks})", ids)  # the ids it could be found by
    if erase:
        done.marks += conn.execute(f"DELETE FROM throttles WHERE event_id IN ({marks})", ids).rowcount
    return done


Progress = Callable[[int, int], None]  # (events looked at, events to look at)


def _purge_batches(
    store: Store,
    ids: list[str],
    now: datetime,
    dry_run: bool,
    cutoff: str | None,
    progress: Progress | None = None,
    done: int = 0,
    of: int = 0,
) -> Purge:
    """Purge those of `ids` that are finished (and, with a cutoff, idle since before it), a batch per
    transaction; finality is checked inside each transaction, so a replay cannot slip in between.
    `progress` is told (done + events looked at so far, `of`) after each batch."""
    total = Purge(dry_run=dry_run)
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        params: dict[str, Any] = {f"id{n}": value for n, value in enumerate(batch)}
        params["cutoff"] = cutoff or ""
        marks = ",".join(f":id{n}" for n in range(len(batch)))
        with _write(store, dry_run) as conn:
            rows = conn.execute(
                f"""SELECT e.id, {_FINISHED} AS finished, {_ACTIVE_SINCE if cutoff else "0"} AS active
                    FROM events e WHERE e.id IN ({marks}) AND e.purged_at IS NULL""",
                params,
            ).fetchall()
            ready = [row[0] for row in rows if row[1] and not row[2]]
            total.unfinished += sum(1 for row in rows if not row[1])
            if ready:
                total.add(_redact(conn, ready, now, erase=cutoff is None))
        if progress is not None:
            progress(done + start + len(batch), of or len(ids))
    return total


def _finish(store: Store, result: Purge, now: datetime) -> Purge:
    """Housekeeping that needs no event, then the checkpoint that leaves no old page in the WAL."""
    with _write(store, result.dry_run) as conn:
        result.marks += conn.execute("DELETE FROM throttles WHERE until <= ?", (iso(now),)).rowcount
        result.marks += conn.execute("DELETE FROM record_locks WHERE until < ?", (iso(now),)).rowcount
    if not result.dry_run and result.changed:
        result.wal_truncated = store.database.truncate_wal()
    return result


def purge_older_than(
    store: Store, cutoff: datetime, *, now: datetime, dry_run: bool = False, progress: Progress | None = None
) -> Purge:
    """Purge every finished event that has seen no activity since `cutoff` (received, processed, and
    its actions last updated before it)."""
    stamp = iso(cutoff)
    result = Purge(dry_run=dry_run)
    count = store.database.one("SELECT COUNT(*) FROM events WHERE purged_at IS NULL AND received_at < ?", (stamp,))
    of, done = (count[0] if count else 0), 0
    after = ("", "")
    while True:  # a page is read without the write lock; each batch is checked again as it is purged
        rows = store.database.all(
            """SELECT received_at, id FROM events
               WHERE purged_at IS NULL AND received_at < ? AND (received_at, id) > (?, ?)
               ORDER BY received_at, id LIMIT ?""",
            (stamp, *after, PAGE),
        )
        result.add(_purge_batches(store, [row[1] for row in rows], now, dry_run, stamp, progress, done, of))
        done += len(rows)
        if len(rows) < PAGE:
            return _finish(store, result, now)
        after = (rows[-1][0], rows[-1][1])


def check_subject(subject: str) -> str:
    """The id to erase, as given; ValueError if it could not be a data subject's id."""
    low, high = SUBJECT_LENGTH
    if subject != subject.strip() or not low <= len(subject) <= high:
        raise ValueError(f"an id is {low} to {high} characters, without spaces around it")
    return subject


def mentions(document: Any, subject: str) -> bool:
    """Whether `subject` is the value of an id field (`id`, `entityId`, `externalId`, `session_id`...)
    anywhere in a parsed body."""
    if isinstance(document, dict):
        for key, value in document.items():
            if isinstance(value, str | int) and not isinstance(value, bool):
                if isinstance(key, str) and ID_KEY.search(key) and str(value).strip() == subject:
                    return True
            elif mentions(value, subject):
                return True
    elif isinstance(document, list):
        return any(mentions(item, subject) for item in document)
    return False


def subject_events(store: Store, subject: str) -> list[str]:
    """Ids of the events not purged yet that are about `subject`: it is their subject, or the value
    of an id field in their body (an invalid body: anywhere in it)."""
    query = "SELECT id FROM events WHERE subject = ? AND purged_at IS NULL"
    found = dict.fromkeys(row[0] for row in store.database.all(query, (subject,)))
    # The id as written in a body, or as JSON may escape it (non-ASCII as \uXXXX, / as \/).
    written = [subject, json.dumps(subject)[1:-1], subject.replace("/", "\\/")]
    needles = list(dict.fromkeys(text.encode() for text in written))
    # instr on SQLite's BLOB; position on PostgreSQL's bytea (whose strpos takes text only).
    found_in = "position(? in raw) > 0" if store.database.dialect == "postgresql" else "instr(raw, ?) > 0"
    where = " OR ".join(found_in for _ in needles)
    after = 0
    while True:
        rows = store.database.all(
            f"""SELECT rowid, id, status, raw FROM events
                WHERE purged_at IS NULL AND rowid > ? AND ({where}) ORDER BY rowid LIMIT ?""",
            (after, *needles, PAGE),
        )
        for _, event_id, status, raw in rows:
            if event_id in found:
                continue
            if status == INVALID:
                found[event_id] = None
                continue
            try:
                document = parse_json(raw)
            except ValueError:  # stored as readable, yet it is not: erase rather than keep
                found[event_id] = None
                continue
            if mentions(document, subject):
                found[event_id] = None
        if len(rows) < PAGE:
            return list(found)
        after = rows[-1][0]


def erase_subject(
    store: Store, subject: str, *, now: datetime, dry_run: bool = False, progress: Progress | None = None
) -> Purge:
    """Purge every finished event about one data subject, whatever its age, and the ordering marks
    and throttle windows that name it. Unfinished ones are left, and counted."""
    check_subject(subject)
    ids = subject_events(store, subject)
    result = _purge_batches(store, ids, now, dry_run, None, progress)
    with _write(store, dry_run) as conn:
        # Marks that name the subject and whose event is gone or purged (those of an unfinished event stay).
        suffix = ":" + subject
        result.marks += conn.execute(
            # The suffix compared from where it would start: a negative start means "from the end" to
            # SQLite only (PostgreSQL reads it as the string's start).
            """DELETE FROM record_versions WHERE substr(target, length(target) - length(?) + 1) = ?
                 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = event_id AND e.purged_at IS NULL)""",
            (suffix, suffix),
        ).rowcount
        result.marks += conn.execute(
            """DELETE FROM throttles WHERE key = ?
                 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = event_id AND e.purged_at IS NULL)""",
            (subject,),
        ).rowcount
    return _finish(store, result, now)


def vacuum(store: Store) -> bool:
    """Rebuild the file from its live rows only, then truncate the WAL (see Database.vacuum)."""
    return store.database.vacuum()


def _due(store: Store, now: datetime) -> bool:
    """Whether this worker is the one to run retention now: at most once per RUN_EVERY for all workers."""
    with store.transaction() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'retention_next_run'").fetchone()
        if row is not None and row[0] > iso(now):
            return False
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('retention_next_run', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (iso(now + timedelta(seconds=RUN_EVERY)),),
        )
    return True


def run_retention(store: Store, config: Any, now: datetime) -> Purge | None:
    """The workers' periodic purge under `storage.retention`; None when it is not due (or is `keep`).

    At most once an hour across every worker process. Never raises: a failure is logged and the
    next run is an hour later.
    """
    retention = config.storage.retention
    if retention is None:
        return None
    try:
        if not _due(store, now):
            return None
        result = purge_older_than(store, now - timedelta(seconds=retention), now=now)
    except (StoreUnavailable, sqlite3.Error) as exc:
        log.warning("retention skipped: %s: %s", type(exc).__name__, exc)
        return None
    except Exception:
        log.exception("retention failed; the next run is in %g s", RUN_EVERY)
        return None
    if result.changed or result.unfinished:
        log.info("retention: purged personal data older than %gd: %s", retention / 86400, result.summary())
    return result

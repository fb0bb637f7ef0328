"""The delivery log: actions, every attempt, leases, and the order of writes per record.

An action is claimed with a lease before its call and released after it; a worker that dies
mid-call leaves an expired lease that the sweep notices. Attempts are rows of their own: status,
duration, response code, error. Record versions keep a stale event from overwriting newer state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from ..core.records import Action
from ..core.status import IN_FLIGHT_ACTION_STATUSES, NOT_SENT_ACTION_STATUSES, ActionStatus, AttemptOutcome
from ..core.timeutil import iso
from . import groups
from .counting import CallReport
from .events import Store

PENDING, RUNNING, RETRYING, DEAD = ActionStatus.PENDING, ActionStatus.RUNNING, ActionStatus.RETRYING, ActionStatus.DEAD


class ActionLog:
    """Actions and their attempts, on a Store's connection."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def now(self) -> datetime:
        return self.store.clock()

    @property
    def database(self) -> Any:
        return self.store.database

    def get(self, action_id: str) -> Action | None:
        """One action."""
        rows = self.database.rows("SELECT * FROM actions WHERE id = ?", (action_id,))
        return Action.from_row(rows[0]) if rows else None

    # -- running an attempt ---------------------------------------------------------------------------

    def claim(self, action_id: str, lease: float) -> Action | None:
        """Start the next attempt: the action becomes `running` under a lease; None if it is not due.

        Due means: pending (and its time has come, for a group's message); retrying and its time has
        come (a job may start a moment early); or running on a lease that has expired, which belonged
        to a worker that died: that attempt is marked interrupted and the action may be claimed again.
        """
        claimed = self.claim_many([action_id], lease)
        return claimed[0] if claimed else None

    def claim_many(self, action_ids: list[str], lease: float) -> list[Action]:
        """`claim` for several actions in one transaction (a batch): those that were due, in the order given."""
        now = self.now
        expired: dict[str, bool] = {}
        with self.store.transaction() as conn:
            for action_id in dict.fromkeys(action_ids):
                outcome = self._claim(conn, action_id, lease, now)
                if outcome is not None:
                    expired[action_id] = outcome
        if not expired:
            return []
        marks = ",".join("?" * len(expired))
        rows = {
            row["id"]: row for row in self.database.rows(f"SELECT * FROM actions WHERE id IN ({marks})", list(expired))
        }
        claimed = []
        for action_id, interrupted in expired.items():
            if action_id in rows:
                action = Action.from_row(rows[action_id])
                action.interrupted = interrupted
                claimed.append(action)
        return claimed

    @staticmethod
    def _claim(conn: sqlite3.Connection, action_id: str, lease: float, now: datetime) -> bool | None:
        """Claim one action in the caller's transaction: None if it is not due, else whether its last
        attempt was interrupted (a dead worker's expired lease)."""
        row = conn.execute(
            "SELECT status, attempts, lease_until, next_attempt_at FROM actions WHERE id = ?", (action_id,)
        ).fetchone()
        if row is None:
            return None
        status, attempts, lease_until, next_attempt_at = row
        expired = status == RUNNING and lease_until is not None and lease_until < iso(now)
        soon = iso(now + timedelta(seconds=2))
        due = status in (PENDING, RETRYING) and (next_attempt_at is None or next_attempt_at <= soon)
        if not (due or expired):
            return None
        if expired:
            conn.execute(
                "UPDATE attempts SET outcome = ?, finished_at = ?, error = ? "
                "WHERE action_id = ? AND attempt = ? AND outcome = ?",
                (
                    AttemptOutcome.INTERRUPTED,
                    iso(now),
                    "the worker stopped during this attempt; its outcome is unknown",
                    action_id,
                    attempts,
                    AttemptOutcome.STARTED,
                ),
            )
        attempt = attempts + 1
        conn.execute(
            "UPDATE actions SET status = ?, attempts = ?, lease_until = ?, updated_at = ? WHERE id = ?",
            (RUNNING, attempt, iso(now + timedelta(seconds=lease)), iso(now), action_id),
        )
        conn.execute(
            "INSERT INTO attempts (action_id, attempt, started_at, outcome) VALUES (?, ?, ?, ?)",
            (action_id, attempt, iso(now), AttemptOutcome.STARTED),
        )
        return expired

    def due_alike(self, action_type: str, exclude: str, limit: int) -> list[Action]:
        """Other actions of a type whose retry is due now, oldest first: they may share a batch's call."""
        rows = self.database.rows(
            """SELECT * FROM actions WHERE status = ? AND type = ? AND id != ?
                 AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
               ORDER BY next_attempt_at, id LIMIT ?""",
            (RETRYING, action_type, exclude, iso(self.now + timedelta(seconds=2)), limit),
        )
        return [Action.from_row(row) for row in rows]

    def finish(self, action: Action, *, call: CallReport | None = None, **fields: Any) -> bool:
        """End the attempt and set the action's new status, in one transaction (see `finish_many`)."""
        return self.finish_many([(action, fields)], call)[0]

    def finish_many(self, outcomes: list[tuple[Action, dict[str, Any]]], call: CallReport | None = None) -> list[bool]:
        """End several attempts (a batch's, which made one call) in one transaction; per attempt, whether
        it still held its claim.

        Each attempt's fields: outcome, status, duration_ms, and optionally status_code, error, error_code,
        result, next_attempt_at, job_id, count_attempt, written. Only the attempt that holds the claim may
        change its action: one that outlived its lease (another has claimed the action since) records its
        own outcome in the attempt log, and changes nothing else (False). `written` = (target, fields,
        occurred_at, event_id) advances the record's versions. `count_attempt=False` gives the attempt's
        number back (it was deferred, not tried). `call`: what the connector's call showed (latency,
        credentials, API usage), counted once either way.
        """
        now = self.now
        with self.store.transaction() as conn:
            if call is not None:
                call.record(conn, now)
            return [self._finish(conn, action, now, **fields) for action, fields in outcomes]

    def _finish(
        self,
        conn: sqlite3.Connection,
        action: Action,
        now: datetime,
        *,
        outcome: str,
        status: str,
        duration_ms: float,
        status_code: int | None = None,
        error: str | None = None,
        result: str | None = None,
        next_attempt_at: datetime | None = None,
        job_id: str | None = None,
        count_attempt: bool = True,
        written: tuple[str, list[str], str, str] | None = None,
        error_code: str | None = None,
    ) -> bool:
        if not count_attempt:
            conn.execute("DELETE FROM attempts WHERE action_id = ? AND attempt = ?", (action.id, action.attempts))
        else:
            conn.execute(
                "UPDATE attempts SET outcome = ?, finished_at = ?, duration_ms = ?, status_code = ?, error = ?, "
                "retry_at = ? WHERE action_id = ? AND attempt = ?",
                (
                    outcome,
                    iso(now),
                    round(duration_ms, 1),
                    status_code,
                    error,
                    iso(next_attempt_at) if next_attempt_at else None,
                    action.id,
                    action.attempts,
                ),
            )
        cursor = conn.execute(
            """UPDATE actions SET status = ?, error = ?, error_code = ?, status_code = ?, result = ?,
                      next_attempt_at = ?,
                      job_id = COALESCE(?, job_id), lease_until = NULL, updated_at = ?,
                      finished_at = CASE WHEN ? = 1 THEN ? ELSE finished_at END,
                      attempts = attempts - ?
               WHERE id = ? AND status = ? AND attempts = ?""",
            (
                status,
                error,
                error_code,
                status_code,
                result,
                iso(next_attempt_at) if next_attempt_at else None,
                job_id,
                iso(now),
                ActionStatus(status).final,
                iso(now),
                0 if count_attempt else 1,
                action.id,
                RUNNING,
                action.attempts,
            ),
        )
        if cursor.rowcount != 1:
            return False
        if written is not None:
            self._advance(conn, *written)
        if action.carries_group and ActionStatus(status).final:
            groups.end_members(
                conn,
                action.id,
                status=status,
                result=result,
                error=error,
                error_code=error_code,
                status_code=status_code,
                now=now,
            )
        return True

    # -- groups ---------------------------------------------------------------------------------------

    def close_group(self, carrier: str) -> tuple[list[dict], int]:
        """Close a group to new members and return them with the most lines its message shows (see groups.close)."""
        with self.store.transaction() as conn:
            return groups.close(conn, carrier)

    # -- ordering -------------------------------------------------------------------------------------

    def lock(self, target: str, holder: str, lease: float) -> bool:
        """Take the record for one writer (or renew our own hold); False while another holds it."""
        return bool(self.lock_many({target: holder}, lease))

    def lock_many(self, holders: dict[str, str], lease: float) -> set[str]:
        """Take several records (target -> holder) in one transaction; the targets taken."""
        now = self.now
        taken = set()
        with self.store.transaction() as conn:
            for target, holder in holders.items():
                cursor = conn.execute(
                    """INSERT INTO record_locks (target, holder, until) VALUES (?, ?, ?)
                       ON CONFLICT(target) DO UPDATE SET holder = excluded.holder, until = excluded.until
                       WHERE record_locks.until < ? OR record_locks.holder = excluded.holder""",
                    (target, holder, iso(now + timedelta(seconds=lease)), iso(now)),
                )
                if cursor.rowcount == 1:
                    taken.add(target)
        return taken

    def unlock(self, target: str, holder: str) -> None:
        """Let the next writer have the record."""
        self.unlock_many({target: holder})

    def unlock_many(self, holders: dict[str, str]) -> None:
        """Let the next writers have these records (target -> holder), in one transaction."""
        with self.store.transaction() as conn:
            conn.executemany("DELETE FROM record_locks WHERE target = ? AND holder = ?", list(holders.items()))

    def newer(self, target: str, fields: list[str], occurred_at: str) -> dict[str, tuple[str, str]]:
        """Fields of the record last written by an event newer than `occurred_at`: field -> (when, event)."""
        marks = ",".join("?" * len(fields))
        rows = self.database.all(
            f"SELECT field, occurred_at, event_id FROM record_versions WHERE target = ? AND field IN ({marks}) "
            "AND occurred_at > ?",
            (target, *fields, occurred_at),
        )
        return {field: (when, event) for field, when, event in rows}

    @staticmethod
    def _advance(conn: sqlite3.Connection, target: str, fields: list[str], occurred_at: str, event_id: str) -> None:
        for field in fields:
            conn.execute(
                """INSERT INTO record_versions (target, field, occurred_at, event_id) VALUES (?, ?, ?, ?)
                   ON CONFLICT(target, field) DO UPDATE SET occurred_at = excluded.occurred_at,
                       event_id = excluded.event_id
                   WHERE excluded.occurred_at >= record_versions.occurred_at""",
                (target, field, occurred_at, event_id),
            )

    # -- the sweep and replay -------------------------------------------------------------------------

    def due(self, grace: float = 5.0, page: int = 1000) -> Iterator[list[dict]]:
        """Actions that should have a job by now, a page at a time: pending, or retrying and due, or
        running on an expired lease."""
        now = self.now
        after = ("", "")
        while True:
            rows = self.database.rows(
                """SELECT id, job_id, attempts, status, type, updated_at FROM actions
                   WHERE ((status IN (?, ?) AND COALESCE(next_attempt_at, updated_at) <= ?)
                          OR (status = ? AND lease_until < ?))
                     AND (updated_at, id) > (?, ?)
                   ORDER BY updated_at, id LIMIT ?""",
                (PENDING, RETRYING, iso(now - timedelta(seconds=grace)), RUNNING, iso(now), *after, page),
            )
            if rows:
                yield rows
            if len(rows) < page:
                return
            after = (rows[-1]["updated_at"], rows[-1]["id"])

    def set_job(self, action_id: str, job_id: str) -> None:
        """Remember which RQ job carries the action now."""
        with self.store.transaction() as conn:
            conn.execute("UPDATE actions SET job_id = ? WHERE id = ?", (job_id, action_id))

    def reset(self, action_id: str, params: dict[str, Any], config_version: str) -> bool:
        """Make a dead action pending again, with freshly rendered params and a fresh set of retries;
        False if it is not dead. A group's first action takes the members it carried back with it: they
        wait for its message again."""
        with self.store.transaction() as conn:
            groups.regroup(conn, action_id, self.now)
            cursor = conn.execute(
                """UPDATE actions SET status = ?, params = ?, error = NULL, error_code = NULL, alerted_at = NULL,
                          next_attempt_at = NULL,
                          retry_base = attempts, config_version = ?, updated_at = ? WHERE id = ? AND status = ?""",
                (
                    PENDING,
                    json.dumps(params, ensure_ascii=False, default=str),
                    config_version,
                    iso(self.now),
                    action_id,
                    DEAD,
                ),
            )
            return cursor.rowcount == 1

    def dead(self, *, event_id: str | None = None, since: str | None = None) -> list[Action]:
        """Dead actions (dead letters), of one event or since a moment, oldest first (what `replay` takes)."""
        query = "SELECT * FROM actions WHERE status = ?"
        args: list[Any] = [DEAD]
        if event_id is not None:
            query += " AND event_id = ?"
            args.append(event_id)
        if since is not None:
            query += " AND updated_at >= ?"
            args.append(since)
        return [Action.from_row(row) for row in self.database.rows(query + " ORDER BY updated_at, id", args)]

    # -- reading --------------------------------------------------------------------------------------

    def attempts(self, action_id: str) -> list[dict]:
        """Every attempt of an action, first first."""
        return self.database.rows("SELECT * FROM attempts WHERE action_id = ? ORDER BY attempt", (action_id,))

    def failed(self, since: str | None = None) -> list[dict]:
        """Dead actions (dead letters), newest first, with their event's type and source."""
        return self.database.rows(
            """SELECT a.*, e.type AS event_type, e.source FROM actions a JOIN events e ON e.id = a.event_id
               WHERE a.status = ? AND a.updated_at >= ? ORDER BY a.updated_at DESC""",
            (DEAD, since or ""),
        )

    def stats(self) -> dict[str, list[dict]]:
        """Per rule and per connector: totals, successes, failures, last success, last failure."""
        in_flight = _listed(IN_FLIGHT_ACTION_STATUSES)
        not_sent = _listed(NOT_SENT_ACTION_STATUSES)
        # The last failure from a grouped join, not a subquery per group: PostgreSQL refuses a subquery
        # that reads an ungrouped column of the outer query.
        query = f"""
            SELECT s.*, f.last_failure FROM (
            SELECT {{key}} AS name,
                   COUNT(*) AS total,
                   SUM(CASE WHEN status = '{ActionStatus.DONE}' THEN 1 ELSE 0 END) AS succeeded,
                   SUM(CASE WHEN status = '{ActionStatus.DEAD}' THEN 1 ELSE 0 END) AS failed,
                   SUM(CASE WHEN status IN ({in_flight}) THEN 1 ELSE 0 END) AS in_flight,
                   SUM(CASE WHEN status IN ({not_sent}) THEN 1 ELSE 0 END) AS not_sent,
                   MAX(CASE WHEN status = '{ActionStatus.DONE}' THEN finished_at END) AS last_success
            FROM actions a GROUP BY {{key}}) s
            LEFT JOIN (SELECT {{key_b}} AS name, MAX(t.finished_at) AS last_failure
                       FROM attempts t JOIN actions b ON b.id = t.action_id
                       WHERE t.outcome IN ('{AttemptOutcome.FAILED}', '{AttemptOutcome.RETRY}') GROUP BY {{key_b}}) f
              ON f.name = s.name
            ORDER BY s.name"""
        # The connector: the type up to its dot (a whole type without one: PostgreSQL refuses a negative length).
        connector = (
            "CASE WHEN instr({t}.type, '.') > 0 THEN substr({t}.type, 1, instr({t}.type, '.') - 1) ELSE {t}.type END"
        )
        return {
            "rules": self.database.rows(query.format(key="a.rule", key_b="b.rule")),
            "connectors": self.database.rows(query.format(key=connector.format(t="a"), key_b=connector.format(t="b"))),
        }


def _listed(statuses: frozenset[ActionStatus]) -> str:
    """Statuses as an SQL list of literals (they are our own words, never input)."""
    return ", ".join(f"'{status}'" for status in sorted(statuses))

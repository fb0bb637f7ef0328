"""What the web console reads and writes: its accounts (a password hash, a role, failed sign-ins and a
lock), the audit log of sign-ins and replays, and the queries behind its pages (the last 24 hours,
events filtered and found by any id they carry, dead letters by rule and error, how often each rule
matched lately)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from ..core.status import ActionStatus, AttemptOutcome, EventStatus
from ..core.timeutil import iso
from .events import Store

PAGE = 50  # events per page


class ConsoleStore:
    """The console's data, on a Store's connection."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def database(self) -> Any:
        return self.store.database

    # -- accounts -------------------------------------------------------------------------------------

    def user(self, name: str) -> dict | None:
        rows = self.database.rows("SELECT * FROM console_users WHERE name = ?", (name,))
        return rows[0] if rows else None

    def users(self) -> list[dict]:
        return self.database.rows(
            """SELECT name, role, created_at, last_signin_at, failed_signins, locked_until FROM console_users
               ORDER BY name"""
        )

    def add_user(self, name: str, role: str, password_hash: str, now: datetime) -> bool:
        """A new account; False if the name is taken."""
        with self.store.transaction() as conn:
            cursor = conn.execute(
                """INSERT INTO console_users (name, role, password_hash, created_at, failed_signins)
                   VALUES (?, ?, ?, ?, 0) ON CONFLICT(name) DO NOTHING""",
                (name, role, password_hash, iso(now)),
            )
            return cursor.rowcount == 1

    def set_password(self, name: str, password_hash: str) -> bool:
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE console_users SET password_hash = ?, failed_signins = 0, locked_until = NULL WHERE name = ?",
                (password_hash, name),
            )
            return cursor.rowcount == 1

    def remove_user(self, name: str) -> bool:
        with self.store.transaction() as conn:
            return conn.execute("DELETE FROM console_users WHERE name = ?", (name,)).rowcount == 1

    def unlock(self, name: str) -> bool:
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE console_users SET failed_signins = 0, locked_until = NULL WHERE name = ?", (name,)
            )
            return cursor.rowcount == 1

    def signed_in(self, name: str, now: datetime) -> None:
        """A sign-in that worked: the count of failures starts again."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE console_users SET failed_signins = 0, locked_until = NULL, last_signin_at = ? WHERE name = ?",
                (iso(now), name),
            )

    def failed_signin(self, name: str, now: datetime, attempts: int, lock_for: float) -> bool:
        """One more failed sign-in for an account; True when this one locks it (for `lock_for` seconds)."""
        with self.store.transaction() as conn:
            row = conn.execute("SELECT failed_signins FROM console_users WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            failures = row[0] + 1
            locked = failures >= attempts
            conn.execute(
                "UPDATE console_users SET failed_signins = ?, locked_until = ? WHERE name = ?",
                (0 if locked else failures, iso(now + timedelta(seconds=lock_for)) if locked else None, name),
            )
            return locked

    # -- the audit log ---------------------------------------------------------------------------------

    def audit(
        self,
        *,
        user: str,
        action: str,
        now: datetime,
        target: str | None = None,
        detail: Any = None,
        address: str | None = None,
    ) -> int:
        """Write who did what, when and from where; its id."""
        with self.store.transaction() as conn:
            cursor = conn.execute(
                'INSERT INTO console_audit (at, "user", action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?) '
                "RETURNING id",
                (
                    iso(now),
                    user,
                    action,
                    target,
                    json.dumps(detail, ensure_ascii=False) if detail is not None else None,
                    address,
                ),
            )
            return int(cursor.fetchone()[0])

    def audit_entry(self, entry_id: int) -> dict | None:
        rows = self.database.rows("SELECT * FROM console_audit WHERE id = ?", (entry_id,))
        if not rows:
            return None
        row = rows[0]
        row["detail"] = json.loads(row["detail"]) if row["detail"] else None
        return row

    def audit_log(self, before: int | None = None, limit: int = 100) -> list[dict]:
        """The audit log, newest first, a page at a time (`before`: the last id of the previous page)."""
        rows = self.database.rows(
            "SELECT * FROM console_audit WHERE id < ? ORDER BY id DESC LIMIT ?", (before or 2**62, limit)
        )
        for row in rows:
            row["detail"] = json.loads(row["detail"]) if row["detail"] else None
        return rows

    # -- the overview ----------------------------------------------------------------------------------

    def overview(self, since: datetime) -> dict:
        """Events by type and how they came out, actions by status, since `since`."""
        events = self.database.rows(
            """SELECT COALESCE(type, '-') AS type, status, COALESCE(outcome, '-') AS outcome, COUNT(*) AS n
               FROM events WHERE received_at >= ? GROUP BY type, status, outcome ORDER BY type, status, outcome""",
            (iso(since),),
        )
        actions = self.database.rows(
            "SELECT status, COUNT(*) AS n FROM actions WHERE created_at >= ? GROUP BY status ORDER BY status",
            (iso(since),),
        )
        return {"events": events, "actions": actions}

    def connectors(self, since: datetime | None = None) -> list[dict]:
        """Per connector, all time: actions done and dead, the last success, and the last failure (an
        action that died or was set to retry; and, from `since` on, any attempt that failed, even one a
        later attempt made good)."""
        rows = self.database.rows(
            "SELECT type, status, COUNT(*) AS n, MAX(updated_at) AS last FROM actions GROUP BY type, status"
        )
        failed_attempts = (
            self.database.rows(
                """SELECT a.type, MAX(t.finished_at) AS last FROM attempts t JOIN actions a ON a.id = t.action_id
                   WHERE t.started_at >= ? AND t.outcome IN (?, ?) GROUP BY a.type""",
                (iso(since), AttemptOutcome.RETRY.value, AttemptOutcome.FAILED.value),
            )
            if since is not None
            else []
        )
        out: dict[str, dict] = {}
        for row in rows:
            name = row["type"].split(".", 1)[0]
            entry = out.setdefault(
                name, {"name": name, "succeeded": 0, "failed": 0, "last_success": None, "last_failure": None}
            )
            if row["status"] == ActionStatus.DONE:
                entry["succeeded"] += row["n"]
                entry["last_success"] = max(filter(None, [entry["last_success"], row["last"]]), default=None)
            elif row["status"] in (ActionStatus.DEAD, ActionStatus.RETRYING):
                entry["failed"] += row["n"] if row["status"] == ActionStatus.DEAD else 0
                entry["last_failure"] = max(filter(None, [entry["last_failure"], row["last"]]), default=None)
        for row in failed_attempts:
            entry = out.get(row["type"].split(".", 1)[0])
            if entry is not None:
                entry["last_failure"] = max(filter(None, [entry["last_failure"], row["last"]]), default=None)
        return [out[name] for name in sorted(out)]

    # -- events ----------------------------------------------------------------------------------------

    def find(self, term: str) -> list[str]:
        """Ids of the events that carry `term` as an id (an entity, external, validation or event id)."""
        rows = self.database.all(
            "SELECT event_id FROM event_keys WHERE key = ? UNION SELECT id FROM events WHERE id = ?", (term, term)
        )
        return [row[0] for row in rows]

    def events(
        self,
        *,
        type_: str | None = None,
        source: str | None = None,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        ids: list[str] | None = None,
        after: tuple[str, str] | None = None,
        limit: int = PAGE,
    ) -> tuple[list[dict], tuple[str, str] | None]:
        """A page of events, newest first, filtered; and where the next page starts (None: no more)."""
        where, args = ["1 = 1"], []
        for column, value in (("type", type_), ("source", source), ("status", status)):
            if value:
                where.append(f"e.{column} = ?")
                args.append(value)
        if since:
            where.append("e.received_at >= ?")
            args.append(since)
        if until:
            where.append("e.received_at < ?")
            args.append(until)
        if ids is not None:
            if not ids:
                return [], None
            where.append(f"e.id IN ({','.join('?' * len(ids))})")
            args += ids
        if after is not None:
            where.append("(e.received_at, e.id) < (?, ?)")
            args += list(after)
        rows = self.database.rows(
            f"""SELECT e.id, e.received_at, e.source, e.type, e.status, e.outcome, e.purged_at,
                       (SELECT group_concat(status || ':' || n, ' ') FROM
                          (SELECT status, COUNT(*) AS n FROM actions a WHERE a.event_id = e.id GROUP BY status) AS c)
                         AS actions
                FROM events e WHERE {" AND ".join(where)}
                ORDER BY e.received_at DESC, e.id DESC LIMIT ?""",
            (*args, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, ((rows[-1]["received_at"], rows[-1]["id"]) if more else None)

    def raw_body(self, event_id: str) -> bytes | None:
        row = self.database.one("SELECT raw FROM events WHERE id = ?", (event_id,))
        return bytes(row[0]) if row and row[0] is not None else None

    # -- failures --------------------------------------------------------------------------------------

    def dead_groups(self) -> list[dict]:
        """Dead letters by rule, action type and error code: how many, since when, a last error to read."""
        return self.database.rows(
            """SELECT rule, type, COALESCE(error_code, '-') AS code, COUNT(*) AS n, MIN(updated_at) AS first,
                      MAX(updated_at) AS last, MAX(error) AS error
               FROM actions WHERE status = ? GROUP BY rule, type, COALESCE(error_code, '-')
               ORDER BY n DESC, rule""",
            (ActionStatus.DEAD,),
        )

    def dead_in_group(self, rule: str, code: str) -> list[dict]:
        """The dead letters of one group (rule and error code), oldest first."""
        return self.database.rows(
            """SELECT id, event_id, rule, type, error, error_code, updated_at, group_id FROM actions
               WHERE status = ? AND rule = ? AND COALESCE(error_code, '-') = ? ORDER BY updated_at, id""",
            (ActionStatus.DEAD, rule, code),
        )

    def dead_of_event(self, event_id: str) -> list[dict]:
        return self.database.rows(
            "SELECT id, event_id, rule, type, error, error_code FROM actions WHERE status = ? AND event_id = ?",
            (ActionStatus.DEAD, event_id),
        )

    def action_statuses(self, action_ids: list[str]) -> list[dict]:
        """Where each of these actions is now (a replay's progress)."""
        if not action_ids:
            return []
        marks = ",".join("?" * len(action_ids))
        return self.database.rows(
            f"""SELECT id, event_id, rule, type, status, attempts, error, result, updated_at FROM actions
                WHERE id IN ({marks}) ORDER BY rule, id""",
            action_ids,
        )

    # -- rules -----------------------------------------------------------------------------------------

    def matches_since(self, since: datetime) -> dict[str, int]:
        """How many events each rule matched since then."""
        rows = self.database.all(
            "SELECT rule, COUNT(*) FROM evaluations WHERE evaluated_at >= ? AND matched != 0 GROUP BY rule",
            (iso(since),),
        )
        return {rule: count for rule, count in rows}

    def unfinished_events(self) -> int:
        row = self.database.one(
            "SELECT COUNT(*) FROM events WHERE status IN (?, ?)", (EventStatus.RECEIVED, EventStatus.PROCESSING)
        )
        return int(row[0]) if row else 0

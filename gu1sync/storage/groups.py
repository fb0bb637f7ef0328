"""Groups of actions whose one message goes out together (a rule's `group:`): a group opens with its
first action (which carries the message), gathers the matches that share its key until its window
closes, and its members end as its message does. Every function works inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from ..core.status import ActionStatus
from ..core.timeutil import iso

GROUPED, DEAD = ActionStatus.GROUPED, ActionStatus.DEAD


def join(
    conn: sqlite3.Connection,
    action_id: str,
    rule: str,
    index: int,
    key: str,
    *,
    wait: float,
    max_lines: int,
    now: datetime,
) -> str:
    """The group an action joins: the open one of its rule, action and key whose window has not closed,
    or a new one it opens (whose id is then the action's own)."""
    row = conn.execute(
        """SELECT id FROM action_groups WHERE rule = ? AND action_index = ? AND key = ? AND status = 'open'
             AND closes_at > ? ORDER BY opened_at DESC LIMIT 1""",
        (rule, index, key, iso(now)),
    ).fetchone()
    if row is not None:
        conn.execute("UPDATE action_groups SET members = members + 1 WHERE id = ?", (row[0],))
        return row[0]
    conn.execute(
        """INSERT INTO action_groups (id, rule, action_index, key, opened_at, closes_at, status, members, max_lines)
           VALUES (?, ?, ?, ?, ?, ?, 'open', 1, ?)""",
        (action_id, rule, index, key, iso(now), iso(now + timedelta(seconds=wait)), max_lines),
    )
    return action_id


def close(conn: sqlite3.Connection, carrier: str) -> tuple[list[dict], int]:
    """Close a group to new members (its message is being sent) and return its members, first first
    (id, event_id, group_line), with the most lines its message shows. Closing twice (a retry of the
    message) changes nothing."""
    conn.execute("UPDATE action_groups SET status = 'closed' WHERE id = ? AND status = 'open'", (carrier,))
    row = conn.execute("SELECT max_lines FROM action_groups WHERE id = ?", (carrier,)).fetchone()
    members = conn.execute(
        "SELECT id, event_id, group_line FROM actions WHERE group_id = ? ORDER BY created_at, id", (carrier,)
    ).fetchall()
    return [{"id": m[0], "event_id": m[1], "group_line": m[2]} for m in members], int(row[0]) if row else 50


def end_members(
    conn: sqlite3.Connection,
    carrier: str,
    *,
    status: str,
    result: str | None,
    error: str | None,
    error_code: str | None,
    status_code: int | None,
    now: datetime,
) -> None:
    """The group's message went (or never will): every member it carried ends as it did."""
    conn.execute(
        """UPDATE actions SET status = ?, result = ?, error = ?, error_code = ?, status_code = ?,
                  updated_at = ?, finished_at = ?
           WHERE group_id = ? AND id != ? AND status = ?""",
        (
            status,
            f"in the group message of action {carrier}: {result}" if result else None,
            f"the group message (action {carrier}) failed: {error}" if error else None,
            error_code,
            status_code,
            iso(now),
            iso(now),
            carrier,
            carrier,
            GROUPED,
        ),
    )


def regroup(conn: sqlite3.Connection, carrier: str, now: datetime) -> None:
    """A dead group's first action goes again (replay): the members it carried wait for its message again."""
    conn.execute(
        """UPDATE actions SET status = ?, result = NULL, error = NULL, error_code = NULL, status_code = NULL,
                  alerted_at = NULL, finished_at = NULL, updated_at = ?
           WHERE group_id = ? AND id != ? AND status = ?
             AND EXISTS (SELECT 1 FROM actions c WHERE c.id = ? AND c.status = ?)""",
        (GROUPED, iso(now), carrier, carrier, DEAD, carrier, DEAD),
    )

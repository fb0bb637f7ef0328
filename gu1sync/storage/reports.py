"""What the operator commands read: recent events with how they came out, and one event's whole trace."""

from __future__ import annotations

import json

from .actions import ActionLog
from .events import Store


def recent_events(store: Store, limit: int = 20, status: str | None = None) -> list[dict]:
    """The newest events with how they came out: rules matched, and actions by status."""
    where, args = ("WHERE e.status = ?", [status]) if status else ("", [])
    rows = store.database.rows(
        f"""SELECT e.id, e.received_at, e.source, e.type, e.status, e.outcome, e.error,
                       (SELECT COUNT(*) FROM evaluations v WHERE v.event_id = e.id AND v.matched != 0) AS matched,
                       (SELECT COUNT(*) FROM deliveries d WHERE d.event_id = e.id) AS deliveries,
                       (SELECT group_concat(status || ':' || n, ' ') FROM
                          (SELECT status, COUNT(*) AS n FROM actions a WHERE a.event_id = e.id GROUP BY status) AS c)
                         AS actions
                FROM events e {where} ORDER BY e.received_at DESC LIMIT ?""",
        (*args, limit),
    )
    return rows


def trace(store: Store, actions: ActionLog, event_id: str) -> dict | None:
    """Everything known about one event: receipt, deliveries, rules and why, actions and their attempts."""
    rows = store.database.rows("SELECT * FROM events WHERE id = ?", (event_id,))
    if not rows:
        return None
    event = rows[0]
    event.pop("raw")
    event_actions = []
    for row in store.actions(event_id):
        row["params"] = json.loads(row["params"]) if row["params"] else None
        row["attempt_log"] = actions.attempts(row["id"])
        event_actions.append(row)
    return {
        "event": event,
        "deliveries": store.deliveries(event_id),
        "rules": store.evaluations(event_id),
        "actions": event_actions,
    }

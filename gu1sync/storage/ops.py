"""What gu1-sync knows of its own health, read back: counters for /metrics, rejections within a
window, each connector's health (signed in or refused, API usage), the operational alerts it sent,
what is firing now, and the lease that lets one process of all run the alerts. The writes that go
with other work, inside its transaction, are in `counting`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..core.status import ActionStatus, EventStatus
from ..core.timeutil import iso
from .counting import record_health
from .events import Store


@dataclass(frozen=True)
class Health:
    """One connector's health, as its calls last saw it."""

    connector: str
    state: str  # ok | auth_failed
    code: str | None
    since: str | None
    api_used: int | None
    api_limit: int | None
    api_at: str | None


# Reasons a request is refused as not authentic (a 401): what a secret that differs on the two sides gives.
SIGNATURE_REASONS = (
    "missing_signature",
    "malformed_signature",
    "signature_mismatch",
    "missing_timestamp",
    "malformed_timestamp",
    "timestamp_out_of_tolerance",
    "missing_id",
    "malformed_id",
)


class OpsLog:
    """Queries about gu1-sync's own health, on a Store's database."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def database(self) -> Any:
        return self.store.database

    # -- counters and the figures /metrics shows ------------------------------------------------------

    def counters(self, *names: str) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) of every series of these counters."""
        marks = ",".join("?" * len(names))
        rows = self.database.all(f"SELECT name, labels, value FROM counters WHERE name IN ({marks})", names)
        return [(name, json.loads(labels), value) for name, labels, value in rows]

    def rejections(self) -> list[tuple[str, str, int]]:
        """(source, reason, count) of every rejection since the database was made."""
        return [tuple(row) for row in self.database.all("SELECT source, reason, count FROM rejections")]

    def actions_by_status(self) -> list[tuple[str, str, str, int]]:
        """(rule, action type, status, count) of every action."""
        return [
            tuple(row)
            for row in self.database.all("SELECT rule, type, status, COUNT(*) FROM actions GROUP BY status, rule, type")
        ]

    def oldest_unfinished(self) -> str | None:
        """When the oldest event waiting to be processed was received (received or processing; a `failed`
        one waits for a person, not for the workers, and is counted by `failed_events`)."""
        row = self.database.one(
            "SELECT MIN(received_at) FROM events WHERE status IN (?, ?)", (EventStatus.RECEIVED, EventStatus.PROCESSING)
        )
        return row[0] if row else None

    def failed_events(self) -> int:
        """Events whose processing failed for good: each waits for `gu1-sync replay EVENT_ID`."""
        row = self.database.one("SELECT COUNT(*) FROM events WHERE status = ?", (EventStatus.FAILED,))
        return int(row[0]) if row else 0

    def count_actions(self, status: ActionStatus) -> int:
        row = self.database.one("SELECT COUNT(*) FROM actions WHERE status = ?", (status,))
        return int(row[0]) if row else 0

    # -- rejections within a window -------------------------------------------------------------------

    def rejections_since(self, moment: datetime, reasons: Iterable[str] = SIGNATURE_REASONS) -> dict[str, dict]:
        """Per source, the count of each reason since `moment`: {source: {reason: count}}."""
        reasons = tuple(reasons)
        marks = ",".join("?" * len(reasons))
        rows = self.database.all(
            f"""SELECT source, reason, SUM(count) FROM rejection_seconds
                WHERE second >= ? AND reason IN ({marks}) GROUP BY source, reason""",
            (iso(moment)[:19], *reasons),
        )
        out: dict[str, dict] = {}
        for source, reason, total in rows:
            out.setdefault(source, {})[reason] = int(total)
        return out

    def forget_rejections_before(self, moment: datetime) -> int:
        """Drop the per-second counts older than `moment` (the totals in `rejections` stay)."""
        with self.database.transaction() as conn:
            return conn.execute("DELETE FROM rejection_seconds WHERE second < ?", (iso(moment)[:19],)).rowcount

    # -- connectors' health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Health]:
        rows = self.database.rows("SELECT * FROM connector_health")
        return {
            row["connector"]: Health(
                row["connector"],
                row["state"],
                row["code"],
                row["since"],
                row["api_used"],
                row["api_limit"],
                row["api_at"],
            )
            for row in rows
        }

    def api_usage(self) -> list[dict]:
        """Per connector: the calls gu1-sync made to it (all time, a batch counted once), and the API usage
        its last answer reported (Salesforce: the org's, of all its integrations, over a rolling day)."""
        calls: dict[str, float] = {}
        for _, labels, value in self.counters("connector_calls"):
            calls[labels["connector"]] = calls.get(labels["connector"], 0) + value
        health = self.health()
        return [
            {
                "connector": name,
                "calls": int(calls.get(name, 0)),
                "api_used": health[name].api_used if name in health else None,
                "api_limit": health[name].api_limit if name in health else None,
                "api_at": health[name].api_at if name in health else None,
            }
            for name in sorted(set(calls) | {n for n, h in health.items() if h.api_used is not None})
        ]

    def set_health(self, connector: str, *, failed_code: str | None, now: datetime) -> None:
        """A check's verdict on a connector's credentials (see record_health)."""
        with self.database.transaction() as conn:
            record_health(conn, connector, failed_code=failed_code, now=now)

    # -- dead letters not told yet --------------------------------------------------------------------

    def untold_dead(self, limit: int = 10_000) -> list[dict]:
        """Dead letters no digest has told of yet, oldest first: id, event, rule, type, codes, when."""
        return self.database.rows(
            """SELECT id, event_id, rule, type, status_code, error_code, updated_at FROM actions
               WHERE status = 'dead' AND alerted_at IS NULL ORDER BY updated_at, id LIMIT ?""",
            (limit,),  # the status written out, so that SQLite uses the partial index made for this query
        )

    def mark_told(self, action_ids: list[str], now: datetime) -> None:
        with self.database.transaction() as conn:
            for start in range(0, len(action_ids), 500):
                batch = action_ids[start : start + 500]
                marks = ",".join("?" * len(batch))
                # Only while still dead: one replayed in the meantime is told of again if it dies again.
                conn.execute(
                    f"UPDATE actions SET alerted_at = ? WHERE status = 'dead' AND id IN ({marks})", (iso(now), *batch)
                )

    # -- alerts ---------------------------------------------------------------------------------------

    def firing(self) -> dict[tuple[str, str], dict]:
        """What is firing now: (kind, key) -> its state row."""
        rows = self.database.rows("SELECT * FROM alert_states WHERE firing = 1")
        return {(row["kind"], row["key"]): row for row in rows}

    def last_sent(self, kind: str, key: str) -> str | None:
        row = self.database.one("SELECT last_sent_at FROM alert_states WHERE kind = ? AND key = ?", (kind, key))
        return row[0] if row else None

    def record_alert(
        self,
        *,
        kind: str,
        key: str,
        state: str,
        title: str,
        text: str,
        firing: bool | None,
        now: datetime,
        since: str | None = None,
    ) -> int:
        """Keep an alert (before it is sent) and move its state: `firing` True or False, None for a digest.
        `since`: when what it tells of began (kept as the state's start when it changes), else now."""
        with self.database.transaction() as conn:
            alert_id = conn.execute(
                """INSERT INTO alerts (kind, key, state, title, text, created_at, delivery)
                   VALUES (?, ?, ?, ?, ?, ?, 'pending') RETURNING id""",
                (kind, key, state, title, text, iso(now)),
            ).fetchone()[0]
            conn.execute(
                """INSERT INTO alert_states (kind, key, firing, since, last_sent_at) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(kind, key) DO UPDATE SET firing = excluded.firing,
                       since = CASE WHEN excluded.firing != alert_states.firing THEN excluded.since
                                    ELSE alert_states.since END,
                       last_sent_at = excluded.last_sent_at""",
                (kind, key, int(bool(firing)), since or iso(now), iso(now)),
            )
            return int(alert_id)

    def delivered(self, alert_id: int, delivery: str, error: str | None = None) -> None:
        """How the alert went out: sent, failed (with why), late (sent once the ops channel worked again,
        its `error` saying why it was not at first), or logged (no ops channel is configured)."""
        with self.database.transaction() as conn:
            conn.execute("UPDATE alerts SET delivery = ?, error = ? WHERE id = ?", (delivery, error, alert_id))

    def undelivered(self, limit: int) -> list[dict]:
        """Alerts the ops channel refused or could not be reached for, oldest first (told late when it works)."""
        return self.database.rows("SELECT * FROM alerts WHERE delivery = 'failed' ORDER BY id LIMIT ?", (limit,))

    def alerts(self, since: str | None = None, limit: int = 100) -> list[dict]:
        """Alerts, newest first."""
        return self.database.rows(
            "SELECT * FROM alerts WHERE created_at >= ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (since or "", limit),
        )

    def alert_counts(self) -> list[tuple[str, str, int]]:
        """(kind, delivery, count) of every alert kept."""
        return [
            tuple(row)
            for row in self.database.all("SELECT kind, delivery, COUNT(*) FROM alerts GROUP BY kind, delivery")
        ]

    # -- one process at a time ------------------------------------------------------------------------

    def take_lease(self, name: str, holder: str, seconds: float, now: datetime) -> bool:
        """Hold `name` for `seconds` (or renew our hold); False while another process holds it."""
        with self.database.transaction() as conn:
            cursor = conn.execute(
                """INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                   WHERE leases.until < ? OR leases.holder = excluded.holder""",
                (name, holder, iso(now + timedelta(seconds=seconds)), iso(now)),
            )
            return cursor.rowcount == 1

"""Writes that go with other work, inside its transaction: the counters /metrics reads, and what a
connector call showed of the service (its latency, whether it took the credentials, its API usage).

Counters are kept in the same transactions as what they count, so every process, and every box,
reads the same figures, and a restart resets nothing.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from ..core.timeutil import iso

# Latency buckets of connector calls, in seconds (Prometheus' own defaults, cut to what a call can take).
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def labels_key(labels: dict[str, str]) -> str:
    """Labels as the counters table keeps them: JSON with sorted keys (one spelling per series)."""
    return json.dumps(labels, sort_keys=True, ensure_ascii=False)


def count(conn: sqlite3.Connection, name: str, labels: dict[str, str], amount: float = 1.0) -> None:
    """Add `amount` to a counter, inside the caller's transaction."""
    conn.execute(
        """INSERT INTO counters (name, labels, value) VALUES (?, ?, ?)
           ON CONFLICT(name, labels) DO UPDATE SET value = counters.value + excluded.value""",
        (name, labels_key(labels), amount),
    )


def count_call(conn: sqlite3.Connection, connector: str, outcome: str, seconds: float) -> None:
    """One connector call: its bucket (counted once; /metrics makes them cumulative), and its duration."""
    bucket = next((str(bound) for bound in CALL_BUCKETS if seconds <= bound), "+Inf")
    count(conn, "connector_calls", {"connector": connector, "outcome": outcome, "le": bucket})
    count(conn, "connector_call_seconds", {"connector": connector, "outcome": outcome}, seconds)


@dataclass(frozen=True)
class CallReport:
    """What one connector call showed, kept with its attempt's outcome (ActionLog.finish)."""

    connector: str
    outcome: str  # the attempt's outcome: ok, retry, failed
    seconds: float
    credentials: bool | None  # accepted, refused, or the call cannot tell (the network failed first)
    refusal: str | None = None  # the service's code for refusing the credentials
    api_usage: tuple[int, int] | None = None  # (used, limit) the service reported

    def record(self, conn: sqlite3.Connection, now: datetime) -> None:
        """Counters, health and API usage, inside the caller's transaction."""
        count_call(conn, self.connector, self.outcome, self.seconds)
        if self.credentials is False:
            record_health(conn, self.connector, failed_code=self.refusal or "refused", now=now)
        elif self.credentials:
            record_health(conn, self.connector, failed_code=None, now=now)
        if self.api_usage is not None:
            record_api_usage(conn, self.connector, *self.api_usage, now)


def record_health(conn: sqlite3.Connection, connector: str, *, failed_code: str | None, now: datetime) -> None:
    """A call's verdict on a connector's credentials, inside the caller's transaction: refused
    (`failed_code`), or accepted (which clears a refusal, and writes only when the state changes)."""
    if failed_code is not None:
        conn.execute(
            """INSERT INTO connector_health (connector, state, code, since, checked_at)
               VALUES (?, 'auth_failed', ?, ?, ?)
               ON CONFLICT(connector) DO UPDATE SET state = 'auth_failed', code = excluded.code,
                   since = CASE WHEN connector_health.state = 'auth_failed' THEN connector_health.since
                                ELSE excluded.since END,
                   checked_at = excluded.checked_at""",
            (connector, failed_code, iso(now), iso(now)),
        )
    else:
        conn.execute(
            "UPDATE connector_health SET state = 'ok', code = NULL, since = ?, checked_at = ? "
            "WHERE connector = ? AND state != 'ok'",
            (iso(now), iso(now), connector),
        )


def record_api_usage(conn: sqlite3.Connection, connector: str, used: int, limit: int, now: datetime) -> None:
    """The API usage a service reported (Salesforce: Sforce-Limit-Info), inside the caller's transaction.

    Calls made side by side report in any order, a few calls apart: a figure lower by less than 1% of
    the limit is taken for an older answer and not kept. The usage is a rolling day's, so it does go
    down; by more than that, it is kept."""
    conn.execute(
        """INSERT INTO connector_health (connector, state, api_used, api_limit, api_at) VALUES (?, 'ok', ?, ?, ?)
           ON CONFLICT(connector) DO UPDATE SET api_used = excluded.api_used, api_limit = excluded.api_limit,
               api_at = excluded.api_at
           WHERE connector_health.api_used IS NULL OR excluded.api_used >= connector_health.api_used
                 OR excluded.api_used < connector_health.api_used - excluded.api_limit / 100.0""",
        (connector, used, limit, iso(now)),
    )

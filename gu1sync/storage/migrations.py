"""The SQLite schema, as a list of migrations: a file at user_version N gets migrations N+1 onwards.

Append only. Never edit a migration that has shipped: add the next one.
"""

from __future__ import annotations

import sqlite_utils

from ..core.body import search_keys


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


def _migration_2(db: sqlite_utils.Database) -> None:
    # What each rule made of each event, and why.
    db["evaluations"].create(
        {
            "event_id": str,
            "rule": str,
            "matched": int,
            "reason": str,
            "mode": str,
            "throttle_key": str,
            "error": str,
            "config_version": str,
            "evaluated_at": str,
        },
        pk=("event_id", "rule"),
        not_null={"matched", "config_version", "evaluated_at"},
        foreign_keys=[("event_id", "events", "id")],
    )
    # One row per action of a matched rule; its id is the idempotency key (event, rule, index).
    db["actions"].create(
        {
            "id": str,
            "event_id": str,
            "rule": str,
            "action_index": int,
            "type": str,
            "mode": str,
            "params": str,
            "status": str,
            "error": str,
            "attempts": int,
            "created_at": str,
            "updated_at": str,
            "config_version": str,
        },
        pk="id",
        not_null={"event_id", "rule", "action_index", "type", "status", "attempts", "created_at", "updated_at"},
        defaults={"attempts": 0},
        foreign_keys=[("event_id", "events", "id")],
    )
    db["actions"].create_index(["event_id", "rule", "action_index"], unique=True)
    db["actions"].create_index(["status", "updated_at"])
    # Throttle windows: a key's actions ran at window_start; until `until`, its matches are throttled.
    db["throttles"].create(
        {"rule": str, "key": str, "until": str, "event_id": str},
        pk=("rule", "key"),
        not_null={"until", "event_id"},
    )


def _migration_3(db: sqlite_utils.Database) -> None:
    # Delivery of actions: which job carries it, its lease while running, when to try next.
    for column, kind in [
        ("job_id", str),
        ("lease_until", str),
        ("next_attempt_at", str),
        ("finished_at", str),
        ("status_code", int),
        ("result", str),
    ]:
        db["actions"].add_column(column, kind)
    # The delivery log: every attempt of every action.
    db["attempts"].create(
        {
            "id": int,
            "action_id": str,
            "attempt": int,
            "started_at": str,
            "finished_at": str,
            "duration_ms": float,
            "outcome": str,
            "status_code": int,
            "error": str,
            "retry_at": str,
        },
        pk="id",
        not_null={"action_id", "attempt", "started_at", "outcome"},
        foreign_keys=[("action_id", "actions", "id")],
    )
    db["attempts"].create_index(["action_id", "attempt"])
    db["attempts"].create_index(["started_at"])
    # Ordering: per record and field, the newest event that wrote it; one writer per record at a time.
    db["record_versions"].create(
        {"target": str, "field": str, "occurred_at": str, "event_id": str},
        pk=("target", "field"),
        not_null={"occurred_at", "event_id"},
    )
    db["record_locks"].create({"target": str, "holder": str, "until": str}, pk="target", not_null={"holder", "until"})


def _migration_4(db: sqlite_utils.Database) -> None:
    # How many times processing an event was tried: a poison event stops, as `failed`, after a few.
    db["events"].add_column("attempts", int, not_null_default=0)
    # A replay gives a dead action a fresh set of retries: attempts before it do not count.
    db["actions"].add_column("retry_base", int, not_null_default=0)
    # One row per attempt number: a deferral gives its number back instead of writing a second row.
    db.execute("DROP INDEX IF EXISTS idx_attempts_action_id_attempt")
    db["attempts"].create_index(["action_id", "attempt"], unique=True)


def _migration_5(db: sqlite_utils.Database) -> None:
    # Retention: when an event's personal data was removed (its id, type, times and outcomes stay).
    db["events"].add_column("purged_at", str)
    # Retention looks for old events not purged yet; purged ones are most of the table after a while.
    db.execute("CREATE INDEX idx_events_unpurged_received_at ON events (received_at, id) WHERE purged_at IS NULL")
    # A purge deletes the ordering marks its events left.
    db["record_versions"].create_index(["event_id"])


def _migration_6(db: sqlite_utils.Database) -> None:
    # Monotonic counters for /metrics, kept in the same transactions as what they count, so that every
    # process (and every box) reads the same figures and a restart resets nothing.
    db["counters"].create({"name": str, "labels": str, "value": float}, pk=("name", "labels"), not_null={"value"})
    # Rejections by the second they happened: how many a source refused within the last minutes.
    db["rejection_seconds"].create(
        {"source": str, "reason": str, "second": str, "count": int},
        pk=("source", "reason", "second"),
        not_null={"count"},
    )
    # Each connector's health as its last calls saw it: signed in or refused, and its API usage.
    db["connector_health"].create(
        {
            "connector": str,
            "state": str,
            "code": str,
            "since": str,
            "checked_at": str,
            "api_used": int,
            "api_limit": int,
            "api_at": str,
        },
        pk="connector",
        not_null={"state"},
    )
    # Operational alerts: every message gu1-sync sent (or tried to) about its own health.
    db["alerts"].create(
        {
            "id": int,
            "kind": str,
            "key": str,
            "state": str,
            "title": str,
            "text": str,
            "created_at": str,
            "delivery": str,
            "error": str,
        },
        pk="id",
        not_null={"kind", "key", "state", "title", "text", "created_at", "delivery"},
    )
    db["alerts"].create_index(["created_at"])
    # What is firing now, per kind and key (a connector, a source), so that each outage is told once.
    db["alert_states"].create(
        {"kind": str, "key": str, "firing": int, "since": str, "last_sent_at": str},
        pk=("kind", "key"),
        not_null={"firing"},
    )
    # Leases: one process of all does a periodic job (the alerts) at a time.
    db["leases"].create({"name": str, "holder": str, "until": str}, pk="name", not_null={"holder", "until"})
    # A dead letter is in one digest of the ops channel, and again only if it dies again after a replay;
    # digests group dead letters by the service's error code (INVALID_FIELD, channel_not_found...).
    db["actions"].add_column("alerted_at", str)
    db["actions"].add_column("error_code", str)
    # Dead letters from before the ops channel existed are not news: the first digest starts from here.
    db.execute("UPDATE actions SET alerted_at = updated_at WHERE status = 'dead'")
    db.execute(
        "CREATE INDEX idx_actions_dead_unalerted ON actions (updated_at) WHERE status = 'dead' AND alerted_at IS NULL"
    )
    # /metrics counts actions by rule, type and status: from the index alone.
    db["actions"].create_index(["status", "rule", "type"])


def _migration_7(db: sqlite_utils.Database) -> None:
    # Grouped alerts: matches of a rule with `group:` that share a key within its window go out as one
    # message, carried by the group's first action; each member keeps its own row and its line.
    db["action_groups"].create(
        {
            "id": str,  # the carrier: the group's first action
            "rule": str,
            "action_index": int,
            "key": str,
            "opened_at": str,
            "closes_at": str,
            "status": str,  # open (matches join it), closed (its message is being sent, or was)
            "members": int,
            "max_lines": int,
        },
        pk="id",
        not_null={"rule", "action_index", "key", "opened_at", "closes_at", "status", "members", "max_lines"},
    )
    db["action_groups"].create_index(["rule", "action_index", "key", "status"])
    db["action_groups"].create_index(["closes_at"])
    db["actions"].add_column("group_id", str)
    db["actions"].add_column("group_line", str)
    db.execute("CREATE INDEX idx_actions_group_id ON actions (group_id) WHERE group_id IS NOT NULL")


def _migration_8(db: sqlite_utils.Database) -> None:
    # The web console: its accounts (a password hash, a role, failed sign-ins and a lock), and the audit
    # log of who signed in and who re-sent what.
    db["console_users"].create(
        {
            "name": str,
            "role": str,
            "password_hash": str,
            "created_at": str,
            "failed_signins": int,
            "locked_until": str,
            "last_signin_at": str,
        },
        pk="name",
        not_null={"role", "password_hash", "created_at", "failed_signins"},
        defaults={"failed_signins": 0},
    )
    db["console_audit"].create(
        {"id": int, "at": str, "user": str, "action": str, "target": str, "detail": str, "address": str},
        pk="id",
        not_null={"at", "user", "action"},
    )
    db["console_audit"].create_index(["at"])
    # Every id an event carries (an entity id, an external id, a validation or evaluation id), for finding
    # it by any of them; filled as events are stored, and here for those stored before.
    db["event_keys"].create({"key": str, "event_id": str}, pk=("key", "event_id"))
    db["event_keys"].create_index(["event_id"])
    after = ""
    while True:
        rows = db.execute(
            "SELECT id, raw, subject FROM events WHERE id > ? AND purged_at IS NULL ORDER BY id LIMIT 1000", (after,)
        ).fetchall()
        for event_id, raw, subject in rows:
            keys = set(search_keys(raw))
            if subject:
                keys.add(subject)
            db.conn.executemany(
                "INSERT OR IGNORE INTO event_keys (key, event_id) VALUES (?, ?)", [(key, event_id) for key in keys]
            )
        if len(rows) < 1000:
            break
        after = rows[-1][0]
    # How often each rule matched lately (the console's rules page).
    db["evaluations"].create_index(["evaluated_at"])


# Append only: each entry moves the file from user_version N to N + 1.
MIGRATIONS = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
]

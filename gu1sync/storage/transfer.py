"""Moving over: everything in a SQLite file copied into an empty PostgreSQL database, then counted.

The copy is one PostgreSQL transaction (a failure leaves the database as empty as it was) of one
SQLite read snapshot (a consistent moment, even if something still writes the file: stop the
receivers and workers first all the same, or what they accept after the snapshot stays behind).
Every table is copied row for row with its own ids (the identity counters moved past them), in the
order SQLite keeps them, and each table's count in PostgreSQL is compared with SQLite's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .database import Database, StoreUnavailable
from .postgres import PostgresDatabase

PAGE = 2000  # rows read from SQLite at a time

# Parents before children (the foreign keys); the schema version is each engine's own.
TABLES = [
    "events",
    "deliveries",
    "rejections",
    "meta",
    "evaluations",
    "actions",
    "throttles",
    "attempts",
    "record_versions",
    "record_locks",
    "counters",
    "rejection_seconds",
    "connector_health",
    "alerts",
    "alert_states",
    "leases",
    "action_groups",
    "console_users",
    "console_audit",
    "event_keys",
]
IDENTITIES = ["deliveries", "attempts", "alerts", "console_audit"]  # integer ids PostgreSQL hands out next
# Rows of meta that belong to one database: its schema version, the last /readyz write.
OWN_ROWS = {"meta": "WHERE key NOT IN ('schema_version', 'ready_check')"}


class TransferError(Exception):
    """The copy cannot be made (a target not empty, schemas that differ) or did not add up."""


@dataclass
class Transfer:
    """What was copied: per table, the rows SQLite had and the rows PostgreSQL has now."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(source for source, _ in self.counts.values())


def copy_to_postgres(
    source: Database, target: PostgresDatabase, progress: Callable[[int, int], None] | None = None
) -> Transfer:
    """Copy every table of `source` (schema current) into `target` (empty, or with an empty schema)."""
    source.check_schema()
    target.migrate()
    columns = {table: _columns(source, table) for table in TABLES}
    extra = sorted(set(_tables(source)) - set(TABLES))
    if extra:
        raise TransferError(f"{source.path} has tables this version does not know how to copy: {', '.join(extra)}")
    not_empty = [table for table in TABLES if table != "meta" and target.one(f"SELECT 1 FROM {table} LIMIT 1")]
    if not_empty:
        raise TransferError(
            f"{target.path} is not empty ({', '.join(not_empty)} hold rows): copy into a new, empty database"
        )
    result = Transfer()
    reader = sqlite3.connect(source.path, isolation_level=None)
    try:
        reader.execute("BEGIN")  # one snapshot for every table
        expected = {table: _count(reader, table) for table in TABLES}  # the same count on each side
        total, done = sum(expected.values()), 0
        if progress is not None:
            progress(0, total)
        with target.transaction() as conn:
            for table in TABLES:
                copied = _copy_table(reader, conn.conn, table, columns[table])
                done += copied
                if progress is not None:
                    progress(done, total)
            for table in IDENTITIES:
                sequence = f"pg_get_serial_sequence('{table}', 'id')"
                conn.execute(f"SELECT setval({sequence}, COALESCE(MAX(id), 0) + 1, false) FROM {table}")
            counted = {table: _count(conn, table) for table in TABLES}
            for table in TABLES:
                result.counts[table] = (expected[table], counted[table])
            wrong = {table: pair for table, pair in result.counts.items() if pair[0] != pair[1]}
            if wrong:  # raising rolls the whole copy back
                listed = ", ".join(f"{table} {have} of {want}" for table, (want, have) in wrong.items())
                raise TransferError(f"the counts differ after the copy ({listed}): nothing was kept")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot read {source.path}: {exc}") from exc
    finally:
        reader.close()
    return result


def _tables(source: Database) -> list[str]:
    return [row[0] for row in source.all("SELECT name FROM sqlite_master WHERE type = 'table'")]


def _columns(source: Database, table: str) -> list[str]:
    return [row[1] for row in source.all(f'PRAGMA table_info("{table}")')]


def _count(conn: Any, table: str) -> int:
    """The rows of `table` that a copy carries (either side)."""
    return int(conn.execute(f"SELECT COUNT(*) FROM {table} {OWN_ROWS.get(table, '')}").fetchone()[0])


def _copy_table(reader: sqlite3.Connection, conn: Any, table: str, columns: list[str]) -> int:
    """COPY one table's rows, in SQLite's order (a text primary key's rowid is the order of arrival)."""
    listed = ", ".join(f'"{name}"' for name in columns)
    cursor = reader.execute(f"SELECT {listed} FROM {table} {OWN_ROWS.get(table, '')} ORDER BY rowid")
    copied = 0
    with conn.cursor().copy(f"COPY {table} ({listed}) FROM STDIN") as copy:
        while rows := cursor.fetchmany(PAGE):
            for row in rows:
                copy.write_row(row)
            copied += len(rows)
    return copied

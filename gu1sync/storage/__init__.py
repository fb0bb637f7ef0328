"""The storage layer: every query gu1-sync makes, and nothing above it writes SQL.

- `database`: the file itself: connections, transactions, schema version, backup, WAL and VACUUM;
- `migrations`: the schema, append only;
- `events`: accepted events, deliveries, rejections, rule results and throttle windows (`Store`);
- `actions`: actions, attempts, leases and the order of writes per record (`ActionLog`);
- `groups`: actions whose one message goes out together (a rule's `group:`);
- `retention`: purging personal data, by age or by data subject;
- `reports`: what the operator commands read; `groupcommit`: the receiver's shared commits;
- `postgres`: the same interface as `database` on PostgreSQL; `engine`: which of the two a config names;
  `transfer`: copying a SQLite file into PostgreSQL.
"""

from __future__ import annotations

from .actions import ActionLog
from .database import Database, SchemaMismatch, SchemaState, StoreUnavailable, lock_held
from .engine import engine_name, is_postgres, open_database
from .events import EVENT_ATTEMPTS, STALE_CLAIM, Store

__all__ = [
    "EVENT_ATTEMPTS",
    "STALE_CLAIM",
    "ActionLog",
    "Database",
    "SchemaMismatch",
    "SchemaState",
    "Store",
    "StoreUnavailable",
    "engine_name",
    "is_postgres",
    "lock_held",
    "open_database",
]

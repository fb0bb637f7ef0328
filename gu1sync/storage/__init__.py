"""The storage layer: every query gu1-sync makes, and nothing above it writes SQL.

- `database`: the file itself: connections, transactions, schema version, backup, WAL and VACUUM;
- `migrations`: the schema, append only;
- `events`: accepted events, deliveries, rejections, rule results and throttle windows (`Store`);
- `actions`: actions, attempts, leases and the order of writes per record (`ActionLog`);
- `groups`: actions whose one message goes out together (a rule's `group:`);
- `retention`: purging personal data, by age or by data subject;
- `reports`: what the operator commands read; `groupcommit`: the receiver's shared commits.
"""

from __future__ import annotations

from .actions import ActionLog
from .database import Database, SchemaMismatch, SchemaState, StoreUnavailable, lock_held
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
    "lock_held",
]

"""Group commit for the receiver: requests that arrive together share one transaction.

Every accepted event must be on disk before its 2xx, and the sync to disk is the largest cost of
accepting one. A receiver process's request threads hand their events to one committer thread;
each waits for the commit that holds its event. While one commit syncs, the next requests gather,
and go together in the next: under load a sync serves several requests, and alone a request costs
what it did before (plus a hand-over between threads).

The committer does not checkpoint the write-ahead log as it commits (SQLite would, every 1000
pages, copying them into the database file and syncing it, with the requests of that commit
waiting): a thread of its own does, every second, without blocking anyone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from ..core.records import Event
from .database import StoreUnavailable
from .events import Store

log = logging.getLogger(__name__)

MAX_GROUP = 64  # deliveries per transaction at most (bounded work per commit)
CHECKPOINT_EVERY = 1.0  # seconds between checkpoints of the write-ahead log


@dataclass
class _Delivery:
    event: Event
    headers: dict[str, str]
    done: threading.Event = field(default_factory=threading.Event)
    new: bool = False
    error: str | None = None


class GroupCommit:
    """`record(event, headers)` as Store.record, committed together with whatever else is waiting."""

    def __init__(self, store: Store):
        self.store = store
        self._waiting: list[_Delivery] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="gu1sync-committer", daemon=True)
        self._thread.start()
        threading.Thread(target=self._checkpoints, name="gu1sync-checkpointer", daemon=True).start()

    def record(self, event: Event, headers: dict[str, str]) -> bool:
        """Store the event (unless known) and its delivery; True if new. Returns once committed."""
        delivery = _Delivery(event, headers)
        with self._cond:
            self._waiting.append(delivery)
            self._cond.notify()
        # SQLite gives up on a lock after busy_timeout; past that and a margin, something is wrong.
        if not delivery.done.wait(self.store.busy_timeout + 30):
            raise StoreUnavailable("the commit did not finish in time")
        if delivery.error is not None:
            raise StoreUnavailable(delivery.error)
        return delivery.new

    def _checkpoints(self) -> None:
        database = self.store.database
        database.one("SELECT 1")  # this thread's connection, opened now, while the file is surely there
        while True:
            time.sleep(CHECKPOINT_EVERY)
            try:
                database.checkpoint()
            except StoreUnavailable as exc:  # the next one will do; a file gone wrong shows in the commits
                log.warning("checkpoint skipped: %s", exc)

    def _run(self) -> None:
        try:
            self.store.database.hold_checkpoints()  # this thread's connection; see above
        except StoreUnavailable as exc:
            log.warning("cannot hand checkpoints to their thread (%s); commits will make them", exc)
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            try:
                results = self.store.record_many([(d.event, d.headers) for d in group])
                for delivery, new in zip(group, results, strict=True):
                    delivery.new = new
            except Exception as exc:  # each waiting request answers for it (a 503); the thread goes on
                if not isinstance(exc, StoreUnavailable):
                    log.exception("committing %d event(s) failed", len(group))
                for delivery in group:
                    delivery.error = str(exc) or type(exc).__name__
            finally:
                for delivery in group:
                    delivery.done.set()

"""The receiver as a server runs it: requests that arrive together share one commit, events are queued
from a thread (one job per burst, each job going on with the next stored events), and writers of
several processes take turns on the SQLite lock without sleeping through it. Real SQLite and Redis."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

import gu1sync.jobs as jobs
from app import create_app
from gu1sync import samples
from gu1sync.jobs import use_runtime
from gu1sync.queue import BackgroundEnqueuer
from gu1sync.runtime import Runtime
from gu1sync.storage import Database, Store, StoreUnavailable
from gu1sync.storage.groupcommit import GroupCommit
from gu1sync.storage.migrations import MIGRATIONS
from gu1sync.worker import Gu1Worker
from tests.support.helpers import dumps, gu1_headers, wait_until

pytestmark = pytest.mark.real_redis


class GatedStore(Store):
    """A real store whose first commit waits until `others` more deliveries are waiting behind it."""

    def __init__(self, path: str, committer_ref: list, others: int):
        super().__init__(path)
        self.groups: list[int] = []
        self.committer_ref = committer_ref
        self.others = others

    def record_many(self, deliveries):  # noqa: ANN001, ANN201
        if not self.groups:
            wait_until(lambda: len(self.committer_ref[0]._waiting) == self.others, 10, "the others to queue up")
        self.groups.append(len(deliveries))
        return super().record_many(deliveries)


class Collect:
    """Where a server's requests hand their event ids over, kept instead of queued."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def enqueue(self, event_id: str) -> None:
        self.ids.append(event_id)


def events(make_config, count: int, seed: int = 0):
    from werkzeug.datastructures import Headers

    from gu1sync.core.body import parse_json
    from gu1sync.core.records import make_event
    from gu1sync.kinds import kind_for

    config = make_config()
    kind = kind_for(config.sources["gu1-prod"])
    out = []
    for n in range(count):
        body = dumps(samples.sample("entity.updated", seed=seed + n))
        envelope = kind.parse(parse_json(body), Headers())
        out.append(
            make_event(
                envelope=envelope,
                raw=body,
                secret="GU1_SECRET",
                source="gu1-prod",
                kind="gu1",
                environment="production",
                received_at="2025-01-15T10:00:00.000Z",
            )
        )
    return out


def test_requests_that_arrive_together_share_one_commit(make_config, tmp_path):
    batch = events(make_config, 12)
    ref: list = []
    store = GatedStore(str(tmp_path / "g.db"), ref, others=15)
    store.migrate()
    committer = GroupCommit(store)
    ref.append(committer)
    deliveries = [batch[0]] + batch[1:] + batch[:4]  # 16 deliveries: 12 events, 4 of them delivered twice
    results: dict[int, bool] = {}

    def deliver(n: int) -> None:
        results[n] = committer.record(deliveries[n], {"Content-Type": "application/json"})

    first = threading.Thread(target=deliver, args=(0,))
    first.start()
    wait_until(lambda: store.groups or committer._waiting == [], 5, "the first commit to start")
    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(1, 16)]
    for thread in threads:
        thread.start()
    for thread in [first, *threads]:
        thread.join(10)
    assert store.groups == [1, 15]  # the fifteen that waited went in one transaction
    assert sum(results.values()) == 12  # each event is new once...
    assert [results[n] for n in range(12, 16)] == [False] * 4  # ...and a second delivery is a duplicate
    assert store.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 12
    assert store.db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 16


def test_a_commit_that_cannot_happen_fails_every_request_in_it_and_the_next_one_works(make_config, tmp_path):
    store = Store(str(tmp_path / "l.db"), busy_timeout=0.2)
    store.migrate()
    committer = GroupCommit(store)
    blocker = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file
    first, second = events(make_config, 2)
    with pytest.raises(StoreUnavailable, match="locked"):
        committer.record(first, {})
    blocker.execute("ROLLBACK")
    assert committer.record(second, {}) is True
    assert committer.record(first, {}) is True  # the failed one was never stored: its retry is new


def test_a_writer_waits_for_another_process_lock_and_gives_up_after_the_busy_timeout(tmp_path):
    store = Store(str(tmp_path / "b.db"), busy_timeout=1.0)
    store.migrate()
    blocker = sqlite3.connect(tmp_path / "b.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    threading.Timer(0.2, lambda: blocker.execute("ROLLBACK")).start()
    store.check_writable()  # waited for the lock and got it
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="locked"):
        store.check_writable()
    blocker.execute("ROLLBACK")
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 1000  # left as configured


def test_the_server_queues_one_job_per_burst_and_the_jobs_go_through_every_event(make_config, redis_conn, monkeypatch):
    config = make_config()
    app = create_app(config, server=True)
    services = app.extensions["gu1sync"]
    services.enqueuer.close()
    services.enqueuer = Collect()  # the requests hand their ids over here, to go as one burst below
    client = app.test_client()
    for seed in range(40):
        body = dumps(samples.sample("entity.updated", seed=seed))
        assert client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).status_code == 202
    handed = services.enqueuer.ids
    monkeypatch.setattr(BackgroundEnqueuer, "RING_INTERVAL", 60.0)  # the burst falls in one interval
    enqueuer = BackgroundEnqueuer(services.queue)
    for event_id in handed:
        enqueuer.enqueue(event_id)
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    wait_until(lambda: queue.get_job_ids() == handed[:1], 5, "the first event's job")  # at once
    enqueuer.close()
    assert queue.get_job_ids() == [handed[0], handed[-1]]  # and one for the 39 that came meanwhile

    monkeypatch.setattr(jobs, "BATCH_EVENTS", 5)  # a job stops after 5 more: 2 jobs alone cannot do 40
    ctx = Runtime.for_service(config, role="worker")
    use_runtime(ctx)
    try:
        Gu1Worker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    finally:
        use_runtime(None)
    statuses = [row[0] for row in ctx.store.db.execute("SELECT status FROM events")]
    assert statuses == ["done"] * 40  # each job queued the next waiting event's job when it stopped


def test_handed_over_events_are_queued_even_when_the_process_stops_soon_after(make_config, redis_conn):
    config = make_config()
    app = create_app(config, server=True)
    services = app.extensions["gu1sync"]
    client = app.test_client()
    body = dumps(samples.sample("entity.updated", seed=99))
    event_id = client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).json["id"]
    services.enqueuer.close()  # what atexit does when a gunicorn worker exits
    assert Queue("test", connection=redis_conn, serializer=JSONSerializer).get_job_ids() == [event_id]


def test_every_job_keeps_a_failure_for_a_week_not_a_year(make_app, redis_conn):
    from gu1sync.queue import FAILURE_TTL

    queue = make_app().extensions["gu1sync"].queue
    queue.enqueue("ev_one")
    queue.enqueue_many(["ev_two"])
    queue.enqueue_action("act_three", "act_three-1")
    queue.enqueue_action("act_four", "act_four-2", delay=60)
    rq = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    for job_id in ("ev_one", "ev_two", "act_three-1", "act_four-2"):
        assert rq.fetch_job(job_id).failure_ttl == FAILURE_TTL == 7 * 24 * 3600, job_id


def test_the_receiver_checkpoints_the_log_from_a_thread_of_its_own(make_config, tmp_path, monkeypatch):
    import gu1sync.storage.groupcommit as groupcommit

    monkeypatch.setattr(groupcommit, "CHECKPOINT_EVERY", 0.05)
    store = Store(str(tmp_path / "c.db"))
    store.migrate()
    committer = GroupCommit(store)
    for event in events(make_config, 300):  # each commit writes several pages to the log
        committer.record(event, {})
    # The committer never copies the log into the file (that would hold up the requests of its commit);
    # the checkpointer does, behind the commits: 300 events' bodies end up in the database file itself.
    wait_until(lambda: os.path.getsize(tmp_path / "c.db") > 300 * 1000, 5, "a checkpoint")
    reader = sqlite3.connect(tmp_path / "c.db")
    assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 300


def test_a_receiver_that_starts_while_another_process_holds_the_lock_comes_up_and_waits_for_it(make_stack):
    """The schema needs a migration, and another process holds the write lock longer than busy_timeout (a
    backup, a VACUUM): the receiver still comes up, answers /healthz, says 503 to webhooks and /readyz,
    and is ready as soon as the lock is free. It used to fail its workers' boot, and gunicorn with them."""
    stack = make_stack(busy_timeout="1s")
    older = Database(str(stack.db_path))
    for migration in MIGRATIONS[:-1]:  # a file as the previous gu1-sync left it
        migration(older.db)
    older.db.execute(f"PRAGMA user_version={len(MIGRATIONS) - 1}")
    holder = stack.hold_write_lock(8)
    stack.start_receiver()  # returns once /healthz answers 200
    status, body = stack.request("GET", "/readyz")
    assert status == 503 and json.loads(body)["checks"]["database"]["ok"] is False
    document = {"event": "entity.created", "timestamp": "2025-01-08T09:00:00Z", "payload": {"entity": {"id": "e-1"}}}
    status, body = stack.deliver(document)
    assert (status, json.loads(body)["error"]) == (503, "storage_unavailable")  # Gu1 retries it
    holder.wait(30)  # the lock is let go
    wait_until(lambda: stack.request("GET", "/readyz")[0] == 200, timeout=30, what="the receiver to be ready")
    status, body = stack.deliver(document)
    assert status == 202, body
    assert Database(str(stack.db_path)).schema().found == len(MIGRATIONS)

"""An event's job makes its actions' first attempts itself, and goes on with the next stored events
while it is young: a burst costs one RQ job per batch. Real Redis, RQ, SQLite and emulators."""

from __future__ import annotations

import threading
import time

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from connectors.salesforce import TimeoutSession
from gu1sync.delivery import attempt, event_job_limit, limits
from gu1sync.jobs import process_event
from gu1sync.storage import Store
from gu1sync.worker import Gu1Worker
from tests.support.delivery import actions_of, post, setup, status_changed  # noqa: F401 - setup is a fixture

pytestmark = [pytest.mark.real_redis, pytest.mark.storage]


def queued_ids(redis_conn) -> list[str]:
    return Queue("test", connection=redis_conn, serializer=JSONSerializer).get_job_ids()


def test_one_job_processes_a_burst_and_takes_the_other_jobs_off_the_queue(setup, org, workspace, redis_conn):
    config, app, ctx = setup()
    events = [
        post(app, status_changed(f"customer_b{n}", "blocked", "active", f"2025-01-08T09:00:0{n}Z"))["id"]
        for n in range(5)
    ]
    assert queued_ids(redis_conn) == events  # the receiver queued one job per event

    result = process_event(events[0])  # the first event's job, run here
    assert result["batch"] == 4
    assert [ctx.store.event(e).status for e in events] == ["done"] * 5
    assert all(a["status"] == "done" for e in events for a in ctx.store.actions(e))
    [upserts] = org.seen("PATCH")  # the five upserts were ready together: one sObject Collections call
    assert len(upserts.json["records"]) == 5 and len(workspace.messages) == 5
    assert queued_ids(redis_conn) == [events[0]]  # only the job that ran (here, outside RQ) is left
    assert all(Job.exists(e, connection=redis_conn) is False for e in events[1:])  # no hash left behind


def test_a_job_already_started_elsewhere_is_left_alone(setup, redis_conn):
    config, app, ctx = setup()
    first = post(app, status_changed("customer_s1", "active", "under_review", "2025-01-08T09:00:00Z"))["id"]
    second = post(app, status_changed("customer_s2", "active", "under_review", "2025-01-08T09:00:01Z"))["id"]
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    queue.remove(second)  # another worker has dequeued it and is about to start it
    assert ctx.queue.discard_event_job(second) is False
    assert Job.exists(second, connection=redis_conn)  # its hash stays for the worker that has it
    process_event(first)
    assert ctx.store.event(second).status == "done"


def test_a_first_attempt_that_does_not_fit_in_the_job_gets_a_job_of_its_own(setup, org, workspace, redis_conn):
    config, app, ctx = setup()
    event = post(app, status_changed("customer_t", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    job = queue.fetch_job(event)
    assert job.timeout == event_job_limit(config)  # the receiver queued it with the limit for a batch
    job.timeout = int(limits(config, "slack.post")[1])  # now no attempt fits with room to spare
    job.save()
    Gu1Worker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    actions = actions_of(ctx, event)
    assert {a["status"] for a in actions.values()} == {"done"}
    for action in actions.values():  # each ran as job <action>-1, with its own limit
        own = queue.fetch_job(f"{action['id']}-1")
        assert own is not None and own.get_status() == "finished"
        assert own.timeout == limits(config, action["type"])[1]


def test_an_inline_attempt_holds_its_lease_until_after_the_job_would_be_stopped(setup, org, redis_conn):
    config, app, ctx = setup()
    event = post(app, status_changed("customer_l", "active", "under_review", "2025-01-08T09:00:00Z"))["id"]
    ctx.store.claim(event)
    [(action_id, action_type)] = [
        pair for pair in ctx.store.record_evaluation(event, _evaluate(config, ctx, event), config.digest).pending
    ]
    org.stall(r"/sobjects/Contact/", 0.6)
    seen: list[str] = []

    def watch() -> None:
        while not seen:  # on a connection of its own, as another process would read
            lease = ctx.store.database.one("SELECT lease_until FROM actions WHERE id = ?", (action_id,))[0]
            if lease:
                seen.append(lease)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    attempt(ctx, config, action_id, action_type=action_type, killed_within=500)
    watcher.join(5)
    [claimed] = ctx.actions.attempts(action_id)
    lease_seconds = _epoch(seen[0]) - _epoch(claimed["started_at"])  # both as the claim recorded them
    assert lease_seconds >= 500 + 10  # not the usual lease: the job may run 500 s more
    assert limits(config, action_type)[0] < 500


def test_a_batch_stops_at_an_event_it_cannot_process_and_leaves_it_for_later(setup, redis_conn, monkeypatch):
    import gu1sync.jobs as jobs

    config, app, ctx = setup()
    good = post(app, status_changed("customer_g", "active", "under_review", "2025-01-08T09:00:00Z"))["id"]
    bad = post(app, status_changed("customer_x", "active", "under_review", "2025-01-08T09:00:01Z"))["id"]
    later = post(app, status_changed("customer_y", "active", "under_review", "2025-01-08T09:00:02Z"))["id"]
    real = jobs.evaluate

    def flaky(rules, event):  # stands for a bug in evaluation, which cannot be caused from outside
        if event.id == bad:
            raise RuntimeError("boom")
        return real(rules, event)

    monkeypatch.setattr(jobs, "evaluate", flaky)
    result = process_event(good)
    assert result["batch"] == 1  # it took `bad`, failed, and stopped there
    assert [ctx.store.event(e).status for e in (good, bad, later)] == ["done", "received", "received"]
    assert ctx.store.event(bad).error == "RuntimeError: boom"
    # The next job goes on with `later`; `bad` cools down instead of using up its attempts in a row.
    assert process_event(later)["batch"] == 0
    [(status, attempts)] = ctx.store.db.execute("SELECT status, attempts FROM events WHERE id = ?", (bad,))
    assert (status, attempts) == ("received", 1)


def test_workers_commit_without_waiting_for_the_disk_and_the_receiver_with(tmp_path):
    receiver = Store(str(tmp_path / "a.db"))
    receiver.migrate()
    worker = Store(str(tmp_path / "a.db"), durable=False)
    assert receiver.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert worker.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL (WAL: safe against crashes)
    receiver.count_rejection("gu1", "bad_signature", 401)  # counts commit at NORMAL, then back
    assert receiver.db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_the_salesforce_session_reads_the_environment_once_per_host(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "login.salesforce.com")
    session = TimeoutSession(5)
    first = session.merge_environment_settings("https://acme.my.salesforce.com/x", {}, None, True, None)
    assert first["proxies"]["https"] == "http://proxy.internal:3128"
    first["proxies"]["https"] = "changed by a caller"  # a caller's change must not leak into the cache
    again = session.merge_environment_settings("https://acme.my.salesforce.com/y", {}, None, True, None)
    assert again["proxies"]["https"] == "http://proxy.internal:3128"
    bypassed = session.merge_environment_settings("https://login.salesforce.com/services", {}, None, True, None)
    assert "https" not in bypassed["proxies"]  # NO_PROXY still holds per host
    explicit = session.merge_environment_settings(
        "https://acme.my.salesforce.com/x", {"https": "p:1"}, None, True, None
    )
    assert explicit["proxies"]["https"] == "p:1"


def _evaluate(config, ctx, event_id):
    from rules.engine import evaluate

    return evaluate(config.rules, ctx.store.event(event_id))


def _epoch(text: str) -> float:
    from gu1sync.core.timeutil import parse_iso

    return parse_iso(text).timestamp()


def test_a_slow_salesforce_does_not_hold_up_the_slack_post(setup, org, workspace, redis_conn):
    config, app, ctx = setup()
    event = post(app, status_changed("customer_w", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    org.stall(r"/sobjects/Contact/", 1.0)
    process_event(event)
    [patch] = org.seen("PATCH")
    [message] = workspace.seen("POST", r"chat\.postMessage")
    assert message.at < patch.at + 1.0  # posted while the upsert was still waiting for its answer
    assert {a["status"] for a in ctx.store.actions(event)} == {"done"}  # and the job waited for both


def test_a_job_that_runs_ahead_of_its_attempts_waits_for_one_in_flight(setup, org, monkeypatch):
    import gu1sync.jobs as jobs

    config, app, ctx = setup()
    monkeypatch.setattr(jobs, "ATTEMPT_THREADS", 1)
    monkeypatch.setattr(jobs, "_executor", None)  # a pool of one thread for this test
    events = [
        post(app, status_changed(f"customer_q{n}", "active", "under_review", f"2025-01-08T09:00:0{n}Z"))["id"]
        for n in range(4)
    ]
    org.stall(r"/sobjects/Contact/", 0.2, times=4)
    first_attempts = jobs.FirstAttempts(ctx, jobs.JobClock())
    for event_id in events:
        event = ctx.store.claim(event_id)
        [(action_id, action_type)] = ctx.store.record_evaluation(
            event_id, _evaluate(config, ctx, event_id), config.digest
        ).pending
        first_attempts.submit(config, action_id, action_type, event)
        # It keeps only what is in flight, never more than two per thread: it waited, and on those in
        # flight only (waiting on a list that holds a finished one returns at once: a busy loop).
        assert len(first_attempts.futures) <= 2
    first_attempts.wait()
    assert len(org.seen("PATCH")) == 4
    monkeypatch.setattr(jobs, "_executor", None)

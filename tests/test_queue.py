"""Redis going away and coming back, the sweep, and real RQ worker processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from app import create_app
from gu1sync import samples
from gu1sync.core.status import EventStatus
from gu1sync.queue import PROCESS_EVENT, redis_client
from gu1sync.runtime import Runtime
from gu1sync.worker import Sweeper
from tests.support.helpers import ROOT, SECRETS, dumps, gu1_headers

DONE, RECEIVED = EventStatus.DONE, EventStatus.RECEIVED

pytestmark = [pytest.mark.real_redis, pytest.mark.storage]


def post_event(client, seed: int, event: str = "kyc.validation_approved"):
    body = dumps(samples.sample(event, seed=seed))
    return client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body))


def job_ids(url: str) -> list[str]:
    return Queue("test", connection=redis_client(url, connect_timeout=1, timeout=5), serializer=JSONSerializer).job_ids


def run_worker(config_file: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "app.py", "--config", config_file, "worker", "--burst", *args],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_redis_down_then_back_every_accepted_event_is_queued_exactly_once(make_config, clock, own_redis):
    config = make_config(redis_url=own_redis.url)
    app = create_app(config, clock=clock)  # the real queue, built from the config
    client = app.test_client()
    before = [post_event(client, seed).json["id"] for seed in range(5)]
    assert sorted(job_ids(own_redis.url)) == sorted(before)

    own_redis.stop()
    during = []
    for seed in range(5, 25):
        response = post_event(client, seed)
        assert response.status_code == 202
        during.append(response.json["id"])
    assert post_event(client, 5).json == {"id": during[0], "duplicate": True}  # dedupe needs no Redis

    own_redis.start()  # it kept nothing: the jobs queued before the outage are gone as well
    assert job_ids(own_redis.url) == []
    clock.advance(60)
    sweeper = Sweeper(Runtime.for_service(config, role="worker").queue, interval=1)
    sweeper.queue.clock = clock
    assert sorted(sweeper.sweep_once()) == sorted(before + during)
    assert sweeper.sweep_once() == []  # a second sweep finds every job in place
    assert post_event(client, 0).json["duplicate"] is True

    queued = job_ids(own_redis.url)
    assert sorted(queued) == sorted(before + during)
    assert len(queued) == len(set(queued)) == 25


def test_a_sweep_with_redis_down_is_skipped_not_crashed(make_config, clock, own_redis):
    config = make_config(redis_url=own_redis.url)
    own_redis.stop()
    post_event(create_app(config, clock=clock).test_client(), 1)
    clock.advance(60)
    queue = Runtime.for_service(config, role="worker").queue
    queue.clock = clock
    assert Sweeper(queue, interval=1).sweep_once() == []


def test_the_sweep_leaves_young_events_to_the_receiver(make_config, clock, redis_url):
    config = make_config()
    app = create_app(config, clock=clock)
    store = app.extensions["gu1sync"].store
    app.extensions["gu1sync"].queue._down_until = float("inf")  # as if Redis had just failed
    event_id = post_event(app.test_client(), 1).json["id"]
    queue = Runtime.for_service(config, role="worker").queue
    queue.clock = clock
    assert queue.sweep(grace=5) == []
    clock.advance(6)
    assert queue.sweep(grace=5) == [event_id]
    assert store.event(event_id).status == RECEIVED


def test_a_real_worker_processes_queued_and_unqueued_events(make_config, clock, redis_url):
    config = make_config()
    app = create_app(config)
    client = app.test_client()
    queued = [post_event(client, seed, event).json["id"] for seed, event in enumerate(samples.KNOWN_EVENTS)]
    app.extensions["gu1sync"].queue._down_until = float("inf")  # Redis "down" for the receiver only
    stranded = post_event(client, 99, "transaction.flagged").json["id"]
    assert stranded not in job_ids(redis_url)

    # The stranded event is young; the worker's start-up sweep has a grace period, so age it.
    store = app.extensions["gu1sync"].store
    with store.transaction() as conn:
        conn.execute("UPDATE events SET received_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", (stranded,))

    result = run_worker(config.file)
    assert result.returncode == 0, result.stderr
    for event_id in [*queued, stranded]:
        event = store.event(event_id)
        assert event.status == DONE, (event_id, event.status, result.stderr[-2000:])
    outcome = store.db.execute("SELECT outcome, config_version FROM events WHERE id = ?", (stranded,)).fetchone()
    assert outcome == ("no_rule_matched", config.digest)
    assert job_ids(redis_url) == []
    assert "taxId" not in result.stderr and "customer_" not in result.stderr


def test_a_job_run_twice_processes_the_event_once(make_config, redis_url):
    config = make_config()
    app = create_app(config)
    event_id = post_event(app.test_client(), 1).json["id"]
    assert run_worker(config.file).returncode == 0
    store = app.extensions["gu1sync"].store

    def finished_at() -> str:
        return store.db.execute("SELECT finished_at FROM events WHERE id = ?", (event_id,)).fetchone()[0]

    first_finish = finished_at()
    assert first_finish is not None
    # RQ runs an overwritten job id twice; put the same event's job on the queue again by hand.
    Queue(
        "test", connection=redis_client(redis_url, connect_timeout=1, timeout=5), serializer=JSONSerializer
    ).enqueue_call(PROCESS_EVENT, args=(event_id,))
    second = run_worker(config.file)
    assert second.returncode == 0
    assert f"skip event={event_id}" in second.stderr
    assert finished_at() == first_finish


def test_worker_refuses_a_broken_config(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text(
        "version: 1\nsources:\n  s:\n    kind: gu1\n    environment: production\n    secrets: ${NOPE_UNSET}\n"
    )
    result = run_worker(str(bad))
    assert result.returncode == 1
    assert "environment variable NOPE_UNSET is not set" in result.stderr
    assert "config.yaml:6:14" in result.stderr


def test_a_job_queued_by_an_older_version_under_another_name_is_queued_again_by_the_sweep(make_config, redis_url):
    """After an upgrade, jobs in Redis may name functions that moved (gu1sync.worker.process_event was
    the event's job): such a job fails once, and the sweep queues the event again under today's name."""
    config = make_config()
    app = create_app(config)
    app.extensions["gu1sync"].queue._down_until = float("inf")  # the receiver queues nothing itself
    event_id = post_event(app.test_client(), 7).json["id"]
    Queue(
        "test", connection=redis_client(redis_url, connect_timeout=1, timeout=5), serializer=JSONSerializer
    ).enqueue_call("gu1sync.worker.process_event", args=(event_id,), job_id=event_id)
    store = app.extensions["gu1sync"].store
    first = run_worker(config.file)  # the old job fails; the start-up sweep ran before it and found it queued
    assert store.event(event_id).status == RECEIVED, first.stderr[-2000:]
    with store.transaction() as conn:  # older than the sweep's grace, as by its next run
        conn.execute("UPDATE events SET received_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", (event_id,))
    second = run_worker(config.file)  # the next sweep finds its job failed, and queues it again
    assert store.event(event_id).status == DONE, second.stderr[-2000:]

"""Faults, with every part real: workers killed with -9 again and again, Redis restarted empty,
Salesforce answering 503 for a while, Slack 429 storms, the SQLite file locked by another process.

Each fault test sends a burst of distinct signed events (tests/support/burst.py) at the connector running as
processes (tests/support/stack.py), injects its fault while the burst is going, and ends with `settle`: every
event answered 2xx is stored and `done`, every action is `done`, Salesforce holds one Contact per
event and Slack one post per blocked event, and each took effect once, or again only where a kill
left an attempt's outcome unknown (counted, and shown in the "fault suite" section at the end of the
run). Three of the five fault tests run on PostgreSQL too (marked `storage`). Kills on PostgreSQL are
tests/test_multibox.py's (a receiver and a worker pool killed mid-burst; this test's three rounds of
kills take twice as long there, over two minutes, too long for `make test`), and it stops PostgreSQL
itself where this file locks the SQLite file. The tests after the five fault tests
reproduce, each in the shortest way, bugs the suite found that the fault tests steer around or meet
only by chance: each failed before its fix.

CI-sized by default: most of its time is spent waiting for the leases of interrupted attempts to run
out (about 50 s for a first attempt). A long variant for hand runs (more events, more kills, more
Redis restarts, longer outages and storms, more locks), about seven minutes:

    GU1_SYNC_LONG=1 .venv/bin/python -m pytest tests/test_faults.py -v
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.burst import RETRY, DuplicateEffect, Sender, burst, report, settle, status_change
from tests.support.emulators.salesforce import UNAVAILABLE
from tests.support.helpers import wait_until

LONG = os.environ.get("GU1_SYNC_LONG") == "1"
EVENTS = 400 if LONG else 40  # per burst, sent 20 a second
KILLS = 15 if LONG else 3  # during a burst of KILL_EVENTS, sent 10 a second: long enough for every kill
KILL_EVENTS = 400 if LONG else 80
RESTARTS = 3 if LONG else 1  # of Redis, empty each time
OUTAGE = 20.0 if LONG else 3.0  # seconds of Salesforce 503s, of Slack 429s
LOCKS = 4 if LONG else 1  # times another process holds SQLite's write lock
LIMIT = 900 if LONG else 180  # seconds per test; `settle` gives up well before, saying what is stuck
QUICK = 60 if LONG else 15  # seconds the reproductions give the product to settle (fixed, about 10)

pytestmark = [pytest.mark.real_redis, pytest.mark.timeout(LIMIT)]


class EarlyRetry(AssertionError):
    """A call came sooner after a 429 than the service's Retry-After allowed."""


def busiest_caller(stack, emulator, exclude, least: int) -> tuple | None:
    """The live worker (not `exclude`) with the most calls to `emulator` started in the last 0.1 s and
    not answered yet, if it has at least `least` of them: (worker, calls). With a 0.3 s stall on every
    call, there is time enough to kill it before any of those answers goes out."""
    now = time.monotonic()
    by_worker: dict = {}
    for request in emulator.in_flight():
        if now - request.at < 0.1 and (found := stack.worker_calling([request], exclude=exclude)):
            by_worker.setdefault(found[0], []).append(request)
    worker, calls = max(by_worker.items(), key=lambda item: len(item[1]), default=(None, []))
    return (worker, calls) if len(calls) >= max(least, 1) else None


def test_workers_killed_mid_call_again_and_again(make_stack, org, workspace, record_property):
    # A 1 s connector timeout keeps a killed attempt's lease short: 21 s for an attempt in a job of its
    # own, about 50 s for a first attempt made in its event's job (the rest of that job's time limit + 10 s).
    stack = make_stack(timeout="1s", retry=RETRY)
    stack.start_receiver()
    for _ in range(3):
        stack.start_worker()
    # Every call takes a moment, so that each kill lands in the middle of some: the documented window in
    # which a call takes effect but its outcome is never recorded.
    org.stall(r"/sobjects/", 0.3, during=3600)
    workspace.stall(r"chat\.postMessage", 0.3, during=3600)
    sender = Sender(stack)
    sender.start(burst(KILL_EVENTS, every_nth_blocked=1), pace=0.1)  # every event: an upsert and a post

    cut = []  # how many Slack posts each kill cut off in the middle
    for _ in range(KILLS):
        seen = len(org.requests) + len(workspace.requests)
        wait_until(lambda s=seen: len(org.requests) + len(workspace.requests) >= s + 5, timeout=60, what="progress")
        # Never the worker whose RQ scheduler holds the lock: losing it stalls every retry until the sweep
        # notices (a test below), and a retry can happen here (a timeout under load).
        scheduler = wait_until(stack.scheduler_worker, what="a worker running the RQ scheduler")
        # The worst case for Slack: the worker with the most posts in flight (two or more, if one shows
        # up within a second).
        looking = time.monotonic()
        victim, calls = wait_until(
            lambda sch=scheduler, t=looking: busiest_caller(
                stack, workspace, sch, least=2 if time.monotonic() - t < 1 else 1
            ),
            timeout=60,
            what="a worker in the middle of a Slack post",
        )
        stack.kill(victim)
        unanswered = [call for call in calls if call.status is None]
        assert unanswered, "every answer went out before the kill"  # the machine stalled for 0.2 s
        cut.append(len(unanswered))
        stack.start_worker()
    sender.join()

    assert not sender.refusals()
    line = f"{len(cut)} kill(s), each in the middle of {cut} Slack post(s)"
    try:
        settlement = settle(stack, sender, org, workspace, kills=len(cut), timeout=LIMIT - 60)
    except DuplicateEffect as exc:
        report(record_property, f"{line}: {exc.settlement.summary()} ({exc})")
        raise
    report(record_property, f"{line}: {settlement.summary()}")
    assert settlement.interrupted >= sum(cut)  # each call cut by a kill left an attempt interrupted...
    # ...and was posted twice: the emulator finishes every call a killed worker made.
    assert settlement.slack_duplicates >= sum(cut)


def test_a_worker_killed_in_the_middle_of_a_batch(make_stack, org, workspace, record_property):
    """Upserts ready together go as one sObject Collections call: a kill during it leaves every record of
    the batch with an unknown outcome. Each is claimed again when its lease ends and written once more
    (an upsert lands the same): nothing is lost and every record ends with its event's state."""
    stack = make_stack(timeout="1s", retry=RETRY)
    stack.start_receiver()
    for _ in range(2):
        stack.start_worker()
    org.stall(r"/composite/sobjects", 0.5, during=3600)  # time enough to find the batch in flight
    sender = Sender(stack)
    sender.start(burst(KILL_EVENTS, every_nth_blocked=10), pace=0.02)

    def batch_in_flight():
        batches = [r for r in org.in_flight() if "/composite/sobjects" in r.path and len(r.json["records"]) > 1]
        return stack.worker_calling(batches)

    victim, call = wait_until(batch_in_flight, timeout=60, what="a worker in the middle of a batch")
    stack.kill(victim)
    cut = len(call.json["records"])
    stack.start_worker()
    sender.join()
    assert not sender.refusals()
    settlement = settle(stack, sender, org, workspace, kills=1, timeout=LIMIT - 60)
    report(record_property, f"a kill in the middle of a batch of {cut} upserts: {settlement.summary()}")
    assert settlement.interrupted >= cut  # every record of the batch had its attempt marked interrupted...
    repeated = [r for r in settlement.repeats if r[1] == "salesforce.upsert"]
    assert len(repeated) >= cut  # ...and was written again: the emulator finished the call the kill cut


@pytest.mark.storage  # and on PostgreSQL
def test_redis_restarted_empty_mid_burst(make_stack, own_redis, org, workspace, record_property):
    stack = make_stack(redis_url=own_redis.url, timeout="5s", retry=RETRY)
    stack.start_receiver()
    # A pool, as in production (`worker --processes N`): a worker that ends is replaced. One that meets
    # the outage while it finishes a job ended, until it was fixed (a test below); the pool itself must not.
    stack.start_worker(processes=2)
    sender = Sender(stack)
    events = burst(EVENTS)
    sender.start(events, pace=0.05)

    for restart in range(RESTARTS):
        wait_until(lambda r=restart: len(sender.accepted()) >= (r + 1) * EVENTS // (RESTARTS + 2), what="the burst")
        own_redis.stop()  # what was queued, scheduled or running in Redis is gone
        accepted = len(sender.accepted())
        # The receiver commits to SQLite first: it keeps accepting while Redis is away.
        wait_until(lambda a=accepted: len(sender.accepted()) >= a + 5, what="events accepted while Redis is down")
        own_redis.start()
    sender.join()

    assert not sender.refusals()  # not one event refused because of Redis
    settlement = settle(stack, sender, org, workspace, timeout=LIMIT - 60)
    report(record_property, f"{RESTARTS} empty restart(s) of Redis: {settlement.summary()}")
    assert settlement.events == len(events)
    assert settlement.repeats == []


@pytest.mark.storage  # and on PostgreSQL
def test_salesforce_503_for_a_while(make_stack, org, workspace, record_property):
    stack = make_stack(timeout="5s", retry=RETRY)
    stack.start_receiver()
    stack.start_worker()
    stack.start_worker()
    sender = Sender(stack)
    # The outage starts once upserts land, and the rest of the burst is sent into it: waiting for some
    # number of calls instead failed when the workers were slow to start and one collection carried
    # the whole burst (a CI run).
    events = burst(EVENTS)
    sender.start(events[: EVENTS // 4], pace=0.05)
    wait_until(lambda: org.landed, what="the first upserts")
    org.outage(during=OUTAGE)
    sender.start(events[EVENTS // 4 :], pace=0.05)
    sender.join()

    settlement = settle(stack, sender, org, workspace, timeout=LIMIT - 60)
    unavailable = [r for r in org.seen("PATCH") if r.status == 503]
    report(record_property, f"{len(unavailable)} upsert(s) answered 503: {settlement.summary()}")
    assert unavailable, "the outage never met an upsert"
    assert settlement.repeats == []  # each upsert landed once: a 503 is not a success
    retried = stack.store.db.execute(
        "SELECT COUNT(DISTINCT action_id) FROM attempts WHERE outcome = 'retry' AND status_code = 503"
    ).fetchone()[0]
    assert retried >= 1, "no attempt was recorded as a 503 retried"


@pytest.mark.storage  # and on PostgreSQL
def test_slack_429_storm_honours_retry_after(make_stack, org, workspace, record_property):
    stack = make_stack(timeout="5s", retry=RETRY)
    stack.start_receiver()
    stack.start_worker()
    stack.start_worker()
    sender = Sender(stack)
    sender.start(burst(EVENTS), pace=0.05)
    wait_until(lambda: len(workspace.messages) >= 2, what="the first posts")
    retry_after = 2  # longer than any back-off of the config (200 ms to 1 s): only Retry-After makes a wait this long
    workspace.rate_limit(during=OUTAGE, retry_after=retry_after)
    sender.join()

    settlement = settle(stack, sender, org, workspace, timeout=LIMIT - 60)
    posts = workspace.seen("POST", r"chat\.postMessage")
    limited = [r for r in posts if r.status == 429]
    by_action: dict[str, list] = {}
    for request in posts:
        by_action.setdefault(request.json["metadata"]["event_payload"]["action_id"], []).append(request)
    waits = [
        after.at - before.at
        for calls in by_action.values()
        for before, after in zip(calls, calls[1:], strict=False)
        if before.status == 429
    ]
    report(
        record_property,
        f"{len(limited)} post(s) answered 429 (Retry-After {retry_after}), shortest wait after one "
        f"{min(waits, default=0):.2f} s: {settlement.summary()}",
    )
    assert limited, "the storm never met a post"
    assert waits, "no post was tried again after a 429"
    assert settlement.repeats == []
    if min(waits) < retry_after - 0.05:
        raise EarlyRetry(f"a post came {min(waits):.2f} s after a 429 with Retry-After: {retry_after}")


def test_sqlite_locked_by_another_process(make_stack, org, workspace, record_property):
    # Locked for longer than busy_timeout, so that the receiver must refuse what arrives meanwhile, but
    # for less than twice it: two writes failing in a row (an event's record, then giving its claim
    # back) would leave it `processing` for the two minutes of a stale claim.
    stack = make_stack(timeout="1s", retry=RETRY, busy_timeout="2s")
    hold = 3.5
    stack.start_receiver()
    stack.start_worker(ready=True)  # running: one starting while the file is locked is another story (below)
    stack.start_worker(ready=True)
    org.stall(r"/sobjects/", 0.2, during=3600)
    workspace.stall(r"chat\.postMessage", 0.2, during=3600)
    sender = Sender(stack)
    sender.start(burst(EVENTS), pace=0.05)
    for _ in range(LOCKS):
        seen = len(org.requests) + len(workspace.requests)
        wait_until(lambda s=seen: len(org.requests) + len(workspace.requests) > s, timeout=60, what="work going on")
        # Taken while a call is in flight: its outcome has to be recorded while the file is locked.
        wait_until(lambda: org.in_flight() or workspace.in_flight(), timeout=60, what="a call in flight")
        holder = stack.hold_write_lock(hold)
        holder.wait(hold + 10)
    sender.join()

    # What Gu1 saw: 503 + Retry-After for what could not be stored (settle checks each), and in the
    # end every event accepted.
    assert sender.refusals(), "no delivery met the lock"
    assert all(delivery.accepted for delivery in sender.deliveries)
    try:
        settlement = settle(stack, sender, org, workspace, timeout=LIMIT - 60)
    except DuplicateEffect as exc:
        report(record_property, f"{LOCKS} lock(s) of {hold:g} s: {exc.settlement.summary()} ({exc})")
        raise
    report(record_property, f"{LOCKS} lock(s) of {hold:g} s: {settlement.summary()}")


# -- the bugs above (and two the fault tests steer around), each reproduced in the shortest way --------


def test_a_retry_runs_after_redis_comes_back(make_stack, own_redis, org, workspace, record_property):
    stack = make_stack(redis_url=own_redis.url, timeout="5s", retry=RETRY)
    stack.start_receiver()
    stack.start_worker()
    wait_until(stack.scheduler_worker, what="a worker running the RQ scheduler")
    org.fail(r"/sobjects/", 503, UNAVAILABLE)  # the first upsert fails once: it has to be retried
    sender = Sender(stack)
    own_redis.stop()
    sender.send(status_change(1, "suspended"))  # accepted while Redis is away
    time.sleep(2)  # the outage itself: two seconds, a blip
    own_redis.start()
    sender.join()
    settlement = settle(stack, sender, org, workspace, timeout=QUICK)
    report(record_property, f"retry after a Redis blip: {settlement.summary()}")


def test_a_retry_runs_after_the_scheduler_worker_is_killed(make_stack, org, workspace, record_property):
    stack = make_stack(timeout="5s", retry=RETRY)
    stack.start_receiver()
    first = stack.start_worker()
    assert wait_until(stack.scheduler_worker, what="a worker running the RQ scheduler") is first
    stack.kill(first)
    stack.start_worker()  # as a supervisor would restart it
    org.fail(r"/sobjects/", 503, UNAVAILABLE)
    sender = Sender(stack)
    sender.send(status_change(1, "suspended"))
    sender.join()
    settlement = settle(stack, sender, org, workspace, kills=1, timeout=QUICK)
    report(record_property, f"retry after the scheduler's worker was killed: {settlement.summary()}")


def test_an_event_whose_worker_died_on_it_is_processed(make_stack, org, workspace, record_property):
    # busy_timeout 5 s: the worker takes the job, marks it started, and waits on the lock; it is killed then.
    stack = make_stack(timeout="5s", retry=RETRY, busy_timeout="5s")
    stack.start_receiver()
    doomed = stack.start_worker()
    wait_until(stack.scheduler_worker, what="the worker up")
    os.killpg(doomed.pid, signal.SIGSTOP)  # it must not take the job before SQLite is locked
    sender = Sender(stack)
    delivery = sender.send(status_change(1, "blocked"))
    holder = stack.hold_write_lock(8)
    os.killpg(doomed.pid, signal.SIGCONT)
    wait_until(lambda: stack.job_status(delivery.event_id) == "started", what="the worker to start the job")
    stack.kill(doomed)
    holder.kill()
    holder.wait(10)
    assert stack.store.event(delivery.event_id).status == "received"  # never claimed: no stale claim to wait for
    stack.start_worker()
    sender.join()
    settlement = settle(stack, sender, org, workspace, kills=1, timeout=QUICK)
    report(record_property, f"an event whose worker died on it: {settlement.summary()}")


def test_a_lone_worker_outlives_redis_going_away_mid_job(make_stack, own_redis, org, workspace, record_property):
    stack = make_stack(redis_url=own_redis.url, timeout="5s", retry=RETRY)
    stack.start_receiver()
    stack.start_worker()
    org.stall(r"/sobjects/", 1.0)  # the event's job waits for its first attempt: Redis goes meanwhile
    sender = Sender(stack)
    sender.send(status_change(1, "suspended"))
    wait_until(org.in_flight, what="the upsert to start")
    own_redis.stop()
    wait_until(lambda: org.seen("PATCH")[0].finished, what="the upsert to end")
    time.sleep(2)  # the rest of the outage: the job ends while Redis is away
    own_redis.start()
    sender.join()
    settlement = settle(stack, sender, org, workspace, timeout=QUICK)
    report(record_property, f"a lone worker and a Redis outage mid-job: {settlement.summary()}")


def test_a_worker_starting_while_sqlite_is_locked_waits(make_stack, org, workspace, record_property):
    stack = make_stack(timeout="5s", retry=RETRY)
    stack.start_receiver()  # the file exists and is migrated
    holder = stack.hold_write_lock(4)  # a backup, a VACUUM, an operator's sqlite3 shell
    stack.start_worker()  # as a supervisor starts one, at any moment
    holder.wait(15)
    sender = Sender(stack)
    sender.send(status_change(1, "blocked"))
    sender.join()
    settlement = settle(stack, sender, org, workspace, timeout=QUICK)
    report(record_property, f"a worker started while SQLite was locked: {settlement.summary()}")

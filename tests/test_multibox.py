"""Beyond one box, with every part real: receivers and worker pools as processes in working
directories of their own (as on separate machines), sharing PostgreSQL and Redis.

- Two boxes behind a "load balancer" (the Sender spreads first tries over both receivers and sends
  each Gu1 retry to the other one); one box's receiver and the other's worker pool killed with -9
  mid-burst: every event answered 2xx, stored once and finished, every upsert applied once.
- PostgreSQL itself stopped (as a crash: `pg_ctl -m immediate`) and started again mid-burst, on a
  private server this test starts with initdb/pg_ctl: answered 503 while it is down, nothing accepted
  lost, everything finished once it is back.

Each ends in tests/support/burst.py's `settle`, as the SQLite fault suite does; its lines are in the
"fault suite" section of the run's summary. The fault suite's Salesforce outage and Redis restart
run on PostgreSQL too (tests/test_faults.py, marked `storage`).
"""

from __future__ import annotations

import time

import pytest

from tests.support.burst import RETRY, Sender, burst, report, settle
from tests.support.helpers import free_port, wait_until
from tests.support.postgres import PrivateServer
from tests.support.stack import Stack

LIMIT = 240
pytestmark = [pytest.mark.real_redis, pytest.mark.timeout(LIMIT)]
# On this run's PostgreSQL database (skipped, saying why, without one); the test of a stopped server
# starts its own.
ON_POSTGRES = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)


def boxes(tmp_path, redis_url, org, workspace, storage_url, count=2, **options) -> list[Stack]:  # noqa: ANN001
    """`count` boxes: each its config, logs and working directory, all on one database and one Redis."""
    made = []
    for name in "abcdefgh"[:count]:
        directory = tmp_path / f"box-{name}"
        directory.mkdir()
        made.append(Stack(directory, redis_url, org, workspace, storage_url=storage_url, cwd=directory, **options))
    return made


@pytest.fixture
def fleet():
    """Stops every box a test built, whatever happened."""
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        stack.stop()


@ON_POSTGRES
def test_two_boxes_share_postgres_and_redis_through_kills(
    tmp_path, redis_url, org, workspace, storage_location, fleet, record_property
):
    a, b = boxes(tmp_path, redis_url, org, workspace, storage_location, timeout="1s", retry=RETRY)
    fleet += [a, b]
    for box in (a, b):
        box.start_receiver()
    a.start_worker(processes=2)
    pool_b = b.start_worker(processes=2)
    # Every call takes a moment, so that the kill of a pool lands in the middle of some.
    org.stall(r"/sobjects/", 0.2, during=3600)
    sender = Sender(a, ports=[a.port, b.port])
    events = burst(120)
    sender.start(events, pace=0.05)

    wait_until(lambda: len(sender.accepted()) >= 30, what="a third of the burst")
    receiver_a = a.processes[0]
    a.kill(receiver_a)  # its gunicorn and every worker of it: Gu1's retries go to box b
    wait_until(lambda: len(org.landed) >= 40, what="upserts from both pools")
    b.kill(pool_b)  # mid-call: the attempts it held are taken over when their leases run out
    sender.join(timeout=120)

    settlement = settle(a, sender, org, workspace, kills=1, timeout=LIMIT - 60)
    moved = [d for d in sender.deliveries if len(d.answers) > 1 and d.answers[0][0] is None]
    report(
        record_property,
        f"two boxes, receiver a and pool b killed: {len(moved)} delivery(ies) retried to the other receiver; "
        f"{settlement.summary()}",
    )
    assert len(sender.accepted()) == len(events)  # Gu1's retries found the other receiver: none given up
    assert settlement.events == len(events)
    assert moved, "the kill of receiver a met no delivery"
    stored = a.store.database.one("SELECT COUNT(*), COUNT(DISTINCT dedupe_key) FROM events")
    assert stored == (len(events), len(events))  # each stored once, whichever receiver answered


def test_postgres_stopped_and_started_mid_burst(tmp_path, redis_url, org, workspace, fleet, record_property):
    problem = PrivateServer.problem()
    if problem is not None:
        pytest.skip(f"needs a private PostgreSQL: {problem}")
    server = PrivateServer(free_port())
    try:
        server.init()
        server.start()
        [box] = boxes(tmp_path, redis_url, org, workspace, server.url, count=1, timeout="5s", retry=RETRY)
        fleet.append(box)
        box.start_receiver()
        box.start_worker(processes=2)
        sender = Sender(box)
        events = burst(60)
        sender.start(events, pace=0.05)
        wait_until(lambda: len(sender.accepted()) >= 15, what="the first part of the burst")
        server.stop("immediate")
        wait_until(lambda: sender.refusals(), timeout=20, what="a refusal while PostgreSQL is down")
        time.sleep(1.0)
        server.start()
        sender.join(timeout=120)

        settlement = settle(box, sender, org, workspace, timeout=LIMIT - 60)
        refusals = sender.refusals()
        report(record_property, f"PostgreSQL stopped mid-burst: refused {dict(refusals)}; {settlement.summary()}")
        assert set(refusals) == {(503, "storage_unavailable")}, refusals
        assert len(sender.accepted()) == len(events)  # every refused try got in on a retry
        assert settlement.events == len(events)
    finally:
        server.cleanup()

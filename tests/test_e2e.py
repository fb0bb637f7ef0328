"""The whole chain with every part real: a signed POST to the receiver under gunicorn, Redis, an RQ
worker process, and the Salesforce and Slack emulators, which must see exactly the expected requests.
Then a worker killed in the middle of a call."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gu1sync.storage import ActionLog
from tests.support.helpers import wait_until
from tests.support.stack import SESSION

pytestmark = pytest.mark.real_redis

BLOCKED = {
    "event": "entity.status_changed",
    "timestamp": "2025-01-08T09:00:00.000Z",
    "payload": {
        "status": "blocked",
        "previousStatus": "active",
        "reason": "Sanctions list match",
        "entity": {"id": "550e8400-e29b-41d4-a716-446655440000", "externalId": "customer_abc123", "name": "John Doe"},
    },
}


def test_a_signed_post_reaches_salesforce_and_slack_exactly_once(make_stack, org, workspace):
    stack = make_stack()
    stack.start_receiver()
    stack.start("worker")
    status, body = stack.deliver(BLOCKED)
    assert status == 202, body
    wait_until(lambda: len(workspace.messages) == 1 and org.seen("PATCH"), what="both actions")

    [patch] = org.seen("PATCH")
    assert patch.path == "/services/data/v59.0/sobjects/Contact/Gu1_External_Id__c/customer_abc123"
    assert patch.headers["Authorization"] == f"Bearer {SESSION}"
    assert patch.json == {"Status__c": "blocked", "Gu1_Entity_Id__c": "550e8400-e29b-41d4-a716-446655440000"}
    [post] = workspace.seen("POST", r"chat\.postMessage")
    assert post.json["channel"] == "#compliance-alerts"
    assert post.json["text"] == "John Doe is blocked: Sanctions list match"
    assert org.find("Contact", "Gu1_External_Id__c", "customer_abc123")[0]["Status__c"] == "blocked"

    # Gu1 delivers the same event again (a retry after a timeout on its side): no second side effect.
    status, body = stack.deliver(BLOCKED)
    assert status == 200 and b'"duplicate":true' in body
    time.sleep(1.5)
    assert len(org.seen("PATCH")) == 1 and len(workspace.seen("POST", r"chat\.postMessage")) == 1
    assert org.seen("GET") == [] and len(org.requests) == 1  # nothing but the one upsert


def test_a_worker_killed_mid_call_does_not_lose_the_action(make_stack, org, workspace):
    stack = make_stack(timeout="1s")  # lease: (5 x 1 s + 5 s) + 1 s + 10 s
    stack.start_receiver()
    org.stall(r"/sobjects/Contact/", 0.8)
    doomed = stack.start("worker")
    status, body = stack.deliver(BLOCKED)
    assert status == 202
    wait_until(lambda: org.seen("PATCH"), what="the upsert to start")
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker (and its scheduler) die in the middle of the call
    doomed.wait(10)

    actions = ActionLog(stack.store)
    [upsert] = [
        a
        for a in stack.store.actions(stack.store.db.execute("SELECT id FROM events").fetchone()[0])
        if a["type"] == "salesforce.upsert"
    ]
    assert upsert["status"] == "running"

    stack.start("worker")  # a new worker; the sweep notices the lease ran out and the action goes again
    wait_until(lambda: actions.get(upsert["id"]).status == "done", timeout=90, what="the upsert to finish")
    assert [a["outcome"] for a in actions.attempts(upsert["id"])] == ["interrupted", "ok"]
    assert len(org.seen("PATCH")) == 2  # the documented window: the call was made, its outcome never recorded
    assert org.find("Contact", "Gu1_External_Id__c", "customer_abc123")[0]["Status__c"] == "blocked"
    wait_until(lambda: len(workspace.messages) == 1, what="the Slack post")
    time.sleep(1)
    assert len(workspace.messages) == 1  # the post was never in doubt, so it was made once

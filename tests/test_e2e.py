"""The whole chain with every part real: a signed POST to the receiver under gunicorn, Redis, an RQ
worker process, and the Salesforce and Slack emulators, which must see exactly the expected requests.
Then a worker killed in the middle of a call."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time

import pytest

from gu1sync.actionlog import ActionLog
from gu1sync.store import Store
from tests.conftest import ROOT, config_text, free_port
from tests.emulators.salesforce import SalesforceEmulator
from tests.emulators.slack import SlackEmulator
from tests.helpers import SECRETS, dumps, gu1_headers, wait_until

pytestmark = pytest.mark.real_redis

SESSION = "00D000000000001!e2e-session"

RULES = """
connectors:
  salesforce:
    auth: {{method: session, instance_url: "{sf_url}", session_id: "${{SF_SESSION}}"}}
    timeout: {timeout}
  slack:
    token: "${{SLACK_TOKEN}}"
    base_url: "{slack_url}"
rules:
  - name: status-to-salesforce
    on: entity.status_changed
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields: {{Status__c: "{{{{ payload.status }}}}", Gu1_Entity_Id__c: "{{{{ entity.id }}}}"}}
  - name: alert-blocked
    on: entity.status_changed
    when: {{status_changes: {{to: blocked}}}}
    actions:
      - slack.post:
          channel: "#compliance-alerts"
          text: "{{{{ entity.name | slack }}}} is blocked: {{{{ payload.reason }}}}"
"""

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


class Stack:
    """The receiver and workers as processes, with the emulators in this one."""

    def __init__(self, tmp_path, redis_url: str, org: SalesforceEmulator, workspace: SlackEmulator, timeout: str):
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            config_text(redis_url) + RULES.format(sf_url=org.url, slack_url=workspace.api_url, timeout=timeout)
        )
        org.sessions.add(SESSION)
        self.env = {
            **os.environ,
            **SECRETS,
            "SF_SESSION": SESSION,
            "SLACK_TOKEN": workspace.token,
            "REQUESTS_CA_BUNDLE": org.ca_path,  # the workers trust the emulator's throwaway CA
        }
        self.port = free_port()
        self.store = Store(str(tmp_path / "events.db"))
        self.processes: list[subprocess.Popen] = []
        self.logs = tmp_path / "logs.txt"

    def start(self, *command: str) -> subprocess.Popen:
        log = open(self.logs, "a")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen(
            [sys.executable, "app.py", "--config", str(self.config), *command],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_receiver(self) -> None:
        self.start("serve", "--bind", f"127.0.0.1:{self.port}", "--workers", "1")
        wait_until(lambda: self.request("GET", "/healthz")[0] == 200, what="the receiver")

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return None, b""

    def deliver(self, document: dict) -> tuple[int, bytes]:
        body = dumps(document)
        return self.request("POST", "/webhooks/gu1-prod", body, gu1_headers(body))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.wait(30)


@pytest.fixture
def make_stack(tmp_path, redis_url, org, workspace):
    stacks = []

    def build(timeout: str = "5s") -> Stack:
        stack = Stack(tmp_path, redis_url, org, workspace, timeout)
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        stack.stop()


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
    wait_until(lambda: actions.get(upsert["id"])["status"] == "done", timeout=90, what="the upsert to finish")
    assert [a["outcome"] for a in actions.attempts(upsert["id"])] == ["interrupted", "ok"]
    assert len(org.seen("PATCH")) == 2  # the documented window: the call was made, its outcome never recorded
    assert org.find("Contact", "Gu1_External_Id__c", "customer_abc123")[0]["Status__c"] == "blocked"
    wait_until(lambda: len(workspace.messages) == 1, what="the Slack post")
    time.sleep(1)
    assert len(workspace.messages) == 1  # the post was never in doubt, so it was made once

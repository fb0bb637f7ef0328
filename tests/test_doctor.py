"""`gu1-sync doctor` against the connector running as processes and the emulators: green when every
part works, and red naming the part when each one is broken in turn."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.emulators.salesforce import malformed
from tests.support.helpers import ROOT, dumps, gu1_headers, wait_until
from tests.support.stack import SESSION

pytestmark = pytest.mark.real_redis

OPS = """
ops:
  slack: {token: "${SLACK_TOKEN}", channel: "#gu1-sync-ops", base_url: "%s"}
"""

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
"""


def doctor(stack) -> tuple[int, dict[str, tuple[str, str]]]:
    result = subprocess.run(
        [sys.executable, "app.py", "--config", str(stack.config), "doctor", "--url", f"http://127.0.0.1:{stack.port}"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = {}
    for line in result.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("ok", "warn", "FAIL"):
            part = rest.strip()[:12].strip()
            lines[part] = (verdict, rest.strip()[12:].strip())
    return result.returncode, lines


def failing(lines: dict) -> dict[str, str]:
    return {part: detail for part, (verdict, detail) in lines.items() if verdict == "FAIL"}


def test_doctor_is_green_when_everything_works_and_names_each_broken_part(make_stack, own_redis, org, workspace):
    stack = make_stack(redis_url=own_redis.url, extra=OPS % workspace.api_url, timeout="2s")
    stack.start_receiver()
    stack.start_worker(ready=True)
    status, lines = doctor(stack)
    assert status == 0, lines
    assert set(lines) >= {"config", "secrets", "database", "redis", "workers", "queue", "salesforce", "slack"}
    assert set(lines) >= {"ops", "receiver", "dead letters", "backlog"}
    assert lines["salesforce"][1].startswith("signed in (session)") and "API requests" in lines["salesforce"][1]
    assert lines["slack"][1] == "signed in as gu1-sync in Acme"
    assert "#gu1-sync-ops is there" in lines["ops"][1]
    assert "SF_SESSION" in lines["secrets"][1] and "SLACK_TOKEN" in lines["secrets"][1]

    org.expire_sessions()
    assert failing(doctor(stack)[1]) == {"salesforce": "401 INVALID_SESSION_ID: Session expired or invalid"}
    org.sessions.add(SESSION)

    workspace.archived.add("gu1-sync-ops")
    assert set(failing(doctor(stack)[1])) == {"ops"}
    workspace.archived.clear()

    workspace.revoke()
    assert set(failing(doctor(stack)[1])) == {"slack", "ops"}  # the ops channel uses the same token here
    workspace.restore()

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(stack.db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    locked = doctor(stack)[1]
    assert "database" in failing(locked) and locked["redis"][0] == "ok"  # the part that failed, not the next one
    holder.communicate("go\n", timeout=30)

    org.fail(r"/sobjects/Contact/", 400, malformed("bad value", "INVALID_FIELD"), times=1)
    body = dumps(
        {"event": "entity.status_changed", "timestamp": "2025-01-01T00:00:00Z",
         "payload": {"status": "active", "entity": {"id": "e-1", "externalId": "customer_1", "name": "A"}}}
    )  # fmt: skip
    assert stack.request("POST", "/webhooks/gu1-prod", body, gu1_headers(body))[0] == 202
    wait_until(lambda: "dead letters" in failing(doctor(stack)[1]), timeout=30, what="the dead letter")
    assert failing(doctor(stack)[1])["dead letters"].startswith("1: `gu1-sync failed` says why")

    for worker in stack.workers:
        worker.terminate()
        worker.wait(30)
    wait_until(lambda: "workers" in failing(doctor(stack)[1]), timeout=30, what="the workers to be gone")

    own_redis.stop()
    broken = failing(doctor(stack)[1])
    assert "redis" in broken
    assert "receiver" not in broken  # it still takes webhooks (they wait in the database): it stays ready
    own_redis.start()

    stack.stop()
    assert "receiver" in failing(doctor(stack)[1])

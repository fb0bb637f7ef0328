"""The delivery tests' world, shared by every test that runs jobs in its own process: a config whose
connectors point at the emulators (the `setup` fixture builds it, with its app and worker Runtime),
a status-change event, posting it, and draining the queue with the real RQ worker and scheduler."""

from __future__ import annotations

import random
import time

import pytest
from rq import Queue
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from app import create_app
from connectors import Connectors
from connectors.salesforce import SalesforceConnector
from gu1sync.jobs import use_runtime
from gu1sync.runtime import Runtime
from gu1sync.worker import Gu1Worker
from tests.support.helpers import SECRETS, dumps, gu1_headers

ENV = {**SECRETS, "SF_SESSION": "00D000000000001!test-session", "SLACK_TOKEN": "xoxb-test-token"}

# connectors.salesforce.auth: a session (the tests' default), `{sf_url}` being the emulator's.
SESSION_AUTH = '{{method: session, instance_url: "{sf_url}", session_id: "${{SF_SESSION}}"}}'
CONNECTORS = """
connectors:
  salesforce:
    auth: {auth}
    timeout: 2s
{salesforce}  slack:
    token: "${{SLACK_TOKEN}}"
    base_url: "{slack_url}"
    timeout: 2s
{slack}retry: {{max_attempts: 3, backoff: 50ms, max_backoff: 100ms}}
"""
RULES = """
rules:
  - name: status-to-salesforce
    on: entity.status_changed
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields:
            Status__c: "{{{{ payload.status }}}}"
            Status_Reason__c: "{{{{ payload.reason }}}}"
  - name: alert-blocked
    on: entity.status_changed
    when: {{status_changes: {{to: [blocked, suspended]}}}}
    actions:
      - slack.post: {{channel: "{channel}", layout: compliance-alert}}
  - name: kyc-to-salesforce
    on: kyc.validation_approved
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields: {{KYC_Status__c: "{{{{ payload.status }}}}", Status__c: "from-kyc"}}
"""


@pytest.fixture
def setup(make_config, org, workspace, redis_conn, tmp_path):
    """Build (config, app, ctx) for a channel; the worker context uses the emulators' TLS session."""

    def build(
        channel: str = "#compliance-alerts",
        extra: str = "",
        environ: dict | None = None,
        salesforce: str = "",
        slack: str = "    pace: {posts: 0}",
        auth: str = SESSION_AUTH,
    ):
        """`salesforce`, `slack`: more lines of connectors.salesforce or .slack (indented by four), such as
        `    batch: {max: 3}`. Slack's pacing is off unless a test gives its own: the tests here post
        several messages to one channel at once, and are about something else."""
        salesforce, slack = (part + "\n" if part and not part.endswith("\n") else part for part in (salesforce, slack))
        text = (CONNECTORS + RULES).format(
            auth=auth.format(sf_url=org.url),
            sf_url=org.url,
            slack_url=workspace.api_url,
            channel=channel,
            salesforce=salesforce,
            slack=slack,
        ) + extra
        org.sessions.add(ENV["SF_SESSION"])
        config = make_config(text, environ={**ENV, **(environ or {})})
        app = create_app(config)
        connectors = Connectors({"salesforce": lambda s: SalesforceConnector(s, session=org.client_session())})
        ctx = Runtime.for_service(config, role="worker", connectors=connectors)
        ctx.rng = random.Random(7)
        use_runtime(ctx)
        return config, app, ctx

    yield build
    use_runtime(None)


def status_changed(external_id: str, status: str, previous: str, at: str, reason: str = "compliance review") -> bytes:
    return dumps(
        {
            "event": "entity.status_changed",
            "timestamp": at,
            "payload": {
                "status": status,
                "previousStatus": previous,
                "reason": reason,
                "entity": {
                    "id": f"id-{external_id}",
                    "externalId": external_id,
                    "name": "Zoë <!channel> Doe",
                    "type": "person",
                    "status": status,
                },
            },
        }
    )


def post(app, body: bytes) -> dict:
    response = app.test_client().post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body))
    assert response.status_code in (200, 202), response.json
    return response.json


def drain(redis_conn, timeout: float = 20.0, logging_level: str = "WARNING") -> None:
    """Run queued jobs in this process (the real RQ worker), and scheduled ones as they fall due, until
    nothing is left."""
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    scheduled = ScheduledJobRegistry(queue=queue)
    scheduler = RQScheduler([queue], connection=redis_conn, serializer=JSONSerializer)
    scheduler.acquire_locks()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            Gu1Worker([queue], connection=redis_conn, serializer=JSONSerializer).work(
                burst=True, with_scheduler=False, logging_level=logging_level
            )
            if queue.count == 0 and scheduled.count == 0:
                return
            time.sleep(0.02)
            scheduler.enqueue_scheduled_jobs()
    finally:
        scheduler.release_locks()  # the next drain's scheduler must be able to take them
    raise AssertionError("jobs still pending")


def actions_of(ctx, event_id: str) -> dict[str, dict]:
    return {a["rule"]: a for a in ctx.store.actions(event_id)}


# -- the whole chain ---------------------------------------------------------------------------------

"""Actions delivered by RQ jobs run in this process (the real SimpleWorker and scheduler, real Redis),
to the Salesforce and Slack emulators: retries, dead letters, replay, ordering, idempotency."""

from __future__ import annotations

import json
import random
import time

import pytest
from click.testing import CliRunner
from rq import Queue
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from app import create_app
from connectors import Connectors
from connectors.salesforce import SalesforceConnector
from gu1sync.cli import cli
from gu1sync.delivery import backoff_delay, run_action
from gu1sync.worker import Gu1Worker, WorkerContext, process_event, use_context
from rules.model import RetrySettings
from tests.emulators.salesforce import LOCKED
from tests.helpers import SECRETS, dumps, gu1_headers

pytestmark = pytest.mark.real_redis

ENV = {**SECRETS, "SF_SESSION": "00D000000000001!test-session", "SLACK_TOKEN": "xoxb-test-token"}

CONNECTORS = """
connectors:
  salesforce:
    auth: {{method: session, instance_url: "{sf_url}", session_id: "${{SF_SESSION}}"}}
    timeout: 2s
  slack:
    token: "${{SLACK_TOKEN}}"
    base_url: "{slack_url}"
    timeout: 2s
retry: {{max_attempts: 3, backoff: 50ms, max_backoff: 100ms}}
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

    def build(channel: str = "#compliance-alerts", extra: str = "", **overrides):
        text = (CONNECTORS + RULES).format(sf_url=org.url, slack_url=workspace.api_url, channel=channel) + extra
        org.sessions.add(ENV["SF_SESSION"])
        config = make_config(text, environ=ENV)
        app = create_app(config)
        connectors = Connectors({"salesforce": lambda s: SalesforceConnector(s, session=org.client_session())})
        ctx = WorkerContext.from_config(config, connectors)
        ctx.rng = random.Random(7)
        use_context(ctx)
        return config, app, ctx

    yield build
    use_context(None)


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


def drain(redis_conn, timeout: float = 20.0) -> None:
    """Run queued jobs in this process, and scheduled ones as they fall due, until nothing is left."""
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    scheduled = ScheduledJobRegistry(queue=queue)
    scheduler = RQScheduler([queue], connection=redis_conn, serializer=JSONSerializer)
    scheduler.acquire_locks()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        Gu1Worker([queue], connection=redis_conn, serializer=JSONSerializer).work(
            burst=True, with_scheduler=False, logging_level="WARNING"
        )
        if queue.count == 0 and scheduled.count == 0:
            return
        time.sleep(0.02)
        scheduler.enqueue_scheduled_jobs()
    raise AssertionError("jobs still pending")


def actions_of(ctx, event_id: str) -> dict[str, dict]:
    return {a["rule"]: a for a in ctx.store.actions(event_id)}


# -- the whole chain ---------------------------------------------------------------------------------


def test_a_blocked_entity_updates_salesforce_and_alerts_slack(setup, org, workspace, redis_conn):
    config, app, ctx = setup()
    event = post(app, status_changed("customer_1", "blocked", "active", "2025-01-08T09:00:00Z", "sanctions hit"))["id"]
    drain(redis_conn)
    assert {rule: a["status"] for rule, a in actions_of(ctx, event).items()} == {
        "status-to-salesforce": "done",
        "alert-blocked": "done",
    }
    [patch] = org.seen("PATCH")
    assert patch.path == "/services/data/v59.0/sobjects/Contact/Gu1_External_Id__c/customer_1"
    assert patch.json == {"Status__c": "blocked", "Status_Reason__c": "sanctions hit"}
    [message] = workspace.messages
    assert message["channel"] == "C0COMPLIANCE"
    assert message["text"].startswith(
        "entity.status_changed for Zoë &lt;!channel&gt; Doe (customer_1): active → blocked"
    )
    fields = [f["text"] for f in message["blocks"][1]["fields"]]
    assert fields == [
        "*Who*\nZoë &lt;!channel&gt; Doe",
        "*External id*\ncustomer_1",
        "*What changed*\nentity.status_changed",
        "*From → to*\nactive → blocked",
    ]
    assert message["blocks"][2]["text"]["text"] == "*Why*\nsanctions hit"
    assert message["metadata"]["event_payload"]["action_id"] == actions_of(ctx, event)["alert-blocked"]["id"]


def test_a_slack_outage_never_reruns_the_salesforce_upsert(setup, org, workspace, redis_conn):
    config, app, ctx = setup()
    workspace.fail(r"chat\.postMessage", 503, b"", times=2)
    event = post(app, status_changed("customer_2", "suspended", "active", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    actions = actions_of(ctx, event)
    assert (actions["alert-blocked"]["status"], actions["alert-blocked"]["attempts"]) == ("done", 3)
    assert (actions["status-to-salesforce"]["status"], actions["status-to-salesforce"]["attempts"]) == ("done", 1)
    assert len(org.seen("PATCH")) == 1
    attempts = ctx.actions.attempts(actions["alert-blocked"]["id"])
    assert [(a["outcome"], a["status_code"]) for a in attempts] == [("retry", 503), ("retry", 503), ("ok", 200)]
    assert all(a["retry_at"] for a in attempts[:2]) and attempts[2]["retry_at"] is None


def test_retries_wait_in_the_queue_and_honour_retry_after(setup, workspace, redis_conn):
    config, app, ctx = setup()
    workspace.fail(r"chat\.postMessage", 429, {"ok": False, "error": "ratelimited"}, headers={"Retry-After": "30"})
    event = post(app, status_changed("customer_3", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    Gu1Worker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    alert = actions_of(ctx, event)["alert-blocked"]
    assert alert["status"] == "retrying"
    registry = ScheduledJobRegistry(queue=queue)
    assert registry.get_job_ids() == [f"{alert['id']}-2"]
    wait = registry.get_scheduled_time(f"{alert['id']}-2").timestamp() - time.time()
    assert 27 <= wait <= 33  # Retry-After: 30, plus at most 10% jitter


def test_retries_that_run_out_become_dead_letters(setup, workspace, redis_conn):
    config, app, ctx = setup()
    workspace.fail(r"chat\.postMessage", 500, b"", times=10)
    event = post(app, status_changed("customer_4", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    alert = ctx.actions.get(actions_of(ctx, event)["alert-blocked"]["id"])
    assert (alert["status"], alert["attempts"]) == ("dead", 3)
    assert alert["error"] == "Slack 500 (gave up after 3 attempts)"
    assert alert["params"]["channel"] == "#compliance-alerts"  # the rendered request is kept
    assert [a["outcome"] for a in ctx.actions.attempts(alert["id"])] == ["retry", "retry", "failed"]
    assert [f["id"] for f in ctx.actions.failed()] == [alert["id"]]


def test_a_permanent_failure_is_dead_at_once_and_replay_after_the_fix_delivers_it(
    setup, make_config, workspace, redis_conn
):
    config, app, ctx = setup(channel="#compliance-alertz")
    event = post(app, status_changed("customer_5", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    alert = actions_of(ctx, event)["alert-blocked"]
    assert (alert["status"], alert["attempts"], alert["error"]) == ("dead", 1, "Slack says channel_not_found")
    assert workspace.messages == []

    fixed, _, _ = setup(channel="#compliance-alerts")  # the config file now has the right channel
    result = CliRunner().invoke(cli, ["--config", fixed.file, "replay", event], env=ENV)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{alert['id']} (alert-blocked #0 slack.post): queued again"
    drain(redis_conn)
    replayed = ctx.actions.get(alert["id"])
    assert (replayed["status"], replayed["attempts"], replayed["params"]["channel"]) == (
        "done",
        2,
        "#compliance-alerts",
    )
    assert [m["channel"] for m in workspace.messages] == ["C0COMPLIANCE"]
    assert replayed["config_version"] == fixed.digest
    again = CliRunner().invoke(cli, ["--config", fixed.file, "replay", "--action", alert["id"]], env=ENV)
    assert "not replayed, it is done" in again.output  # a completed action is not executed again


def test_replay_since_and_what_cannot_be_replayed(setup, workspace, redis_conn):
    config, app, ctx = setup(channel="#nowhere")
    first = post(app, status_changed("customer_6", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    second = post(app, status_changed("customer_7", "suspended", "active", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    result = CliRunner().invoke(cli, ["--config", config.file, "failed"], env=ENV)
    assert result.exit_code == 0 and result.output.count("Slack says channel_not_found") == 2
    # Replayed with the config still broken: they run again and die again, each one attempt more.
    result = CliRunner().invoke(cli, ["--config", config.file, "replay", "--since", "1h"], env=ENV)
    assert result.output.count("queued again") == 2
    drain(redis_conn)
    assert [ctx.actions.get(actions_of(ctx, e)["alert-blocked"]["id"])["attempts"] for e in (first, second)] == [2, 2]
    usage = CliRunner().invoke(cli, ["--config", config.file, "replay"], env=ENV)
    assert usage.exit_code == 2
    missing = CliRunner().invoke(cli, ["--config", config.file, "replay", "ev_nope"], env=ENV)
    assert missing.exit_code == 1 and "no such event" in missing.output


# -- ordering ---------------------------------------------------------------------------------------


def test_a_stale_event_never_overwrites_newer_state(setup, org, redis_conn):
    config, app, ctx = setup()
    blocked = post(app, status_changed("customer_8", "blocked", "active", "2025-01-08T09:00:02Z", "fraud"))["id"]
    drain(redis_conn)
    active = post(app, status_changed("customer_8", "active", "under_review", "2025-01-08T09:00:01Z", "kyc ok"))["id"]
    drain(redis_conn)
    [contact] = org.find("Contact", "Gu1_External_Id__c", "customer_8")
    assert contact["Status__c"] == "blocked"
    skipped = actions_of(ctx, active)["status-to-salesforce"]
    assert skipped["status"] == "skipped"
    assert skipped["error"] == (
        "stale: this event occurred at 2025-01-08T09:00:01.000Z; "
        "salesforce:Contact:Gu1_External_Id__c:customer_8 was already written by event "
        f"{blocked}, which occurred at 2025-01-08T09:00:02.000Z"
    )
    assert len(org.seen("PATCH")) == 1


def test_an_older_event_still_writes_the_fields_nobody_newer_wrote(setup, org, redis_conn):
    config, app, ctx = setup()
    post(app, status_changed("customer_9", "blocked", "active", "2025-01-15T12:00:00Z"))
    drain(redis_conn)
    approved = {
        "event": "kyc.validation_approved",
        "timestamp": "2025-01-15T11:00:00Z",
        "payload": {"id": "val-9", "status": "approved", "entity": {"externalId": "customer_9", "type": "person"}},
    }
    event = post(app, dumps(approved))["id"]
    drain(redis_conn)
    patches = org.seen("PATCH")
    assert patches[-1].json == {"KYC_Status__c": "approved"}  # Status__c was left out: blocked is newer
    assert org.find("Contact", "Gu1_External_Id__c", "customer_9")[0]["Status__c"] == "blocked"
    assert (
        "left out Status__c: already written by a newer event" in actions_of(ctx, event)["kyc-to-salesforce"]["result"]
    )


def test_writes_to_one_record_wait_for_each_other(setup, org, redis_conn):
    config, app, ctx = setup()
    event = post(app, status_changed("customer_10", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    process_event(event)  # the event's job: its actions are recorded and queued
    action = actions_of(ctx, event)["status-to-salesforce"]
    assert ctx.actions.lock("salesforce:Contact:Gu1_External_Id__c:customer_10", "someone-else", 60)
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    Gu1Worker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    deferred = ctx.actions.get(action["id"])
    assert (deferred["status"], deferred["attempts"]) == ("retrying", 0)  # deferred: no attempt used up
    assert org.seen("PATCH") == []
    ctx.actions.unlock("salesforce:Contact:Gu1_External_Id__c:customer_10", "someone-else")
    drain(redis_conn)
    assert ctx.actions.get(action["id"])["status"] == "done"


# -- idempotency, dry runs, shadow --------------------------------------------------------------------


def test_a_completed_action_is_not_executed_again(setup, org, redis_conn):
    config, app, ctx = setup()
    body = status_changed("customer_11", "active", "under_review", "2025-01-08T09:00:00Z")
    event = post(app, body)["id"]
    drain(redis_conn)
    action = actions_of(ctx, event)["status-to-salesforce"]
    assert run_action(action["id"]) == {"action": action["id"], "skipped": True}  # the job runs again
    assert post(app, body) == {"id": event, "duplicate": True}  # Gu1 delivers it again
    drain(redis_conn)
    assert len(org.seen("PATCH")) == 1
    assert ctx.actions.get(action["id"])["attempts"] == 1


def test_a_retryable_salesforce_error_is_retried(setup, org, redis_conn):
    config, app, ctx = setup()
    org.fail(r"/sobjects/Contact/", 400, LOCKED)
    event = post(app, status_changed("customer_12", "active", "under_review", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    action = actions_of(ctx, event)["status-to-salesforce"]
    assert (action["status"], action["attempts"]) == ("done", 2)
    first = ctx.actions.attempts(action["id"])[0]
    assert (first["outcome"], first["status_code"], first["error"]) == (
        "retry",
        400,
        "400 UNABLE_TO_LOCK_ROW: unable to obtain exclusive access to this record",
    )


def test_without_credentials_actions_run_dry(make_config, redis_conn, workspace):
    config = make_config(RULES.format(channel="#compliance-alerts"))
    app = create_app(config)
    ctx = WorkerContext.from_config(config)
    use_context(ctx)
    try:
        event = post(app, status_changed("customer_13", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
        drain(redis_conn)
    finally:
        use_context(None)
    statuses = {rule: (a["status"], a["result"]) for rule, a in actions_of(ctx, event).items()}
    assert statuses == {
        "status-to-salesforce": ("dry_run", "not sent: connectors.salesforce has no credentials (dry run)"),
        "alert-blocked": ("dry_run", "not sent: connectors.slack has no credentials (dry run)"),
    }
    assert json.loads(ctx.store.actions(event)[0]["params"])["fields"]["Status__c"] == "blocked"


def test_shadow_rules_never_call_the_connector(setup, workspace, redis_conn):
    shadow = (
        "\n  - name: shadow-alert\n    mode: shadow\n    on: entity.*\n    actions:\n"
        "      - slack.post: {channel: '#onboarding', text: trial}\n"
    )
    config, app, ctx = setup(extra=shadow)
    event = post(app, status_changed("customer_14", "active", "under_review", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    assert actions_of(ctx, event)["shadow-alert"]["status"] == "shadow"
    assert workspace.messages == []


# -- the operator's view ---------------------------------------------------------------------------


def test_show_events_and_stats(setup, workspace, redis_conn):
    config, app, ctx = setup()
    workspace.fail(r"chat\.postMessage", 503, b"")
    body = status_changed("customer_15", "blocked", "active", "2025-01-08T09:00:00Z")
    event = post(app, body)["id"]
    post(app, body)
    drain(redis_conn)
    shown = CliRunner().invoke(cli, ["--config", config.file, "show", event], env=ENV)
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert f"event     {event}" in text
    assert "verified by the secret in $GU1_SECRET" in text
    assert "delivered 2 time(s), 1 of them duplicate(s)" in text
    assert "matched  status-to-salesforce" in text and "no       kyc-to-salesforce: on: event" in text
    assert "alert-blocked #0 slack.post: done, 2 attempt(s)" in text
    assert "retry        503" in text and "ok           200" in text
    assert '"channel": "#compliance-alerts"' in text
    as_json = json.loads(CliRunner().invoke(cli, ["--config", config.file, "show", event, "--json"], env=ENV).output)
    assert {a["status"] for a in as_json["actions"]} == {"done"}
    listing = CliRunner().invoke(cli, ["--config", config.file, "events"], env=ENV).output
    assert event in listing and "done:2" in listing
    stats = ctx.actions.stats()
    slack = next(row for row in stats["connectors"] if row["name"] == "slack")
    assert (slack["total"], slack["succeeded"], slack["failed"]) == (1, 1, 0)
    assert slack["last_success"] is not None and slack["last_failure"] is not None
    assert "by connector" in CliRunner().invoke(cli, ["--config", config.file, "stats"], env=ENV).output
    assert CliRunner().invoke(cli, ["--config", config.file, "show", "ev_nope"], env=ENV).exit_code == 1


# -- back-off ---------------------------------------------------------------------------------------


def test_backoff_is_exponential_jittered_bounded_and_honours_retry_after():
    policy = RetrySettings(max_attempts=10, backoff=10, max_backoff=300)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 160), (6, 300), (9, 300)]:
        delays = [backoff_delay(policy, attempt, None, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert len({round(d, 3) for d in delays}) > 100  # jitter spreads retries out
    assert all(60 <= backoff_delay(policy, 1, 60, rng) <= 66 for _ in range(100))

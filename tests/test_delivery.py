"""Actions delivered by RQ jobs run in this process (the real SimpleWorker and scheduler, real Redis),
to the Salesforce and Slack emulators: retries, dead letters, replay, ordering, idempotency.

Long because these guarantees share one world (tests/support/delivery.py) and are read together.
"""

from __future__ import annotations

import getpass
import json
import os
import random
import socket
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from rq import Queue
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from app import create_app
from connectors.salesforce import target_of
from gu1sync.cli import cli
from gu1sync.core.timeutil import parse_iso
from gu1sync.delivery import backoff_delay
from gu1sync.jobs import process_event, run_action, use_runtime
from gu1sync.runtime import Runtime
from gu1sync.storage.console import ConsoleStore
from gu1sync.worker import Gu1Worker
from rules.model import RetrySettings
from tests.support.delivery import ENV, RULES, actions_of, drain, post, status_changed
from tests.support.emulators.salesforce import LOCKED
from tests.support.helpers import dumps

pytestmark = [pytest.mark.real_redis, pytest.mark.storage]


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
    [failed] = ctx.actions.attempts(alert["id"])
    wait = (parse_iso(failed["retry_at"]) - parse_iso(failed["finished_at"])).total_seconds()
    assert 30 <= wait <= 33  # Retry-After: 30, plus at most 10% jitter
    scheduled = registry.get_scheduled_time(f"{alert['id']}-2")  # and its job is due then (to the second)
    assert abs((scheduled - parse_iso(failed["retry_at"])).total_seconds()) < 1


def test_retries_that_run_out_become_dead_letters(setup, workspace, redis_conn):
    config, app, ctx = setup()
    workspace.fail(r"chat\.postMessage", 500, b"", times=10)
    event = post(app, status_changed("customer_4", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    alert = ctx.actions.get(actions_of(ctx, event)["alert-blocked"]["id"])
    assert (alert.status, alert.attempts) == ("dead", 3)
    assert alert.error == "Slack 500 (gave up after 3 attempts)"
    assert alert.params["channel"] == "#compliance-alerts"  # the rendered request is kept
    assert [a["outcome"] for a in ctx.actions.attempts(alert.id)] == ["retry", "retry", "failed"]
    assert [f["id"] for f in ctx.actions.failed()] == [alert.id]


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
    assert (replayed.status, replayed.attempts, replayed.params["channel"]) == (
        "done",
        2,
        "#compliance-alerts",
    )
    assert [m["channel"] for m in workspace.messages] == ["C0COMPLIANCE"]
    assert replayed.config_version == fixed.digest
    again = CliRunner().invoke(cli, ["--config", fixed.file, "replay", "--action", alert["id"]], env=ENV)
    assert "not replayed, it is done" in again.output  # a completed action is not executed again
    # Who sent it again from a shell is in the audit log (the console's Audit page), like a console replay;
    # the refused second replay sent nothing and is not.
    [entry] = ConsoleStore(ctx.store).audit_log()
    assert (entry["user"], entry["action"], entry["target"]) == (
        f"shell:{os.environ.get('SUDO_USER') or getpass.getuser()}",
        "replay",
        f"event: {event}",
    )
    assert entry["detail"]["actions"] == [alert["id"]] and entry["address"] == socket.gethostname()


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
    assert [ctx.actions.get(actions_of(ctx, e)["alert-blocked"]["id"]).attempts for e in (first, second)] == [2, 2]
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
        "salesforce:contact:gu1_external_id__c:customer_8 was already written by event "
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


def test_an_action_type_that_writes_a_whole_record_is_ordered_as_a_whole(setup, workspace, redis_conn, monkeypatch):
    """A connector may name the record an action writes without writing `fields` (a message that
    replaces the one before it, say): an older event's write after a newer one's is skipped whole."""
    from dataclasses import replace

    from connectors import REGISTRY

    post_type = REGISTRY.action("slack.post")
    whole = replace(post_type, target=lambda params: f"slack:channel:{params['channel']}")
    monkeypatch.setitem(REGISTRY.actions, "slack.post", whole)
    config, app, ctx = setup()
    newer = post(app, status_changed("customer_w1", "blocked", "active", "2025-01-08T09:00:02Z"))["id"]
    drain(redis_conn)
    older = post(app, status_changed("customer_w2", "suspended", "active", "2025-01-08T09:00:01Z"))["id"]
    drain(redis_conn)
    assert actions_of(ctx, newer)["alert-blocked"]["status"] == "done"
    skipped = actions_of(ctx, older)["alert-blocked"]
    assert skipped["status"] == "skipped"
    assert f"slack:channel:#compliance-alerts was already written by event {newer}" in skipped["error"]
    assert len(workspace.messages) == 1


def test_writes_to_one_record_wait_for_each_other(setup, org, redis_conn):
    config, app, ctx = setup()
    target = target_of(
        "salesforce.upsert",
        {"object": "Contact", "external_id_field": "Gu1_External_Id__c", "external_id": "customer_10", "fields": {}},
    )
    assert ctx.actions.lock(target, "someone-else", 60)  # another attempt is writing the record
    event = post(app, status_changed("customer_10", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    process_event(event)  # the event's job makes the first attempts of its actions
    action = actions_of(ctx, event)["status-to-salesforce"]
    deferred = ctx.actions.get(action["id"])
    assert (deferred.status, deferred.attempts) == ("retrying", 0)  # deferred: no attempt used up
    assert org.seen("PATCH") == []
    assert actions_of(ctx, event)["alert-blocked"]["status"] == "done"  # the post did not wait for it
    ctx.actions.unlock(target, "someone-else")
    drain(redis_conn)
    assert ctx.actions.get(action["id"]).status == "done"


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
    assert ctx.actions.get(action["id"]).attempts == 1


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
    ctx = Runtime.for_service(config, role="worker")
    use_runtime(ctx)
    try:
        event = post(app, status_changed("customer_13", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
        drain(redis_conn)
    finally:
        use_runtime(None)
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


# -- leases, attempts, failures of our own -------------------------------------------------------------


@pytest.fixture
def ledger(storage_location):
    """An action log on a clock the test moves, with one pending action in it."""
    from gu1sync.core.records import Event
    from gu1sync.storage import ActionLog, Store
    from tests.support.helpers import FakeClock

    clock = FakeClock()
    store = Store(storage_location, clock=clock)
    store.migrate()
    event = Event(
        id="ev_1",
        dedupe_key="k",
        source="s",
        kind="gu1",
        environment="production",
        type="t",
        occurred_at=None,
        received_at="2025-01-01T00:00:00.000Z",
        payload={},
        raw=b"{}",
    )
    store.record(event, {})
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO actions (id, event_id, rule, action_index, type, mode, params, status, attempts, created_at,"
            " updated_at) VALUES ('act_1', 'ev_1', 'r', 0, 'slack.post', 'live', '{}', 'pending', 0, '', '')"
        )
    return ActionLog(store), clock


def test_an_attempt_that_outlived_its_lease_changes_nothing(ledger):
    actions, clock = ledger
    first = actions.claim("act_1", lease=10)
    assert actions.lock("salesforce:contact:x:1", "act_1#1", 10)
    clock.advance(11)
    second = actions.claim("act_1", lease=10)  # the first attempt's worker looks dead
    assert second.attempts == 2 and second.interrupted
    assert actions.lock("salesforce:contact:x:1", "act_1#2", 10)  # a lock held by a dead attempt expires
    # The first attempt comes back: its outcome is logged, and ignored.
    assert actions.finish(first, outcome="failed", status="dead", duration_ms=1, error="late") is False
    actions.unlock("salesforce:contact:x:1", "act_1#1")  # cannot release the second attempt's lock
    assert not actions.lock("salesforce:contact:x:1", "someone-else", 10)
    assert actions.get("act_1").status == "running"
    assert actions.finish(second, outcome="ok", status="done", duration_ms=1) is True
    assert actions.get("act_1").status == "done"
    assert [(a["attempt"], a["outcome"]) for a in actions.attempts("act_1")] == [(1, "failed"), (2, "ok")]


def test_a_retry_is_not_claimed_before_its_time(ledger):
    actions, clock = ledger
    attempt = actions.claim("act_1", lease=10)
    actions.finish(
        attempt, outcome="retry", status="retrying", duration_ms=1, next_attempt_at=clock() + timedelta(seconds=60)
    )
    assert actions.claim("act_1", lease=10) is None
    clock.advance(59)  # a scheduled job may start a moment early
    assert actions.claim("act_1", lease=10).attempts == 2


def test_a_deferral_gives_its_attempt_number_back(ledger):
    actions, clock = ledger
    deferred = actions.claim("act_1", lease=10)
    actions.finish(
        deferred, outcome="deferred", status="retrying", duration_ms=0, count_attempt=False, next_attempt_at=clock()
    )
    attempt = actions.claim("act_1", lease=10)
    assert attempt.attempts == 1
    actions.finish(attempt, outcome="ok", status="done", duration_ms=1)
    assert [(a["attempt"], a["outcome"]) for a in actions.attempts("act_1")] == [(1, "ok")]


def test_a_replay_gets_a_fresh_set_of_retries(setup, workspace, redis_conn):
    config, app, ctx = setup()
    workspace.fail(r"chat\.postMessage", 500, b"", times=4)  # 3 attempts die; the replay's first fails too
    event = post(app, status_changed("customer_20", "blocked", "active", "2025-01-08T09:00:00Z"))["id"]
    drain(redis_conn)
    alert = actions_of(ctx, event)["alert-blocked"]
    assert (alert["status"], alert["attempts"]) == ("dead", 3)
    CliRunner().invoke(cli, ["--config", config.file, "replay", event], env=ENV)
    drain(redis_conn)
    replayed = ctx.actions.get(alert["id"])
    assert (replayed.status, replayed.attempts) == ("done", 5)  # attempt 4 failed, 5 went through


def test_a_null_external_id_is_a_permanent_failure_not_a_record_called_none(setup, org, redis_conn):
    config, app, ctx = setup()
    body = json.loads(status_changed("x", "active", "under_review", "2025-01-08T09:00:00Z"))
    body["payload"]["entity"]["externalId"] = None
    event = post(app, dumps(body))["id"]
    drain(redis_conn)
    action = actions_of(ctx, event)["status-to-salesforce"]
    assert (action["status"], action["error"]) == (
        "dead",
        "external_id is empty for this event (the value its template reads is null or blank)",
    )
    assert org.seen("PATCH") == []


def test_a_failure_while_processing_an_event_gives_it_back_then_stops(setup, redis_conn, monkeypatch):
    import gu1sync.jobs as jobs
    from gu1sync.storage import EVENT_ATTEMPTS

    config, app, ctx = setup()
    event = post(app, status_changed("customer_21", "active", "under_review", "2025-01-08T09:00:00Z"))["id"]

    def broken(rules, event):  # stands for a bug in evaluation, which cannot be caused from outside
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "evaluate", broken)
    for attempt in range(1, EVENT_ATTEMPTS + 1):
        with pytest.raises(RuntimeError):
            process_event(event)
        expected = "failed" if attempt == EVENT_ATTEMPTS else "received"
        assert ctx.store.event(event).status == expected
    assert ctx.store.event(event).error == "RuntimeError: boom"
    monkeypatch.undo()
    result = CliRunner().invoke(cli, ["--config", config.file, "replay", event], env=ENV)
    assert f"{event}: event will be processed again (its job is queued)" in result.output
    drain(redis_conn)
    assert ctx.store.event(event).status == "done"


def test_the_sweep_requeues_an_event_whose_job_was_turned_away(setup, redis_conn):
    from gu1sync.storage import STALE_CLAIM

    config, app, ctx = setup()
    event = post(app, status_changed("customer_22", "active", "under_review", "2025-01-08T09:00:00Z"))["id"]
    ctx.store.claim(event)  # a worker claims it and dies
    drain(redis_conn)  # the event's job runs, finds it claimed, and finishes having done nothing
    assert ctx.store.event(event).status == "processing"
    with ctx.store.transaction() as conn:  # the claim goes stale
        conn.execute(
            "UPDATE events SET started_at = ? WHERE id = ?",
            (
                (datetime.now(UTC) - timedelta(seconds=STALE_CLAIM + 1))
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                event,
            ),
        )
    assert ctx.queue.sweep(grace=0) == [event]
    drain(redis_conn)
    assert ctx.store.event(event).status == "done"


def test_sweeps_go_through_every_page(ledger):
    actions, clock = ledger
    with actions.store.transaction() as conn:
        for n in range(2, 8):
            conn.execute(
                "INSERT INTO actions (id, event_id, rule, action_index, type, mode, params, status, attempts,"
                " created_at, updated_at) VALUES (?, 'ev_1', 'r', ?, 'slack.post', 'live', '{}', 'pending', 0, '', '')",
                (f"act_{n}", n),
            )
    clock.advance(60)
    pages = list(actions.due(grace=5, page=3))
    assert [len(page) for page in pages] == [3, 3, 1]
    assert sorted(row["id"] for page in pages for row in page) == [f"act_{n}" for n in range(1, 8)]

"""Operational alerts, each fired by a real condition against the emulators (real SQLite, Redis, RQ):
a Salesforce field refused (dead letters), a revoked Slack token and an expired Salesforce session
(credentials), forged signatures, events nobody processes, Redis gone, an API usage header near the
limit. Each outage is told exactly once, and once more when it ends; normal traffic tells nothing."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import gu1sync.alerts as alerts_module
from gu1sync.alerts import Alerter
from gu1sync.cli import cli
from gu1sync.runtime import Runtime
from gu1sync.storage.ops import OpsLog
from tests.support.delivery import ENV, drain, post, status_changed
from tests.support.emulators.salesforce import malformed
from tests.support.helpers import dumps, gu1_headers, wait_until

pytestmark = [pytest.mark.real_redis, pytest.mark.storage]

OPS = """
ops:
  slack: {{webhook_url: "${{OPS_WEBHOOK}}"}}
  check_every: 1s
  dead_letters: {{wait: 0s, interval: {interval}}}
  signatures: {{failures: 3, window: 2s}}
  backlog: {{age: 1s, redis_down: 1s}}
"""
PERSON = "Zoë Kowalczyk-Ångström"  # what no alert may ever carry


@pytest.fixture
def ops(setup, workspace, monkeypatch):
    """(config, app, ctx, alerter, messages()) with the ops channel on the emulator's incoming webhook."""
    monkeypatch.setattr(alerts_module, "PROBE_EVERY", 0.0)  # check refused credentials on every round

    def build(interval: str = "1h", extra: str = "", **more):  # more: setup's (auth=..., environ=...)
        environ = {"OPS_WEBHOOK": workspace.webhook_url, **more.pop("environ", {})}
        config, app, ctx = setup(extra=OPS.format(interval=interval) + extra, environ=environ, **more)
        return (
            config,
            app,
            ctx,
            Alerter(ctx),
            lambda: [m["text"] for m in workspace.messages if m["channel"] == "webhook"],
        )

    return build


def event(external_id: str, status: str = "blocked", at: str = "2025-01-08T09:00:00Z") -> bytes:
    document = json.loads(status_changed(external_id, status, "active", at, "sanctions list"))
    document["payload"]["entity"]["name"] = PERSON
    return dumps(document)


def test_normal_traffic_tells_nothing(ops, redis_conn):
    config, app, ctx, alerter, messages = ops()
    for n in range(3):
        post(app, event(f"customer_n{n}"))
    drain(redis_conn)
    assert alerter.tick() == [] and alerter.tick() == []
    assert messages() == []


def test_dead_letters_are_told_in_one_digest_per_interval_with_the_replay_command(ops, org, redis_conn):
    config, app, ctx, alerter, messages = ops(interval="2s")
    org.fail(r"/sobjects/Contact/", 400, malformed("Status__c: bad value", "INVALID_FIELD"), times=3)
    events = [post(app, event(f"customer_d{n}", "active"))["id"] for n in range(3)]
    drain(redis_conn)
    [digest] = alerter.tick()
    assert digest.kind == "dead_letters"
    [text] = messages()
    assert "3 actions failed for good" in text
    assert "• status-to-salesforce (salesforce.upsert): INVALID_FIELD, 3" in text
    first = min(a["updated_at"] for e in events for a in ctx.store.actions(e) if a["status"] == "dead")
    assert f"`gu1-sync replay --since {first}`" in text
    assert alerter.tick() == []  # told once
    org.fail(r"/sobjects/Contact/", 400, malformed("bad", "INVALID_FIELD"), times=1)
    post(app, event("customer_d9", "active"))
    drain(redis_conn)
    assert alerter.tick() == []  # within the interval: it waits for the next digest
    time.sleep(2.1)
    [later] = alerter.tick()
    assert "1 action failed for good" in later.text and "gu1-sync replay --action act_" in later.text
    assert len(messages()) == 2
    assert PERSON not in "".join(messages())


def _credentials(told: list) -> list:
    return [alert for alert in told if alert.kind == "credentials"]


@pytest.mark.parametrize("error", ["token_revoked", "invalid_auth"])
def test_a_revoked_slack_token_is_told_at_once_and_its_recovery_too(ops, workspace, redis_conn, error):
    config, app, ctx, alerter, messages = ops()
    workspace.revoke(error)
    post(app, event("customer_s1"))
    post(app, event("customer_s2"))
    drain(redis_conn)
    told = alerter.tick()
    [refused] = _credentials(told)
    assert (refused.key, refused.state) == ("slack", "firing")
    assert f"Slack refuses gu1-sync's credentials ({error})" in refused.text
    assert [a.kind for a in told] == ["credentials", "dead_letters"]  # the two posts died: one digest
    assert alerter.tick() == []  # still refused (its check says so): nothing more
    workspace.restore()
    [back] = alerter.tick()  # the read-only check (auth.test) works again
    assert (back.key, back.state) == ("slack", "resolved") and "gu1-sync replay --since" in back.text
    assert alerter.tick() == []
    assert len([text for text in messages() if "credentials" in text]) == 2


PASSWORD_AUTH = (
    '{{method: password, username: integration@acme.example, password: "${{SF_PASSWORD}}", '
    'security_token: "${{SF_TOKEN}}"}}'
)


def test_a_salesforce_login_refused_is_told_once_and_when_it_works_again(ops, org, redis_conn):
    """The integration user's password was changed in Salesforce and not here: every login is refused."""
    config, app, ctx, alerter, messages = ops(auth=PASSWORD_AUTH, environ={"SF_PASSWORD": "old", "SF_TOKEN": "tok"})
    post(app, event("customer_l2", "active"))
    drain(redis_conn)
    time.sleep(1.1)  # the alert fires a while after the first refusal
    [told] = _credentials(alerter.tick())
    assert (told.key, told.state) == ("salesforce", "firing") and "INVALID_LOGIN" in told.text
    assert alerter.tick() == []  # once per outage
    org.password = "old"  # someone set it back (or the org accepts it again)
    [back] = alerter.tick()
    assert (back.key, back.state) == ("salesforce", "resolved")
    assert len([text for text in messages() if "credentials" in text]) == 2


def test_an_expired_salesforce_session_is_told_once_and_its_renewal(ops, org, redis_conn):
    config, app, ctx, alerter, messages = ops()
    org.expire_sessions()  # session auth cannot log in again: every call is refused
    post(app, event("customer_e1", "active"))
    drain(redis_conn)
    time.sleep(1.1)  # the alert fires a while after the first refusal
    [told] = _credentials(alerter.tick())
    assert (told.key, told.state) == ("salesforce", "firing") and "INVALID_SESSION_ID" in told.text
    assert alerter.tick() == []
    org.sessions.add(ENV["SF_SESSION"])  # someone put a valid session in place
    [back] = alerter.tick()
    assert (back.key, back.state) == ("salesforce", "resolved")
    # Both name the same moment, the first refusal, so that the replay takes what failed before the alert.
    since = told.text.split("--since ")[1].split("`")[0]
    assert f"--since {since}`" in back.text and since == told.since
    assert len([text for text in messages() if "credentials" in text]) == 2


def test_a_source_refusing_many_signatures_asks_whether_the_secret_was_rotated(ops):
    config, app, ctx, alerter, messages = ops()
    client = app.test_client()
    body = dumps({"event": "entity.created", "timestamp": "2025-01-01T00:00:00Z", "payload": {}})
    for _ in range(2):
        client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body, secret="the-old-secret"))
    assert alerter.tick() == []  # two are below the threshold of three
    client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body, secret="the-old-secret"))
    [told] = alerter.tick()
    assert (told.kind, told.key, told.state) == ("signatures", "gu1-prod", "firing")
    assert "source gu1-prod refused 3 requests for their signature in 2 s* (signature_mismatch: 3)" in told.text
    assert "secret regenerated in Gu1 but not here" in told.text and "$GU1_SECRET" in told.text
    assert alerter.tick() == []
    time.sleep(3.1)  # a window without a refusal (counted by the second: up to a second more)
    [back] = alerter.tick()
    assert back.state == "resolved"
    assert len(messages()) == 2


def test_events_nobody_processes_are_a_backlog_until_the_workers_take_them(ops, redis_conn):
    config, app, ctx, alerter, messages = ops()
    post(app, event("customer_b1", "active"))
    assert alerter.tick() == []
    time.sleep(1.2)
    [told] = alerter.tick()
    assert (told.kind, told.state) == ("backlog", "firing") and "Are the workers running?" in told.text
    assert alerter.tick() == []
    drain(redis_conn)
    [back] = alerter.tick()
    assert back.state == "resolved"
    assert len(messages()) == 2


def test_an_event_that_failed_for_good_is_no_backlog(ops, redis_conn):
    config, app, ctx, alerter, messages = ops()
    event_id = post(app, event("customer_f9", "active"))["id"]
    with ctx.store.transaction() as conn:  # processing failed three times: it waits for a person, not the workers
        conn.execute("UPDATE events SET status = 'failed' WHERE id = ?", (event_id,))
    time.sleep(1.2)
    assert alerter.tick() == []
    assert OpsLog(ctx.store).failed_events() == 1
    scrape = app.test_client().get("/metrics").get_data(as_text=True)
    assert "gu1sync_events_failed 1.0" in scrape and "gu1sync_oldest_unfinished_event_age_seconds 0.0" in scrape


def test_a_retryable_401_does_not_say_the_credentials_work(ops):
    from connectors import ActionError
    from gu1sync.delivery import observe

    config, app, ctx, alerter, messages = ops()
    connector = ctx.connectors.get("salesforce.upsert", config.connectors)
    again = ActionError("session expired again", retryable=True, status_code=401, code="INVALID_SESSION_ID")
    assert observe("salesforce.upsert", connector, time.perf_counter(), again).credentials is None
    refused_field = ActionError("bad field", retryable=False, status_code=400, code="INVALID_FIELD")
    assert observe("salesforce.upsert", connector, time.perf_counter(), refused_field).credentials is True


def test_redis_out_of_reach_for_longer_than_the_threshold(ops, own_redis, make_config, workspace):
    config, app, ctx, alerter, messages = ops()
    runtime = Runtime.for_service(
        make_config(OPS.format(interval="1h"), environ={"OPS_WEBHOOK": workspace.webhook_url}, redis_url=own_redis.url),
        role="worker",
    )
    alerter = Alerter(runtime)
    assert alerter.tick() == []
    own_redis.stop()
    assert alerter.tick() == []  # down, but not for long yet
    time.sleep(1.2)
    [told] = alerter.tick()
    assert (told.kind, told.state) == ("redis", "firing") and "still accepted" in told.text
    assert alerter.tick() == []
    own_redis.start()
    [back] = alerter.tick()
    assert back.state == "resolved"
    assert len(messages()) == 2


def test_salesforce_api_usage_above_the_threshold(ops, org, redis_conn):
    config, app, ctx, alerter, messages = ops()
    org.api_used = 12_400  # of 15,000: the next call reports 12,401 (83%)
    post(app, event("customer_a1", "active"))
    drain(redis_conn)
    [told] = alerter.tick()
    assert (told.kind, told.state) == ("salesforce_api", "firing")
    assert "Salesforce API usage at 83% of the org's daily limit* (12,401 of 15,000" in told.text
    assert alerter.tick() == []
    org.api_used = 1_000  # a new day
    post(app, event("customer_a2", "active"))
    drain(redis_conn)
    [back] = alerter.tick()
    assert back.state == "resolved"
    assert len(messages()) == 2


def test_when_the_ops_channel_fails_the_alert_goes_to_the_log_at_error_and_to_metrics(
    ops, workspace, redis_conn, caplog
):
    config, app, ctx, alerter, messages = ops()
    workspace.webhook_removed = True  # the ops webhook itself is gone
    post(app, event("customer_f1", "active"))
    time.sleep(1.2)
    with caplog.at_level("ERROR", logger="gu1sync.alerts"):
        [told] = alerter.tick()
    assert any("ops alert not delivered" in r.getMessage() and told.title in r.getMessage() for r in caplog.records)
    scrape = app.test_client().get("/metrics").get_data(as_text=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }
    assert samples[("gu1sync_ops_alerts_total", (("delivery", "failed"), ("kind", "backlog")))] == 1


def test_alerts_the_ops_channel_missed_are_told_late_once_it_works_again(ops, workspace, redis_conn):
    config, app, ctx, alerter, messages = ops()
    workspace.webhook_removed = True  # the ops channel is out of reach for a while
    post(app, event("customer_g1", "active"))
    time.sleep(1.2)
    [missed] = alerter.tick()
    assert messages() == []
    assert alerter.tick() == []  # still out of reach: kept for later, not told twice, not lost
    workspace.webhook_removed = False
    told = alerter.tick()
    assert [alert.title for alert in told] == [missed.title]
    [text] = messages()
    assert missed.title in text and "told late: the ops channel could not be reached at" in text
    assert alerter.tick() == [] and len(messages()) == 1  # told once
    [row] = OpsLog(ctx.store).alerts()
    assert row["delivery"] == "late" and row["error"]  # why it was late stays with it
    scrape = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'gu1sync_ops_alerts_total{delivery="failed",kind="backlog"} 1.0' in scrape  # a counter stays up
    assert 'gu1sync_ops_alerts_total{delivery="late",kind="backlog"} 1.0' in scrape


def test_without_an_ops_channel_alerts_are_kept_and_logged_and_gu1_sync_alerts_shows_them(setup, redis_conn):
    config, app, ctx = setup(extra="ops:\n  backlog: {age: 1s}\n")
    post(app, event("customer_l1", "active"))
    time.sleep(1.2)
    [told] = Alerter(ctx).tick()
    result = CliRunner().invoke(cli, ["--config", config.file, "alerts"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "backlog" in result.output and "logged" in result.output and told.title in result.output
    as_json = CliRunner().invoke(cli, ["--config", config.file, "alerts", "--json"], env=ENV)
    [row] = json.loads(as_json.output)
    assert (row["kind"], row["state"], row["delivery"]) == ("backlog", "firing", "logged")
    banana = CliRunner().invoke(cli, ["--config", config.file, "alerts", "--since", "banana"], env=ENV)
    assert banana.exit_code == 2 and "--since" in banana.output and "'banana' is neither" in banana.output


def test_one_process_of_all_tells(ops, redis_conn):
    config, app, ctx, first, messages = ops()
    second = Alerter(ctx, holder="another-process")
    post(app, event("customer_o1", "active"))
    time.sleep(1.2)
    assert len(first.tick()) == 1
    assert second.tick() == []  # the lease is the first one's
    assert len(messages()) == 1


def test_the_receiver_tells_of_a_backlog_when_no_worker_runs(make_stack, workspace, redis_url):
    """A worker stopped with events waiting: the receiver's own processes tell the ops channel."""
    stack = make_stack(
        extra=OPS.format(interval="1h").replace("check_every: 1s", "check_every: 200ms"),
        env={"OPS_WEBHOOK": workspace.webhook_url},
    )
    stack.start_receiver()
    body = event("customer_r1", "active")
    status, _ = stack.request("POST", "/webhooks/gu1-prod", body, gu1_headers(body))
    assert status == 202
    wait_until(
        lambda: [m for m in workspace.messages if m["channel"] == "webhook" and "events wait" in m["text"]],
        timeout=20,
        what="the receiver's backlog alert",
    )


def test_alerts_go_to_a_channel_with_the_bot_token_too(setup, org, workspace, redis_conn, monkeypatch):
    """ops.slack with a bot token and a channel (not an incoming webhook): the digest is a chat.postMessage."""
    monkeypatch.setattr(alerts_module, "PROBE_EVERY", 0.0)
    channel = f'{{token: "${{SLACK_TOKEN}}", channel: "#compliance", base_url: "{workspace.api_url}"}}'
    by_token = OPS.replace('{{webhook_url: "${{OPS_WEBHOOK}}"}}', channel.replace("{", "{{").replace("}", "}}"))
    config, app, ctx = setup(extra=by_token.format(interval="1h"))
    org.fail(r"/sobjects/Contact/", 400, malformed("Status__c: bad value", "INVALID_FIELD"), times=2)
    for n in range(2):
        post(app, event(f"customer_t{n}", "active"))
    drain(redis_conn)
    [digest] = Alerter(ctx).tick()
    assert digest.kind == "dead_letters"
    [message] = [m for m in workspace.messages if m["channel"] == workspace.channel_id("#compliance")]
    assert "2 actions failed for good" in message["text"]
    assert PERSON not in message["text"]
    assert not [m for m in workspace.messages if m["channel"] == "webhook"]

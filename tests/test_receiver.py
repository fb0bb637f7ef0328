"""The receiver through Flask's test client, on a real SQLite file and the test Redis.

Long because every answer in README's table of the receiver has its test here.
"""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from gu1sync import samples
from gu1sync.core.status import EventStatus
from gu1sync.queue import redis_client
from tests.support.helpers import SECRETS, dumps, gu1_headers, kyc_headers, std_headers

pytestmark = pytest.mark.storage  # on SQLite and on PostgreSQL

INVALID, RECEIVED = EventStatus.INVALID, EventStatus.RECEIVED


def post(client, source: str, body: bytes, headers: dict[str, str]):
    return client.post(f"/webhooks/{source}", data=body, headers=headers)


def queued_ids(redis_conn) -> list[str]:
    return Queue("test", connection=redis_conn, serializer=JSONSerializer).job_ids


def dead_redis():
    """A client for a Redis that is not there, built like the receiver's own."""
    return redis_client("redis://127.0.0.1:1/0", connect_timeout=0.2, timeout=0.2)


def gu1_body(event: str = "kyc.validation_approved", **kwargs) -> bytes:
    return dumps(samples.sample(event, **kwargs))


# -- accepted, stored, queued ---------------------------------------------------------------------


def test_new_event_is_stored_and_queued(client, services, redis_conn):
    body = gu1_body(seed=1)
    response = post(client, "gu1-prod", body, gu1_headers(body, event="kyc.validation_approved"))
    assert response.status_code == 202
    assert response.json == {"id": response.json["id"], "duplicate": False}
    event = services.store.event(response.json["id"])
    assert event.raw == body
    assert (event.source, event.kind, event.environment) == ("gu1-prod", "gu1", "production")
    assert event.type == "kyc.validation_approved"
    assert event.secret == "GU1_SECRET"
    assert event.status == RECEIVED
    assert event.payload == json.loads(body)["payload"]
    assert event.subject == json.loads(body)["payload"]["id"]
    assert queued_ids(redis_conn) == [event.id]


def test_the_event_records_which_secret_verified_it(client, services):
    body = gu1_body(seed=2)
    response = post(client, "gu1-prod", body, gu1_headers(body, SECRETS["GU1_SECRET_NEXT"]))
    assert response.status_code == 202
    assert services.store.event(response.json["id"]).secret == "GU1_SECRET_NEXT"


def test_duplicate_is_answered_2xx_and_processed_nowhere(client, services, redis_conn):
    body = gu1_body(seed=3)
    first = post(client, "gu1-prod", body, gu1_headers(body))
    second = post(client, "gu1-prod", body, gu1_headers(body))
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json == {"id": first.json["id"], "duplicate": True}
    assert queued_ids(redis_conn) == [first.json["id"]]
    deliveries = services.store.deliveries(first.json["id"])
    assert [d["duplicate"] for d in deliveries] == [0, 1]


def test_a_retry_hours_later_is_still_a_duplicate(make_app, make_config, clock, redis_conn):
    config = make_config()
    body = gu1_body(seed=4)
    first = post(make_app(config).test_client(), "gu1-prod", body, gu1_headers(body))
    clock.advance(6 * 3600)
    restarted = make_app(config)  # a new process, the same SQLite file
    again = post(restarted.test_client(), "gu1-prod", body, gu1_headers(body))
    assert again.status_code == 200 and again.json == {"id": first.json["id"], "duplicate": True}
    assert len(queued_ids(redis_conn)) == 1


def test_many_distinct_events_from_one_webhook_configuration(client, redis_conn):
    """X-Webhook-ID names the webhook configuration: every event from it carries the same one."""
    ids = set()
    for n in range(60):
        event = samples.KNOWN_EVENTS[n % len(samples.KNOWN_EVENTS)]
        body = gu1_body(event, seed=100 + n)
        response = post(client, "gu1-prod", body, gu1_headers(body))
        assert response.status_code == 202, response.json
        ids.add(response.json["id"])
    assert len(ids) == 60
    assert sorted(queued_ids(redis_conn)) == sorted(ids)


def test_the_same_event_from_two_webhook_configurations_is_one_event(client):
    body = gu1_body(seed=5)
    first = post(client, "gu1-prod", body, {**gu1_headers(body), "X-Webhook-ID": "config-a"})
    second = post(client, "gu1-prod", body, {**gu1_headers(body), "X-Webhook-ID": "config-b"})
    assert second.json == {"id": first.json["id"], "duplicate": True}


@pytest.mark.parametrize("generation", samples.GENERATIONS)
def test_kyc_dedupe_uses_the_validation_id_of_either_generation(client, generation):
    envelope = samples.sample("kyc.validation_in_progress", generation=generation, seed=6)
    body = dumps(envelope)
    first = post(client, "gu1-prod", body, gu1_headers(body))
    # Re-serialised (other spacing, other key order): other bytes, the same event.
    reordered = json.dumps(dict(reversed(list(envelope.items()))), indent=2).encode()
    second = post(client, "gu1-prod", reordered, gu1_headers(reordered))
    assert first.status_code == 202
    assert second.json == {"id": first.json["id"], "duplicate": True}
    # The same validation moving on is a new event.
    moved = dumps({**envelope, "event": "kyc.validation_approved"})
    assert post(client, "gu1-prod", moved, gu1_headers(moved)).status_code == 202


def test_entity_events_differ_by_timestamp(client):
    envelope = samples.sample("entity.updated", seed=7)
    body = dumps(envelope)
    later = dumps({**envelope, "timestamp": "2031-01-01T00:00:00.000Z"})
    first = post(client, "gu1-prod", body, gu1_headers(body))
    second = post(client, "gu1-prod", later, gu1_headers(later))
    assert first.json["id"] != second.json["id"]
    assert second.json["duplicate"] is False


def test_rule_triggered_dedupes_on_the_evaluation_id(client):
    envelope = samples.sample("rule.triggered", seed=8)
    body = dumps(envelope)
    other = dumps({**envelope, "payload": {**envelope["payload"], "evaluationId": "eval_other"}})
    assert post(client, "gu1-prod", body, gu1_headers(body)).json["duplicate"] is False
    assert post(client, "gu1-prod", other, gu1_headers(other)).json["duplicate"] is False
    assert post(client, "gu1-prod", other, gu1_headers(other)).json["duplicate"] is True


def test_without_a_subject_the_raw_body_is_the_identity(client):
    body = dumps({"event": "transaction.flagged", "timestamp": "2025-01-01T00:00:00Z", "payload": {"amount": 5}})
    other = dumps({"event": "transaction.flagged", "timestamp": "2025-01-01T00:00:00Z", "payload": {"amount": 6}})
    assert post(client, "gu1-prod", body, gu1_headers(body)).json["duplicate"] is False
    assert post(client, "gu1-prod", body, gu1_headers(body)).json["duplicate"] is True
    assert post(client, "gu1-prod", other, gu1_headers(other)).json["duplicate"] is False


def test_sandbox_and_production_never_dedupe_each_other(client):
    body = gu1_body(seed=9)
    prod = post(client, "gu1-prod", body, gu1_headers(body))
    sandbox = post(client, "gu1-sandbox", body, gu1_headers(body, SECRETS["GU1_SANDBOX_SECRET"]))
    assert prod.status_code == sandbox.status_code == 202
    assert prod.json["id"] != sandbox.json["id"]


def test_kyc_webhooks_dedupe_on_the_event_id_even_when_resigned(client, clock):
    body = dumps({"id": "evt_abc123", "type": "kyc.session.completed", "created": 1736938800, "data": {"id": "s1"}})
    now = int(clock().timestamp())
    first = post(client, "kyc-ts", body, kyc_headers(body, now, signed="ts", event_id="evt_abc123"))
    clock.advance(60)
    second = post(client, "kyc-ts", body, kyc_headers(body, now + 60, signed="ts", event_id="evt_abc123"))
    assert first.status_code == 202
    assert second.json == {"id": first.json["id"], "duplicate": True}


def test_standard_dedupes_on_webhook_id(client, clock, services):
    body = dumps({"type": "invoice.paid", "timestamp": "2025-01-01T00:00:00Z", "data": {"id": "in_1"}})
    now = int(clock().timestamp())
    first = post(client, "std", body, std_headers(body, "msg_1", now))
    second = post(client, "std", body, std_headers(body, "msg_1", now))
    third = post(client, "std", body, std_headers(body, "msg_2", now))
    assert (first.status_code, second.json["duplicate"], third.json["duplicate"]) == (202, True, False)
    event = services.store.event(first.json["id"])
    assert (event.type, event.payload, event.occurred_at) == (
        "invoice.paid",
        {"id": "in_1"},
        "2025-01-01T00:00:00.000Z",
    )


def test_unknown_event_types_are_accepted(client, services):
    for event in samples.FUTURE_EVENTS:
        body = gu1_body(event, seed=10)
        response = post(client, "gu1-prod", body, gu1_headers(body))
        assert response.status_code == 202
        assert services.store.event(response.json["id"]).type == event


# -- rejections -----------------------------------------------------------------------------------


def test_wrong_signature_is_401_counted_and_logged_without_the_body(client, services, caplog, redis_conn):
    body = gu1_body(seed=11)
    name = json.loads(body)["payload"]["entity"]["name"]
    caplog.set_level(logging.INFO)
    response = post(client, "gu1-prod", body, gu1_headers(body, "not-the-secret"))
    assert response.status_code == 401
    assert response.json["error"] == "signature_mismatch"
    assert services.store.rejections() == [
        {
            "source": "gu1-prod",
            "reason": "signature_mismatch",
            "status": 401,
            "count": 1,
            "first_at": services.store.rejections()[0]["first_at"],
            "last_at": services.store.rejections()[0]["last_at"],
        }
    ]
    post(client, "gu1-prod", body, {})
    post(client, "gu1-prod", body, gu1_headers(body, "not-the-secret"))
    counts = {(r["reason"], r["count"]) for r in services.store.rejections()}
    assert counts == {("signature_mismatch", 2), ("missing_signature", 1)}
    assert "reason=signature_mismatch" in caplog.text
    assert name not in caplog.text and "taxId" not in caplog.text
    assert queued_ids(redis_conn) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json at all", "invalid_json"),
        (b'{"event": "entity.created", ', "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b"[" * 100_000, "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'"entity.created"', "not_an_object"),
        (b'{"timestamp": "2025-01-01T00:00:00Z", "payload": {}}', "missing_event_type"),
        (b'{"event": "", "payload": {}}', "missing_event_type"),
        (b'{"event": 42, "payload": {}}', "missing_event_type"),
    ],
)
def test_authentic_but_unreadable_is_400_and_kept(client, services, redis_conn, body, reason):
    response = post(client, "gu1-prod", body, gu1_headers(body))
    assert response.status_code == 400
    assert response.json["error"] == reason
    kept = services.store.event(response.json["id"])
    assert (kept.status, kept.error, kept.raw) == (INVALID, reason, body)
    assert queued_ids(redis_conn) == []


def test_event_header_must_agree_with_the_body(client, services):
    body = gu1_body("kyc.validation_approved", seed=12)
    response = post(client, "gu1-prod", body, gu1_headers(body, event="kyc.validation_rejected"))
    assert response.status_code == 400
    assert response.json["error"] == "event_header_mismatch"
    assert services.store.event(response.json["id"]).status == INVALID


def test_unknown_source_is_404_json(client, services):
    response = post(client, "nope", b"{}", {})
    assert response.status_code == 404
    assert response.json["error"] == "unknown_source"
    assert [(r["source"], r["reason"]) for r in services.store.rejections()] == [("?", "unknown_source")]


def test_other_http_errors_are_json(client):
    assert client.get("/webhooks/gu1-prod").status_code == 405
    assert client.get("/webhooks/gu1-prod").json["error"] == "method_not_allowed"
    assert client.get("/nowhere").json["error"] == "not_found"


def test_body_over_the_limit_is_413(client, services):
    body = b"x" * (1024 * 1024 + 1)
    response = post(client, "gu1-prod", body, gu1_headers(body))
    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large"
    assert response.headers["Connection"] == "close"
    assert [r["reason"] for r in services.store.rejections()] == ["payload_too_large"]


def test_a_body_of_exactly_the_limit_is_accepted(client):
    envelope = samples.sample("entity.created", seed=13)
    filler = 1024 * 1024 - len(dumps({**envelope, "padding": ""}))
    body = dumps({**envelope, "padding": "p" * filler})
    assert len(body) == 1024 * 1024
    assert post(client, "gu1-prod", body, gu1_headers(body)).status_code == 202


# -- durability ------------------------------------------------------------------------------------


@pytest.mark.sqlite  # reads the file itself
def test_sqlite_unwritable_is_503_and_nothing_is_half_stored(make_app, make_config, services):
    config = make_config(environ={})
    app = make_app(config)
    store = app.extensions["gu1sync"].store
    body = gu1_body(seed=14)
    blocker = sqlite3.connect(config.storage_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        response = post(app.test_client(), "gu1-prod", body, gu1_headers(body))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503
    assert response.json["error"] == "storage_unavailable"
    assert response.headers["Retry-After"] == "1"
    retried = post(app.test_client(), "gu1-prod", body, gu1_headers(body))
    assert retried.status_code == 202 and retried.json["duplicate"] is False
    assert len(store.deliveries(retried.json["id"])) == 1


def test_redis_down_the_event_is_still_accepted(make_app, services):
    app = make_app(connection=dead_redis())
    client = app.test_client()
    ids = []
    for seed in range(3):
        body = gu1_body(seed=20 + seed)
        response = post(client, "gu1-prod", body, gu1_headers(body))
        assert response.status_code == 202
        ids.append(response.json["id"])
    store = app.extensions["gu1sync"].store
    assert [store.event(i).status for i in ids] == [RECEIVED] * 3


# -- health ----------------------------------------------------------------------------------------


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_reports_each_check(client, make_app):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["ready"] is True
    assert set(ready.json["checks"]) == {"config", "database", "redis"}
    # Without Redis the receiver still takes webhooks (they wait in the database): a balancer routing on
    # /readyz must keep sending them, so Redis is reported and does not count.
    down = make_app(connection=dead_redis()).test_client()
    answer = down.get("/readyz")
    assert answer.status_code == 200
    assert answer.json["checks"]["redis"] == {"ok": False}
    assert answer.json["checks"]["database"] == {"ok": True}
    body = dumps({"event": "entity.created", "timestamp": "2025-01-08T09:00:00Z", "payload": {"entity": {"id": "e"}}})
    assert down.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).status_code == 202


def test_drain_takes_the_box_out_of_the_balancer_and_still_accepts_webhooks(client, app):
    from click.testing import CliRunner

    from gu1sync.cli import cli

    config = app.extensions["gu1sync"].config
    drained = CliRunner().invoke(cli, ["--config", config.file, "drain"], env=SECRETS)
    assert drained.exit_code == 0, drained.output
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json["checks"]["drain"]["ok"] is False
    assert client.get("/healthz").status_code == 200
    body = dumps({"event": "entity.created", "timestamp": "2025-01-08T09:00:00Z", "payload": {"entity": {"id": "d"}}})
    assert client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).status_code == 202
    undone = CliRunner().invoke(cli, ["--config", config.file, "drain", "--off"], env=SECRETS)
    assert undone.exit_code == 0, undone.output
    assert client.get("/readyz").status_code == 200


def test_no_secret_ever_appears_in_responses_or_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    texts = []
    for source, body, headers in [
        ("gu1-prod", b"{}", gu1_headers(b"{}", "wrong")),
        ("gu1-prod", b"{}", gu1_headers(b"{}")),
        ("kyc", b"{}", kyc_headers(b"{}", 1)),
        ("std", b"{}", {"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}),
        ("nope", b"{}", {}),
    ]:
        texts.append(post(client, source, body, headers).get_data(as_text=True))
    texts.append(client.get("/readyz").get_data(as_text=True))
    texts.append(caplog.text)
    for secret in SECRETS.values():
        assert not any(secret in text for text in texts)


# -- what senders really send: odd but authentic bodies are accepted, never a 500 ---------------------


@pytest.mark.parametrize(
    "body",
    [
        # A JavaScript sender cutting a string in the middle of an emoji leaves a lone surrogate.
        b'{"event":"kyc.validation_abandoned","timestamp":"2025-01-15T10:00:00Z",'
        b'"payload":{"id":"v1","lastStep":"selfie \\ud83d"}}',
        b'\xef\xbb\xbf{"event":"entity.created","timestamp":"2025-01-15T10:00:00Z","payload":{"entity":{"id":"e1"}}}',
        b'{"event":"entity.created","timestamp":"0001-01-01T00:00:00+05:00","payload":{"entity":{"id":"e2"}}}',
        b'{"event":"entity.created","timestamp":"9999-12-31T23:59:59-05:00","payload":{"entity":{"id":"e3"}}}',
        b'{"event":"rule.\\udc00triggered","timestamp":"2025-01-15T10:00:00Z","payload":{"evaluationId":"\\ud800"}}',
    ],
)
def test_odd_but_authentic_bodies_are_accepted_and_can_be_processed(client, services, body):
    from rules.engine import evaluate

    response = post(client, "gu1-prod", body, gu1_headers(body))
    assert response.status_code == 202, response.json
    event = services.store.event(response.json["id"])
    assert event.raw == body
    services.store.record_evaluation(event.id, evaluate([], event), "test")  # storable all the way
    assert services.store.event(event.id).status == "done"


def test_a_non_ascii_standard_signature_is_401_not_500(client, clock):
    body = b'{"type":"x"}'
    headers = {**std_headers(body, "msg_1", int(clock().timestamp())), "webhook-signature": "v1,abc\xff="}
    response = post(client, "std", body, headers)
    assert response.status_code == 401 and response.json["error"] == "malformed_signature"


def test_one_evaluation_triggering_two_rules_is_two_events(client):
    envelope = samples.sample("rule.triggered", seed=30)
    other = {**envelope, "payload": {**envelope["payload"], "ruleId": "rule_other"}}
    first, second = dumps(envelope), dumps(other)
    assert post(client, "gu1-prod", first, gu1_headers(first)).json["duplicate"] is False
    assert post(client, "gu1-prod", second, gu1_headers(second)).json["duplicate"] is False


@pytest.mark.sqlite  # reads the file itself
def test_readyz_does_not_show_the_database_path(make_app, make_config):
    config = make_config()
    app = make_app(config)
    blocker = sqlite3.connect(config.storage_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        answer = app.test_client().get("/readyz")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert answer.status_code == 503
    assert answer.json["checks"]["database"] == {"ok": False, "error": "cannot write to the database; see the log"}
    assert config.storage_path not in answer.get_data(as_text=True)

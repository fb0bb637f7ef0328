"""/metrics and the logs, on the connector running as processes: figures checked against known traffic
across two receiver processes; every log line of a full run parsed as JSON; and, in both formats, no
log line carrying what an event says about a person."""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.emulators.salesforce import malformed
from tests.support.helpers import dumps, gu1_headers, wait_until

pytestmark = pytest.mark.real_redis

# What an event says about a person, distinctive enough that no other text could hold it.
NAME = "Zbigniewa Quetzalcoatl-Ørnsholt"
TAX_ID = "TX-771-40-9913"
DOCUMENT = "PASSPORT-QZ88410277"


def person_event(n: int, status: str = "blocked") -> dict:
    return {
        "event": "entity.status_changed",
        "timestamp": f"2025-03-01T10:00:{n:02d}Z",
        "payload": {
            "status": status,
            "previousStatus": "active",
            "reason": f"document {DOCUMENT} flagged",
            "entity": {
                "id": f"ent-{n}",
                "externalId": f"customer_{n}",
                "name": NAME,
                "type": "person",
                "taxId": TAX_ID,
                "entityData": {"person": {"documentNumber": DOCUMENT}},
            },
        },
    }


def scrape(stack) -> tuple[int, dict[tuple[str, tuple], float]]:
    status, body = stack.request("GET", "/metrics")
    assert status == 200, body
    text = body.decode()
    [pid] = re.findall(r"# gu1-sync process (\d+) read these figures", text)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return int(pid), samples


def run_traffic(stack, org) -> dict[str, str]:
    """12 distinct events (half of them blocks), 3 sent twice, 4 forged, 2 upserts refused for good."""
    for refused in ("customer_10", "customer_11"):  # alone or in a collection, their own rows say so
        org.fail_record(refused, malformed("bad", "INVALID_FIELD"))
    ids = {}
    for n in range(12):
        body = dumps(person_event(n, "blocked" if n % 2 else "active"))
        status, answer = stack.request("POST", "/webhooks/gu1-prod", body, gu1_headers(body))
        assert status == 202, answer
        ids[f"customer_{n}"] = json.loads(answer)["id"]
        if n < 3:
            assert stack.request("POST", "/webhooks/gu1-prod", body, gu1_headers(body))[0] == 200
    for n in range(4):
        body = dumps(person_event(100 + n))
        assert stack.request("POST", "/webhooks/gu1-prod", body, gu1_headers(body, secret="forged"))[0] == 401
    return ids


def wait_settled(stack, count: int) -> None:
    def settled() -> bool:
        rows = stack.store.db.execute(
            "SELECT COUNT(*) FROM events WHERE status = 'done' AND NOT EXISTS (SELECT 1 FROM actions a "
            "WHERE a.event_id = events.id AND a.status IN ('pending', 'running', 'retrying'))"
        ).fetchone()[0]
        return rows == count

    wait_until(settled, timeout=60, what="every event and action to settle")


def test_metrics_are_the_same_known_figures_from_either_receiver_process(make_stack, org, workspace):
    stack = make_stack(timeout="2s")
    stack.start_receiver(workers=2)
    run_traffic(stack, org)
    stack.start_worker(processes=1)
    wait_settled(stack, 12)
    answers: dict[int, dict] = {}
    for _ in range(60):  # each scrape is a new connection: both processes answer, sooner or later
        pid, samples = scrape(stack)
        answers[pid] = samples
        if len(answers) == 2:
            break
    assert len(answers) == 2, "only one receiver process answered"
    first, second = answers.values()
    steady = {k: v for k, v in first.items() if k[0] != "gu1sync_oldest_unfinished_event_age_seconds"}
    assert steady == {k: v for k, v in second.items() if k in steady}
    figures = first

    def value(name: str, **labels: str) -> float:
        return figures.get((name, tuple(sorted(labels.items()))), 0.0)

    received = dict(source="gu1-prod", type="entity.status_changed")
    assert value("gu1sync_events_received_total", **received, outcome="accepted") == 12
    assert value("gu1sync_events_received_total", **received, outcome="duplicate") == 3
    assert value("gu1sync_webhooks_rejected_total", source="gu1-prod", reason="signature_mismatch") == 4
    sf = dict(rule="status-to-salesforce", connector="salesforce")
    assert value("gu1sync_actions", **sf, status="done") == 10
    assert value("gu1sync_actions", **sf, status="dead") == 2
    assert value("gu1sync_actions", rule="alert-blocked", connector="slack", status="done") == 6
    assert value("gu1sync_dead_letters") == 2
    assert value("gu1sync_retries_scheduled") == 0
    assert value("gu1sync_oldest_unfinished_event_age_seconds") == 0
    assert value("gu1sync_queue_depth") == 0 and value("gu1sync_redis_up") == 1
    calls = dict(connector="salesforce", outcome="ok")
    # The upserts were waiting together: sObject Collections calls, each counted once; the two records
    # refused were rows of calls that worked.
    sent = len(org.seen("PATCH", r"/composite/sobjects/Contact/"))
    assert 1 <= sent < 12
    assert value("gu1sync_connector_call_duration_seconds_count", **calls) == sent
    assert value("gu1sync_connector_call_duration_seconds_bucket", **calls, le="+Inf") == sent
    assert value("gu1sync_connector_call_duration_seconds_count", connector="salesforce", outcome="failed") == 0
    assert value("gu1sync_connector_call_duration_seconds_count", connector="slack", outcome="ok") == 6
    assert 0 < value("gu1sync_connector_call_duration_seconds_sum", **calls) < sent * 2  # seconds, not ms
    assert value("gu1sync_salesforce_api_requests_limit") == 15000
    assert value("gu1sync_salesforce_api_requests") == org.api_used
    assert value("gu1sync_connector_credentials_ok", connector="salesforce") == 1
    [version] = [dict(k[1])["version"] for k in figures if k[0] == "gu1sync_config_info"]
    assert len(version) == 12


def _log_lines(stack) -> list[str]:
    return [line for line in stack.logs.read_text().splitlines() if line.strip()]


def test_json_logs_every_line_one_object_with_stable_keys_and_no_personal_data(make_stack, org, workspace):
    stack = make_stack(timeout="2s", env={"GU1_SYNC_LOG_FORMAT": "json"})
    stack.start_receiver()
    ids = run_traffic(stack, org)
    stack.start_worker(processes=1)
    wait_settled(stack, 12)
    stack.stop()
    lines = _log_lines(stack)
    records = []
    for line in lines:
        record = json.loads(line)  # every line of every process is one JSON object
        assert {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    accepted = [r for r in records if r["message"].startswith("accepted event=")]
    assert {r["event_id"] for r in accepted} == set(ids.values())
    assert all(r["source"] == "gu1-prod" and r["event_type"] == "entity.status_changed" for r in accepted)
    refused = [r for r in records if r.get("reason") == "signature_mismatch"]
    assert len(refused) == 4 and all(r["level"] == "WARNING" for r in refused)
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert {(r["method"], r["path"]) for r in access} >= {("POST", "/webhooks/gu1-prod")}
    assert {r["status"] for r in access} >= {202, 200, 401}
    outcomes = [r for r in records if "action_id" in r and r.get("outcome")]
    assert {(r["rule"], r["outcome"]) for r in outcomes} >= {("status-to-salesforce", "ok"), ("alert-blocked", "ok")}
    assert any(r.get("code") == "INVALID_FIELD" for r in outcomes)
    _no_personal_data(lines)


def test_text_logs_carry_no_personal_data_either(make_stack, org, workspace):
    stack = make_stack(timeout="2s", env={"GU1_SYNC_LOG_FORMAT": "text", "GU1_SYNC_LOG_LEVEL": "DEBUG"})
    stack.start_receiver()
    run_traffic(stack, org)
    stack.start_worker(processes=1)
    wait_settled(stack, 12)
    stack.stop()
    lines = _log_lines(stack)
    assert any("accepted event=" in line for line in lines)
    _no_personal_data(lines)


def _no_personal_data(lines: list[str]) -> None:
    found = [line for line in lines for secret in (NAME, TAX_ID, DOCUMENT, "Zbigniewa", "Ørnsholt") if secret in line]
    assert found == []
    # As JSON may write them too.
    escaped = [json.dumps(NAME)[1:-1], json.dumps(NAME, ensure_ascii=False)[1:-1]]
    assert not [line for line in lines for text in escaped if text in line]


def test_metrics_answer_only_the_allowed_addresses_and_the_token_bearer(make_config, make_app):
    open_app = make_app(make_config())
    assert open_app.test_client().get("/metrics").status_code == 200  # loopback is allowed by default
    outside = open_app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert (outside.status_code, outside.json["error"]) == (403, "metrics_forbidden")
    # A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d: the same address as far as `allow` goes.
    mapped = open_app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "::ffff:10.1.2.3"})
    assert mapped.status_code == 200
    mapped_outside = open_app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "::ffff:203.0.113.9"})
    assert mapped_outside.status_code == 403
    guarded = make_app(
        make_config(
            "metrics:\n  allow: [203.0.113.0/24]\n  token: ${METRICS_TOKEN}\n",
            environ={"METRICS_TOKEN": "s3cret-scrape"},
        )
    ).test_client()
    peer = {"REMOTE_ADDR": "203.0.113.9"}
    assert guarded.get("/metrics", environ_base=peer).json["error"] == "metrics_unauthorized"
    wrong = guarded.get("/metrics", environ_base=peer, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "s3cret" not in wrong.get_data(as_text=True)
    right = guarded.get("/metrics", environ_base=peer, headers={"Authorization": "Bearer s3cret-scrape"})
    assert right.status_code == 200 and "gu1sync_events_received_total" in right.get_data(as_text=True)
    assert guarded.get("/metrics").status_code == 403  # loopback is not in this allow list

"""`simulate` over the sample payload of every event family in the seeds, both KYC generations."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gu1sync.cli import cli
from gu1sync.config import load_config
from gu1sync.simulate import SimulationError, simulate
from tests.support.helpers import ROOT, SECRETS

RULES = ROOT / "tests" / "configs" / "rules.yaml"
EVENTS = ROOT / "examples" / "events"

EXPECTED = {
    "entity.created.json": [],
    "entity.updated.json": ["email-changed"],
    "entity.status_changed.json": [],
    "entity.status_changed.blocked.json": ["alert-blocked-or-suspended"],
    "kyc.validation_created.json": [],
    "kyc.validation_created.legacy.json": [],
    "kyc.validation_in_progress.json": [],
    "kyc.validation_in_progress.legacy.json": [],
    "kyc.validation_in_review.json": [],
    "kyc.validation_approved.json": ["activate-account-on-kyc-approved"],
    "kyc.validation_approved.legacy.json": ["activate-account-on-kyc-approved"],
    "kyc.validation_rejected.json": ["kyc-rejected"],
    "kyc.validation_rejected.legacy.json": ["kyc-rejected"],
    "kyc.validation_abandoned.json": ["follow-up-abandoned-or-expired"],
    "kyc.validation_abandoned.legacy.json": ["follow-up-abandoned-or-expired"],
    "kyc.validation_expired.json": ["follow-up-abandoned-or-expired"],
    "kyc.validation_expired.legacy.json": ["follow-up-abandoned-or-expired"],
    "kyc.validation_cancelled.json": [],
    "rule.triggered.json": ["high-severity-rule"],
    "transaction.flagged.json": [],
}


@pytest.fixture(scope="module")
def config():
    return load_config(str(RULES), environ=SECRETS)


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def test_every_example_is_covered():
    assert sorted(p.name for p in EVENTS.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_simulate_every_event_family(config, name):
    event, results = simulate(config, load(name))
    assert event.type == load(name)["event"]
    assert [r.rule for r in results if r.matched] == EXPECTED[name]
    for result in results:
        if result.matched:
            assert all(a.error is None for a in result.actions), result.actions
        else:
            assert result.reason  # every miss says why


@pytest.mark.parametrize("name", ["kyc.validation_approved.json", "kyc.validation_approved.legacy.json"])
def test_both_kyc_generations_render_the_same_upsert(config, name):
    _, results = simulate(config, load(name))
    [upsert, post] = results[0].actions
    assert upsert.type == "salesforce.upsert"
    assert upsert.params["external_id"] == "customer_xyz789"
    assert upsert.params["fields"]["KYC_Status__c"] == "approved"
    assert upsert.params["fields"]["Account_Active__c"] is True
    assert post.params == {"channel": "#onboarding", "text": "KYC approved for John Doe (customer_xyz789)"}


def test_a_missing_field_fails_the_action_naming_rule_action_and_path(config):
    document = load("kyc.validation_approved.json")
    del document["payload"]["verifiedAt"]
    _, results = simulate(config, document)
    upsert, post = results[0].actions
    assert upsert.params is None
    assert upsert.error == (
        "rule 'activate-account-on-kyc-approved', action 0 (salesforce.upsert): "
        "fields.KYC_Verified_At__c: 'payload.verifiedAt' is not in the event"
    )
    assert post.error is None  # one action failing does not stop the others


def test_why_a_rule_did_not_match(config):
    _, results = simulate(config, load("entity.status_changed.json"))
    reasons = {r.rule: r.reason for r in results}
    assert reasons["alert-blocked-or-suspended"] == (
        "when: status changes to ['blocked', 'suspended'] (was from 'under_review' to 'active')"
    )
    assert reasons["kyc-rejected"] == "on: event 'entity.status_changed' is not kyc.validation_rejected"
    assert reasons["retired-rule"] == "disabled"
    _, results = simulate(config, load("kyc.validation_rejected.json"), "gu1-sandbox")
    assert {r.rule: r.reason for r in results}["kyc-rejected"] == "environment: 'sandbox' is not 'production'"


def test_current_generation_without_entity_does_not_match_entity_conditions(config):
    document = load("kyc.validation_approved.json")
    del document["payload"]["entity"]
    _, results = simulate(config, document)
    assert results[0].reason == "when: entity.type in ['person'] (was missing)"


def test_simulate_refuses_what_is_not_an_event(config):
    with pytest.raises(SimulationError, match="no source named 'nope'"):
        simulate(config, load("rule.triggered.json"), "nope")
    with pytest.raises(SimulationError, match="not a gu1 event: the body has no event type in 'event'"):
        simulate(config, {"type": "x"})
    with pytest.raises(SimulationError, match="not a JSON object"):
        simulate(config, [1, 2])


def cli_run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["--config", str(RULES), *args], env={**SECRETS, **(env or {})})


def test_cli_simulate_text():
    result = cli_run("simulate", str(EVENTS / "rule.triggered.json"))
    assert result.exit_code == 0, result.output
    assert "MATCHED  high-severity-rule" in result.output
    assert "throttle: once per 3600 s for key '123e4567-e89b-12d3-a456-426614174000'" in result.output
    assert '"Priority": "High"' in result.output
    assert "no       kyc-rejected: on: event 'rule.triggered' is not kyc.validation_rejected" in result.output
    assert "off      retired-rule: disabled" in result.output
    assert "1 of 7 rule(s) matched" in result.output


def test_cli_simulate_json_and_stdin():
    body = (EVENTS / "entity.updated.json").read_text()
    result = CliRunner().invoke(cli, ["--config", str(RULES), "simulate", "--json", "-"], input=body, env=SECRETS)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    shadow = next(r for r in out["rules"] if r["rule"] == "email-changed")
    assert shadow["matched"] is True and shadow["mode"] == "shadow"
    assert shadow["actions"][0]["params"]["text"] == "John Doe: email john.doe@example.com -> john.doe@newemail.com"


def test_cli_simulate_bad_input_exits_1(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_run("simulate", str(bad)).exit_code == 1
    assert cli_run("simulate", str(EVENTS / "rule.triggered.json"), "--source", "nope").exit_code == 1
    assert cli_run("simulate", str(tmp_path / "missing.json")).exit_code == 2  # click: no such file

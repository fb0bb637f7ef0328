"""Long operations say how far they are: `replay --since`, `purge` and `backup` draw click's progress
bar on a terminal, and otherwise (a log, a pipe) write plain counts now and then."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

import pytest
from click.testing import CliRunner

import gu1sync.cli.common as common
from gu1sync.cli import cli
from tests.support.delivery import ENV, drain, post, status_changed
from tests.support.helpers import ROOT, SECRETS, dumps, gu1_headers

pytestmark = pytest.mark.real_redis


def test_without_a_terminal_long_operations_write_plain_counts(setup, redis_conn, monkeypatch, tmp_path):
    monkeypatch.setattr(common, "PLAIN_EVERY", 0.0)  # every step is "a while" here
    config, app, ctx = setup(channel="#nowhere")  # every post dies: channel_not_found
    for n in range(3):
        post(app, status_changed(f"customer_p{n}", "blocked", "active", f"2025-01-08T09:00:0{n}Z"))
    drain(redis_conn)
    replayed = CliRunner().invoke(cli, ["--config", config.file, "replay", "--since", "1h"], env=ENV)
    assert replayed.exit_code == 0, replayed.output
    assert [line for line in replayed.output.splitlines() if line.startswith("replay: ")] == [
        "replay: 1 of 3",
        "replay: 2 of 3",
        "replay: 3 of 3",
    ]
    backup = CliRunner().invoke(cli, ["--config", config.file, "backup", str(tmp_path / "b.db")], env=ENV)
    assert backup.exit_code == 0 and "backup (pages): " in backup.output
    purged = CliRunner().invoke(cli, ["--config", config.file, "purge", "--older-than", "1ms", "--dry-run"], env=ENV)
    assert purged.exit_code == 0 and "purge (events): 3 of 3" in purged.output


def _on_a_terminal(args: list[str]) -> str:
    """Run the command line with a pseudo-terminal as its stdout; what it wrote there."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        stdout=follower,
        stderr=subprocess.STDOUT,
        env={**os.environ, **SECRETS},
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the other end closed: the process is gone
            break
        if not chunk:
            break
        output += chunk
    process.wait(60)
    os.close(leader)
    return output.decode(errors="replace")


def test_on_a_terminal_backup_and_purge_draw_a_progress_bar(make_config, tmp_path):
    from app import create_app

    config = make_config()
    client = create_app(config).test_client()
    body = dumps({"event": "entity.created", "timestamp": "2025-01-01T00:00:00Z", "payload": {"entity": {"id": "x"}}})
    assert client.post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body)).status_code == 202
    shown = _on_a_terminal(["--config", config.file, "backup", str(tmp_path / "copy.db")])
    assert "backup (pages)" in shown and "100%" in shown and "[" in shown, shown
    shown = _on_a_terminal(["--config", config.file, "purge", "--older-than", "1ms", "--dry-run"])
    assert "purge (events)" in shown and "100%" in shown, shown

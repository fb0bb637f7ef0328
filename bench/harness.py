"""What every benchmark needs: a private Redis, a config on disk, processes, load, and percentiles.

Benchmarks run by hand (`make bench`); nothing here is imported by the product or the test suite.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gu1sync import samples  # noqa: E402
from gu1sync.redisbin import NOT_FOUND, find_redis_server  # noqa: E402
from tests.support.helpers import SECRETS, dumps, free_port, gu1_headers  # noqa: E402, F401 - free_port: for the benchmarks
from tests.support.redis import RedisServer  # noqa: E402
from tests.support.stack import RULES as STACK_RULES  # noqa: E402
from tests.support.stack import SESSION  # noqa: E402

PYTHON = sys.executable


def rules(sf_url: str, slack_url: str) -> str:
    """One Salesforce upsert and one Slack post per event: the end-to-end tests' rules (tests/support/stack.py),
    Slack's pacing off (these measure the worker; bench/burst.py measures pacing)."""
    return STACK_RULES.format(sf_url=sf_url, slack_url=slack_url, timeout="5s", retry="", pace="{posts: 0}")


@contextmanager
def redis_url() -> Iterator[str]:
    """$REDIS_URL if set (flushed: point it at a spare database), else a private redis-server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = find_redis_server()
    if binary is None:
        sys.exit(f"bench: {NOT_FOUND}")
    server = RedisServer(binary)
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


def write_config(directory: Path, redis: str, extra: str = "", *, storage_url: str | None = None) -> Path:
    """A config with one production Gu1 source, SQLite in `directory` (or the database at
    `storage_url`), and `extra` (rules...)."""
    path = directory / "config.yaml"
    path.write_text(
        "version: 1\n"
        f"storage:\n  {f'url: {storage_url}' if storage_url else 'path: events.db'}\n"
        f'queue:\n  redis_url: "{redis}"\n  name: bench\n'
        'sources:\n  gu1:\n    kind: gu1\n    environment: production\n    secrets: ["${GU1_SECRET}"]\n'
        f"{extra}"
    )
    return path


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, **SECRETS, "SF_SESSION": SESSION, **extra}
    env.pop("REDIS_URL", None)  # the config names the Redis; never the user's own by accident
    return env


class Processes:
    """Child processes started in their own session, all stopped on exit."""

    def __init__(self, log: Path):
        self.log = log
        self.running: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log, "a") as out:
            process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.running:
            self.stop(process)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.02)


def http_ok(port: int, path: str = "/healthz") -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False


def signed_events(count: int, seed: int = 0, event: str = "entity.status_changed") -> list[bytes]:
    """`count` distinct signed requests (raw HTTP/1.1 bytes, ready to send) to /webhooks/gu1."""
    out = []
    for n in range(count):
        body = dumps(samples.sample(event, seed=seed + n))
        headers = {**gu1_headers(body), "Host": "127.0.0.1", "Content-Length": str(len(body))}
        head = "POST /webhooks/gu1 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        out.append(head.encode() + body)
    return out


def exchange(port: int, request: bytes) -> int:
    """Send one raw request on a new connection, read the answer; its status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head.split(b" ", 2)[1]) if head else 0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def count_rows(db: Path, query: str, args: tuple = ()) -> int:
    """A count from the SQLite file, on a short-lived connection (the workers keep writing)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(query, args).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"gu1sync-bench-{prefix}-"))


def dump(result: dict) -> str:
    return json.dumps(result)


def closed_loop(port: int | list[int], requests: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """Send every request, `concurrency` at a time, each on a new connection as Gu1 does:
    (requests per second, latencies in seconds). Any answer but 2xx stops the benchmark. Several
    ports: request n goes to the n-th in turn (a load balancer's round robin)."""
    ports = port if isinstance(port, list) else [port]
    import threading

    latencies: list[float] = []
    failures: list[int] = []
    cursor = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                n = next(cursor, None)
            if n is None:
                return
            started = time.perf_counter()
            status = exchange(ports[n % len(ports)], requests[n])
            latencies.append(time.perf_counter() - started)
            if not 200 <= status < 300:
                failures.append(status)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"bench: {len(failures)} request(s) answered {sorted(set(failures))}")
    return len(requests) / elapsed, latencies


def open_loop(port: int, requests: list[bytes], rate: float, threads: int = 16) -> list[tuple[float, float]]:
    """Send request n at start + n / rate whatever happened to the others (so a slow answer cannot
    hide the queue behind it): [(when it was due, when its answer was read)] in time.monotonic()."""
    import threading

    start = time.monotonic() + 0.2
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(requests)
    failures: list[int] = []

    def client(k: int) -> None:
        for n in range(k, len(requests), threads):
            due = start + n / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            status = exchange(port, requests[n])
            out[n] = (due, time.monotonic())
            if not 200 <= status < 300:
                failures.append(status)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise SystemExit(f"bench: {len(failures)} request(s) answered {sorted(set(failures))}")
    return out

"""Receiver throughput and memory, by hand: `make bench` (needs Redis at $REDIS_URL or 127.0.0.1:6379).

Prints, for bodies of several sizes, the time per accepted webhook (verify, parse, commit to
SQLite with fsync, enqueue) as a ratio to a baseline measured in the same run on the same app:
GET /healthz, which goes through Flask and nothing else. Also the peak memory per request.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402
from gu1sync import samples  # noqa: E402
from gu1sync.config import parse_config  # noqa: E402
from tests.helpers import SECRETS, gu1_headers  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
ROUNDS = 300


def build():
    directory = tempfile.mkdtemp(prefix="gu1sync-bench-")
    text = (
        f'version: 1\nstorage:\n  path: {directory}/bench.db\nqueue:\n  redis_url: "{REDIS_URL}"\n  name: bench\n'
        'sources:\n  gu1:\n    kind: gu1\n    environment: production\n    secrets: ["${GU1_SECRET}"]\n'
    )
    config = parse_config(text, f"{directory}/config.yaml", environ=SECRETS)
    app = create_app(config)
    app.extensions["gu1sync"].queue.redis.flushdb()
    return app


def body_of(size: int, n: int) -> bytes:
    envelope = samples.sample("entity.updated", seed=n)
    padding = max(0, size - len(json.dumps(envelope)) - 20)
    return json.dumps({**envelope, "padding": "x" * padding}).encode()


def timed(fn, rounds: int) -> float:
    times = []
    for n in range(rounds):
        started = time.perf_counter()
        fn(n)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    app = build()
    client = app.test_client()
    baseline = timed(lambda n: client.get("/healthz"), ROUNDS)
    print(f"baseline GET /healthz: {baseline * 1000:.3f} ms (median of {ROUNDS})")
    print(f"{'body':>10} {'accept ms':>10} {'x baseline':>11} {'duplicate ms':>13} {'x baseline':>11} {'peak KiB':>9}")
    for size in (1_000, 10_000, 100_000, 1_000_000):
        bodies = [body_of(size, size + n) for n in range(ROUNDS)]  # a seed per event: new identities
        headers = [gu1_headers(b) for b in bodies]
        rounds = ROUNDS if size < 1_000_000 else 60

        def post(n: int, bodies: list[bytes] = bodies, headers: list[dict] = headers) -> None:
            response = client.post("/webhooks/gu1", data=bodies[n], headers=headers[n])
            assert response.status_code in (200, 202), response.json

        accept = timed(post, rounds)
        duplicate = timed(post, rounds)
        tracemalloc.start()
        post(0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"{size:>10} {accept * 1000:>10.3f} {accept / baseline:>11.1f} {duplicate * 1000:>13.3f} "
            f"{duplicate / baseline:>11.1f} {peak / 1024:>9.0f}"
        )
    app.extensions["gu1sync"].queue.redis.flushdb()


if __name__ == "__main__":
    main()

"""The web console on a big database: 100,000 stored events (each with its evaluations and two actions,
one in a hundred dead), then the time of each page, next to the sign-in page (which reads nothing) in
the same run. Flask's test client, in this process: what is measured is the console's own work.

    .venv/bin/python bench/console.py [--events 100000]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from datetime import UTC, datetime, timedelta

from harness import SECRETS, temp_dir, write_config

from gu1sync.config import parse_config
from gu1sync.console import create_console, hash_password
from gu1sync.core.records import Envelope, make_event
from gu1sync.core.timeutil import iso, utcnow
from gu1sync.runtime import Runtime
from gu1sync.simulate import evaluate
from gu1sync.storage.console import ConsoleStore
from tests.support.burst import status_change
from tests.support.stack import RULES

PASSWORD = "correct horse battery staple"


def fill(runtime: Runtime, count: int) -> str:
    """`count` events, processed; returns the external id of one in the middle."""
    store, config = runtime.store, runtime.config
    start = datetime.now(UTC) - timedelta(hours=20)
    batch = []
    for n in range(count):
        document = status_change(n, "blocked" if n % 10 == 0 else "suspended", start=start + timedelta(seconds=n // 10))
        envelope = Envelope(
            type="entity.status_changed",
            occurred_at=start + timedelta(seconds=n // 10),
            payload=document["payload"],
            subject=document["payload"]["entity"]["id"],
        )
        event = make_event(
            source="gu1",
            kind="gu1",
            environment="production",
            envelope=envelope,
            raw=json.dumps(document).encode(),
            received_at=iso(start + timedelta(seconds=n * 0.5)),
            secret="GU1_SECRET",
        )
        batch.append(event)
        if len(batch) == 1000 or n == count - 1:
            store.record_many([(e, {}) for e in batch])
            for e in batch:
                store.record_evaluation(e.id, evaluate(config.rules, e), config.digest)
            batch = []
    with store.transaction() as conn:  # one action in a hundred dead, on a bad field
        conn.execute(
            "UPDATE actions SET status = 'dead', error = 'INVALID_FIELD: No such column', error_code = 'INVALID_FIELD' "
            "WHERE rowid % 100 = 0"
        )
        conn.execute("UPDATE actions SET status = 'done' WHERE status = 'pending'")
    return f"customer_{count // 2:06d}"


def timed(client, method: str, path: str, data: dict | None = None, runs: int = 7, before=None) -> float:  # noqa: ANN001
    """Median milliseconds of a request (after one to warm up); `before` runs before each, untimed."""
    samples = []
    for n in range(runs + 1):
        if before is not None:
            before()
        started = time.perf_counter()
        answer = client.open(path, method=method, data=data)
        elapsed = (time.perf_counter() - started) * 1000
        assert answer.status_code == 200, (path, answer.status_code)
        if n:
            samples.append(elapsed)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    directory = temp_dir("console")
    path = write_config(
        directory,
        "redis://127.0.0.1:1/0",
        RULES.format(
            sf_url="https://sf.invalid",
            slack_url="https://slack.invalid/api/",
            timeout="5s",
            retry="",
            pace="{posts: 0}",
        ),
    )
    config = parse_config(path.read_text(), str(path), environ={**SECRETS, "SF_SESSION": "x", "SLACK_TOKEN": "x"})
    runtime = Runtime.for_service(config, role="console")
    started = time.perf_counter()
    external = fill(runtime, args.events)
    print(f"filled {args.events} events in {time.perf_counter() - started:.0f} s ({directory / 'events.db'})")
    ConsoleStore(runtime.store).add_user("bench", "operator", hash_password(PASSWORD), utcnow())
    console = create_console(runtime)
    client = console.test_client()
    page = client.get("/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post("/sign-in", data={"name": "bench", "password": PASSWORD, "csrf_token": token})
    events = client.get("/events").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', events).group(1)  # the signed-in session's
    deep = re.search(r'href="(/events\?after=[^"]+)"', events).group(1).replace("&amp;", "&")
    for _ in range(50):  # fifty pages down
        page = client.get(deep).get_data(as_text=True)
        deep = re.search(r'href="(/events\?after=[^"]+)"', page).group(1).replace("&amp;", "&")
    [event_id] = ConsoleStore(runtime.store).find(external)
    client.get("/")  # the overview's tallies, kept from here on
    baseline = timed(client, "GET", "/sign-in")
    rows = [
        ("overview, tallies computed", timed(client, "GET", "/", before=console.extensions["gu1sync_tally"].clear)),
        ("overview, tallies kept (10 s)", timed(client, "GET", "/")),
        ("events, first page", timed(client, "GET", "/events")),
        ("events, 50 pages down", timed(client, "GET", deep)),
        ("events of one type and status", timed(client, "GET", "/events?type=entity.status_changed&status=done")),
        ("events of the last hour", timed(client, "GET", f"/events?since={iso(utcnow() - timedelta(hours=1))}")),
        ("find by external id", timed(client, "POST", "/events/search", {"term": external, "csrf_token": token})),
        ("one event's trace", timed(client, "GET", f"/events/{event_id}")),
        ("failures by rule and error", timed(client, "GET", "/failures")),
        ("rules, with matches lately", timed(client, "GET", "/rules")),
    ]
    print(f"{'page':<32}{'ms':>8}{'x sign-in':>11}")
    print(f"{'sign-in (reads nothing)':<32}{baseline:>8.1f}{1:>11.1f}")
    for name, ms in rows:
        print(f"{name:<32}{ms:>8.1f}{ms / baseline:>11.1f}")


if __name__ == "__main__":
    main()

"""Worker throughput: events per second through one worker process, each event making one Salesforce
upsert and one Slack post against the local emulators; next to RQ running a no-op job in the same
run. Also the Salesforce API calls made per upsert.

    .venv/bin/python bench/worker.py [--events N]
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

from harness import (
    PYTHON,
    ROOT,
    SESSION,
    Processes,
    count_rows,
    environment,
    redis_url,
    rules,
    signed_events,
    temp_dir,
    wait_until,
    write_config,
)
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.support.emulators.salesforce import SalesforceEmulator
from tests.support.emulators.slack import SlackEmulator


def _seconds(first: str, last: str) -> float:
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()


def preload(config: Path, requests: list[bytes], env: dict[str, str]) -> None:
    """Accept the events through the real receiver app, in this process (no worker runs yet)."""
    from app import create_app
    from gu1sync.config import parse_config

    app = create_app(parse_config(config.read_text(), str(config), environ=env))
    client = app.test_client()
    for raw in requests:
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        response = client.post("/webhooks/gu1", data=body, headers=headers)
        assert response.status_code == 202, response.json


def gu1_sync(redis: str, events: int) -> dict:
    """Events/s of one `gu1-sync worker` process, from its first claim to its last finished action."""
    directory = temp_dir("worker")
    with SalesforceEmulator() as org, SlackEmulator() as workspace, Processes(directory / "log.txt") as procs:
        org.sessions.add(SESSION)
        config = write_config(directory, redis, rules(org.url, workspace.api_url))
        Redis.from_url(redis).flushdb()
        env = environment(SLACK_TOKEN=workspace.token, REQUESTS_CA_BUNDLE=org.ca_path)
        preload(config, signed_events(events, seed=10_000), env)
        db = directory / "events.db"
        worker = procs.start([PYTHON, "app.py", "--config", str(config), "worker"], env)
        wait_until(
            lambda: count_rows(db, "SELECT COUNT(*) FROM actions WHERE status = 'done'") == 2 * events,
            timeout=60 + events / 10,
            what=f"{2 * events} actions (log: {directory / 'log.txt'})",
        )
        import sqlite3

        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        conn = sqlite3.connect(db)
        first = conn.execute("SELECT MIN(started_at) FROM events").fetchone()[0]
        last = conn.execute("SELECT MAX(finished_at) FROM actions").fetchone()[0]
        upserts = conn.execute("SELECT COUNT(*) FROM actions WHERE type = 'salesforce.upsert'").fetchone()[0]
        conn.close()
        patches = len(org.seen("PATCH"))
        return {
            "events_per_s": events / _seconds(first, last),
            "cpu_ms_per_event": cpu * 1000 / events,
            "sf_calls_per_upsert": len(org.requests) / upserts,
            "sf_patches": patches,
            "upserts": upserts,
            "slack_posts": len(workspace.messages),
        }


def rq_noop(redis: str, jobs: int) -> dict:
    """Jobs/s of one RQ SimpleWorker running a no-op job, from the first start to the last end."""
    connection = Redis.from_url(redis)
    connection.flushdb()
    queue = Queue("bench-noop", connection=connection, serializer=JSONSerializer)
    ids = [queue.enqueue("noop.noop", result_ttl=600).id for _ in range(jobs)]
    directory = temp_dir("noop")
    with Processes(directory / "log.txt") as procs:
        worker = procs.start(
            [
                str(Path(PYTHON).with_name("rq")),
                "worker",
                "--burst",
                "--quiet",
                "--url",
                redis,
                "--path",
                str(ROOT / "bench"),
                "--worker-class",
                "rq.worker.SimpleWorker",
                "--serializer",
                "rq.serializers.JSONSerializer",
                "bench-noop",
            ],
            environment(),
        )
        worker.wait(120)
    done = [j for j in Job.fetch_many(ids, connection=connection, serializer=JSONSerializer) if j is not None]
    assert len(done) == jobs and all(j.ended_at for j in done), "not every no-op job finished"
    first = min(j.started_at for j in done)
    last = max(j.ended_at for j in done)
    return {"jobs_per_s": jobs / (last - first).total_seconds()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    with redis_url() as redis:
        baseline = rq_noop(redis, args.events)
        ours = gu1_sync(redis, args.events)
    ratio = ours["events_per_s"] / baseline["jobs_per_s"]
    print(f"RQ no-op jobs/s           {baseline['jobs_per_s']:9.0f}")
    print(f"gu1-sync events/s         {ours['events_per_s']:9.0f}   ratio {ratio:.2f}")
    print(f"worker CPU ms/event       {ours['cpu_ms_per_event']:9.2f}")
    print(f"SF calls per upsert       {ours['sf_calls_per_upsert']:9.2f}   ({ours['sf_patches']} PATCHes)")


if __name__ == "__main__":
    main()

"""A portfolio re-screening: a burst of status changes, one in ten a block, against emulators that answer
with a real service's latency (Salesforce 150 ms a call, Slack 100 ms and its per-channel rate), through
the README's one-box setup (`gu1-sync serve`, `gu1-sync worker --processes 2`).

Three configs in the same run, each on a fresh database, Redis and emulators:
- baseline: one call per record and no pacing (`connectors.salesforce.batch.max: 1`,
  `connectors.slack.pace.posts: 0`), what gu1-sync did before, and what n8n or Zapier do;
- gu1-sync's defaults (batches, paced Slack posts), every block its own message;
- the same with the alert rule grouping its matches (`group: {wait: 5s}`).

    .venv/bin/python bench/burst.py [--events 600] [--only NAME]

Prints, per config: the time from the first request to the last event processed and Salesforce
written (and its events/s), to the last action delivered, Salesforce API calls per upserted record,
Slack messages and the 429s Slack answered.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    PYTHON,
    SESSION,
    Processes,
    closed_loop,
    count_rows,
    environment,
    free_port,
    http_ok,
    redis_url,
    temp_dir,
    wait_until,
    write_config,
)
from redis import Redis

from tests.support.burst import status_change
from tests.support.emulators.salesforce import SalesforceEmulator
from tests.support.emulators.slack import SlackEmulator
from tests.support.helpers import dumps, gu1_headers

SALESFORCE_LATENCY = 0.150
SLACK_LATENCY = 0.100
SLACK_RATE = (1.0, 3)  # Slack: about one message per second per channel, short bursts (a token bucket)

RULES = """
connectors:
  salesforce:
    auth: {{method: session, instance_url: "{sf_url}", session_id: "${{SF_SESSION}}"}}
    timeout: 15s
{salesforce}
  slack:
    token: "${{SLACK_TOKEN}}"
    base_url: "{slack_url}"
    timeout: 15s
{slack}
retry: {{max_attempts: 20, backoff: 1s, max_backoff: 10s}}
rules:
  - name: status-to-salesforce
    on: entity.status_changed
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields: {{Gu1_Status__c: "{{{{ payload.status }}}}", Account_Active__c: false}}
  - name: alert-blocked
    on: entity.status_changed
    when: {{status_changes: {{to: [blocked]}}}}
{group}
    actions:
      - slack.post: {{channel: "#compliance-alerts", layout: compliance-alert}}
"""

CONFIGS = {
    "baseline": dict(salesforce="    batch: {max: 1}", slack="    pace: {posts: 0}", group=""),
    "gu1-sync": dict(salesforce="", slack="", group=""),
    "gu1-sync, grouped": dict(salesforce="", slack="", group="    group: {wait: 5s}"),
}


def requests_for(count: int) -> list[bytes]:
    """`count` distinct signed status changes, one in ten a block, as raw HTTP requests."""
    start = datetime.now(UTC).replace(microsecond=0)
    out = []
    for n in range(count):
        document = status_change(n, "blocked" if n % 10 == 0 else "suspended", start=start)
        document["payload"]["previousStatus"] = "active"
        body = dumps(document)
        headers = {**gu1_headers(body), "Host": "127.0.0.1", "Content-Length": str(len(body))}
        head = "POST /webhooks/gu1 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        out.append(head.encode() + body)
    return out


def seconds_since(start: datetime, db: Path, query: str) -> float:
    conn = sqlite3.connect(db, timeout=5)
    try:
        last = conn.execute(query).fetchone()[0]
    finally:
        conn.close()
    return (datetime.fromisoformat(last) - start).total_seconds()


def run(name: str, redis: str, events: int) -> dict:
    settings = CONFIGS[name]
    directory = temp_dir("burst")
    with SalesforceEmulator() as org, SlackEmulator() as workspace, Processes(directory / "log.txt") as procs:
        org.sessions.add(SESSION)
        org.latency, workspace.latency = SALESFORCE_LATENCY, SLACK_LATENCY
        workspace.channel_rate = SLACK_RATE
        config = write_config(directory, redis, RULES.format(sf_url=org.url, slack_url=workspace.api_url, **settings))
        Redis.from_url(redis).flushdb()
        env = environment(SLACK_TOKEN=workspace.token, REQUESTS_CA_BUNDLE=org.ca_path)
        port = free_port()
        procs.start(
            [PYTHON, "app.py", "--config", str(config), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env
        )
        wait_until(lambda: http_ok(port), timeout=60, what=f"the receiver (log: {directory / 'log.txt'})")
        procs.start([PYTHON, "app.py", "--config", str(config), "worker", "--processes", "2"], env)
        time.sleep(3)  # the pool's processes up, each with its connectors built on its first job
        db = directory / "events.db"
        requests = requests_for(events)
        blocks = sum(1 for n in range(events) if n % 10 == 0)
        start = datetime.now(UTC)
        closed_loop(port, requests, concurrency=8)
        wait_until(
            lambda: (
                count_rows(db, "SELECT COUNT(*) FROM actions WHERE type = 'salesforce.upsert' AND status = 'done'")
                == events
                and count_rows(db, "SELECT COUNT(*) FROM events WHERE status = 'done'") == events
            ),
            timeout=600,
            what=f"{events} events processed and upserted (log: {directory / 'log.txt'})",
        )
        written = seconds_since(start, db, "SELECT MAX(finished_at) FROM actions WHERE type = 'salesforce.upsert'")
        wait_until(
            lambda: count_rows(db, "SELECT COUNT(*) FROM actions WHERE status = 'done'") == events + blocks,
            timeout=900,
            what=f"every Slack post (log: {directory / 'log.txt'})",
        )
        delivered = seconds_since(start, db, "SELECT MAX(finished_at) FROM actions")
        rest_calls = sum(1 for r in org.requests if r.path.startswith("/services/data/"))
        return {
            "config": name,
            "written_s": written,
            "events_per_s": events / written,
            "delivered_s": delivered,
            "sf_calls_per_record": rest_calls / events,
            "slack_messages": len([m for m in workspace.messages if m["channel"] == "C0COMPLIANCE"]),
            "slack_429": workspace.ratelimited,
            "blocks": blocks,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--only", choices=list(CONFIGS))
    args = parser.parse_args()
    names = [args.only] if args.only else list(CONFIGS)
    with redis_url() as redis:
        results = [run(name, redis, args.events) for name in names]
    print(
        f"{args.events} status changes ({results[0]['blocks']} blocks); Salesforce {SALESFORCE_LATENCY * 1000:.0f} ms "
        f"a call, Slack {SLACK_LATENCY * 1000:.0f} ms and {SLACK_RATE[0]:g}/s per channel (bursts of {SLACK_RATE[1]})"
    )
    header = (
        f"{'config':<20}{'written s':>10}{'events/s':>10}{'delivered s':>13}"
        f"{'SF calls/record':>17}{'Slack msgs':>12}{'429s':>6}"
    )
    print(header)
    for r in results:
        print(
            f"{r['config']:<20}{r['written_s']:>10.1f}{r['events_per_s']:>10.0f}{r['delivered_s']:>13.1f}"
            f"{r['sf_calls_per_record']:>17.3f}{r['slack_messages']:>12}{r['slack_429']:>6}"
        )
    by_name = {r["config"]: r for r in results}
    if "baseline" in by_name:
        for r in results:
            if r["config"] != "baseline":
                speedup = r["events_per_s"] / by_name["baseline"]["events_per_s"]
                calls = r["sf_calls_per_record"] / by_name["baseline"]["sf_calls_per_record"]
                print(f"{r['config']}: {speedup:.1f}x the baseline's events/s, {calls:.3f}x its Salesforce calls")
    ours = [r for r in results if r["config"] != "baseline"]
    checks = [
        *((f"at least 200 events/s ({r['config']})", r["events_per_s"] >= 200) for r in ours),
        *((f"at most 0.02 SF calls per record ({r['config']})", r["sf_calls_per_record"] <= 0.02) for r in ours),
        ("zero 429s", all(r["slack_429"] == 0 for r in ours)),
    ]
    grouped = by_name.get("gu1-sync, grouped")
    if grouped is not None:
        checks.append(("the blocks in at most 3 messages, grouped", grouped["slack_messages"] <= 3))
    for what, met in checks:
        print(f"target: {what:<55} {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()

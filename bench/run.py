"""gu1-sync's benchmarks, by hand: `make bench` (needs redis-server on PATH, or $REDIS_URL).

Every figure is printed next to a baseline measured in the same run, on the same machine, served
or run the same way (bench/bare.py, RQ with a no-op job), and their ratio; then the target from
issue 6. Nothing here asserts timings: it prints them (see bench/README.md for recorded runs).

    .venv/bin/python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import storage
from harness import (
    PYTHON,
    SESSION,
    Processes,
    closed_loop,
    environment,
    free_port,
    http_ok,
    open_loop,
    percentile,
    redis_url,
    rules,
    signed_events,
    temp_dir,
    wait_until,
    write_config,
)
from worker import gu1_sync, rq_noop

from tests.support.emulators.salesforce import SalesforceEmulator
from tests.support.emulators.slack import SlackEmulator

GUNICORN = str(Path(PYTHON).with_name("gunicorn"))
SERVE = os.environ.get(
    "BENCH_SERVE", "--workers 2 --threads 128"
).split()  # `gu1-sync serve`'s defaults, for both servers


def serve_ours(procs: Processes, config: Path, env: dict) -> int:
    port = free_port()
    command = [PYTHON, "app.py", "--config", str(config), "serve", "--bind", f"127.0.0.1:{port}", *SERVE]
    procs.start(command, env)
    wait_until(lambda: http_ok(port), 30, "the gu1-sync receiver")
    return port


def serve_bare(procs: Processes, env: dict) -> int:
    """bench/bare.py under gunicorn with the settings `gu1-sync serve` uses (gthread, no keep-alive,
    an access log line per request)."""
    port = free_port()
    procs.start(
        [
            GUNICORN,
            "--chdir",
            "bench",
            "--bind",
            f"127.0.0.1:{port}",
            *SERVE,
            "--worker-class",
            "gthread",
            "--keep-alive",
            "0",
            "--timeout",
            "30",
            "--access-logfile",
            "-",
            "--access-logformat",
            '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
            "bare:app",
        ],
        env,
    )
    wait_until(lambda: http_ok(port), 30, "the bare Flask server")
    return port


def receiver(redis: str, count: int, rate: float, seconds: float) -> list[tuple]:
    """Throughput (closed loop, 8 at a time) and ack latency at a fixed rate, each new event signed."""
    directory = temp_dir("receiver")
    config = write_config(directory, redis)  # the receiver only: no worker runs, events wait in SQLite
    env = environment()
    with Processes(directory / "log.txt") as procs:
        ours, bare = serve_ours(procs, config, env), serve_bare(procs, env)
        events = iter(signed_events(3 * count + int(rate * seconds) + 100, seed=1_000_000))
        take = lambda n: [next(events) for _ in range(n)]  # noqa: E731 - a new event every time
        closed_loop(ours, take(100), 8)  # warm both up (imports, connections, the first SQLite pages)
        closed_loop(bare, [r for r in signed_events(100, seed=1)], 8)
        same = signed_events(count, seed=2)  # the bare server keeps nothing: the same bodies will do
        bare_rps = max(closed_loop(bare, same, 8)[0] for _ in range(2))
        ours_rps = max(closed_loop(ours, take(count), 8)[0] for _ in range(2))
        paced = int(rate * seconds)
        bare_ack = [done - due for due, done in open_loop(bare, signed_events(paced, seed=3), rate)]
        ours_ack = [done - due for due, done in open_loop(ours, take(paced), rate)]
        duplicates = closed_loop(ours, take(count)[: count // 2] * 2, 8)[0]  # each body twice: half are 200s
    ms = 1000
    return [
        ("receiver requests/s (8 clients)", ours_rps, bare_rps, ">= 0.6 x bare", ours_rps / bare_rps >= 0.6),
        ("  ... half of them duplicates", duplicates, bare_rps, "", None),
        (f"ack p50 ms at {rate:.0f}/s", percentile(ours_ack, 50) * ms, percentile(bare_ack, 50) * ms, "", None),
        (
            f"ack p99 ms at {rate:.0f}/s",
            percentile(ours_ack, 99) * ms,
            percentile(bare_ack, 99) * ms,
            "<= 10 ms",
            percentile(ours_ack, 99) * ms <= 10,
        ),
    ]


def worker(redis: str, events: int) -> list[tuple]:
    baseline = rq_noop(redis, events)
    ours = gu1_sync(redis, events)
    return [
        (
            "worker events/s, 1 process (vs no-op jobs/s)",
            ours["events_per_s"],
            baseline["jobs_per_s"],
            ">= 300/s",
            ours["events_per_s"] >= 300,
        ),
        ("  worker CPU ms per event", ours["cpu_ms_per_event"], None, "", None),
        (  # issue 6 asked for no more than one; since issue 12 a collection carries up to 200
            "Salesforce API calls per upsert",
            ours["sf_calls_per_upsert"],
            1.0,
            "<= 1",
            ours["sf_calls_per_upsert"] <= 1.0,
        ),
    ]


def _external_id(request: bytes) -> str:
    return json.loads(request.partition(b"\r\n\r\n")[2])["payload"]["entity"]["externalId"]


def _upserted(org: SalesforceEmulator) -> dict[str, float]:
    """When each external id was first upserted: alone (the id ends the path) or in an sObject
    Collection (the ids are in its records)."""
    first: dict[str, float] = {}
    for patch in org.seen("PATCH"):
        if "/composite/sobjects/" in patch.path:
            field = patch.path.rstrip("/").rsplit("/", 1)[1]
            keys = [record.get(field) for record in (patch.json or {}).get("records", [])]
        else:
            keys = [patch.path.rsplit("/", 1)[1]]
        for key in keys:
            first.setdefault(str(key), patch.at)
    return first


def _latencies(org: SalesforceEmulator, due: dict[str, float], what: str) -> list[float]:
    wait_until(lambda: len(_upserted(org).keys() & due.keys()) == len(due), 120, what)
    first = _upserted(org)
    return [first[key] - when for key, when in due.items()]


def end_to_end(redis: str, rate: float, count: int) -> list[tuple]:
    """From the POST to the Salesforce emulator seeing the upsert, at a fixed offered rate."""
    directory = temp_dir("e2e")
    with SalesforceEmulator() as org, SlackEmulator() as workspace, Processes(directory / "log.txt") as procs:
        org.sessions.add(SESSION)
        env = environment(
            SLACK_TOKEN=workspace.token,
            REQUESTS_CA_BUNDLE=org.ca_path,
            BENCH_SF_URL=org.url,
            BENCH_REDIS_URL=redis,
        )
        config = write_config(directory, redis, rules(org.url, workspace.api_url))
        ours = serve_ours(procs, config, env)
        procs.start([PYTHON, "app.py", "--config", str(config), "worker"], env)
        bare = serve_bare(procs, env)
        procs.start(
            [
                str(Path(PYTHON).with_name("rq")),
                "worker",
                "--quiet",
                "--url",
                redis,
                "--path",
                "bench",
                "--worker-class",
                "rq.worker.SimpleWorker",
                "--serializer",
                "rq.serializers.JSONSerializer",
                "bare",
            ],
            env,
        )
        warm = signed_events(2, seed=2_000_000)
        open_loop(ours, warm[:1], rate)
        open_loop(bare, [w.replace(b"/webhooks/", b"/pipeline/", 1) for w in warm[1:]], rate)
        _latencies(org, {_external_id(w): 0.0 for w in warm}, "the warm-up upserts")

        requests = signed_events(count, seed=3_000_000)
        sent = open_loop(ours, requests, rate)
        ours_ms = _latencies(
            org, {_external_id(r): due for r, (due, _) in zip(requests, sent, strict=True)}, "our upserts"
        )
        requests = [r.replace(b"/webhooks/", b"/pipeline/", 1) for r in signed_events(count, seed=4_000_000)]
        sent = open_loop(bare, requests, rate)
        bare_ms = _latencies(
            org, {_external_id(r): due for r, (due, _) in zip(requests, sent, strict=True)}, "baseline upserts"
        )
    ours_ms = [x * 1000 for x in ours_ms]
    bare_ms = [x * 1000 for x in bare_ms]
    return [
        (f"end-to-end p50 ms at {rate:.0f}/s", percentile(ours_ms, 50), percentile(bare_ms, 50), "", None),
        (
            f"end-to-end p99 ms at {rate:.0f}/s",
            percentile(ours_ms, 99),
            percentile(bare_ms, 99),
            "<= 50 ms",
            percentile(ours_ms, 99) <= 50,
        ),
    ]


def table(rows: list[tuple]) -> str:
    lines = [f"{'measure':46} {'gu1-sync':>10} {'baseline':>10} {'ratio':>7}  {'target':14} {'met':>4}"]
    for name, ours, base, target, met in rows:
        ratio = f"{ours / base:7.2f}" if base else " " * 7
        base_text = f"{base:10.1f}" if base is not None else " " * 10
        verdict = "" if met is None else ("yes" if met else "NO")
        lines.append(f"{name:46} {ours:10.1f} {base_text} {ratio}  {target:14} {verdict:>4}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer requests and events (a smoke run).")
    parser.add_argument(
        "--only", choices=["receiver", "worker", "e2e", "storage"], action="append", help="Run only these."
    )
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    parts = args.only or ["receiver", "worker", "e2e", "storage"]
    notes = []
    rows: list[tuple] = []
    with redis_url() as redis:
        if "receiver" in parts:
            rows += receiver(redis, count=int(3000 * scale), rate=500, seconds=10 * scale)
        if "worker" in parts:
            rows += worker(redis, events=int(2000 * scale))
        if "e2e" in parts:
            rows += end_to_end(redis, rate=50, count=int(500 * scale))
        if "storage" in parts:  # PostgreSQL next to SQLite (bench/storage.py)
            problem = storage.postgres_problem()
            if problem:
                notes.append(f"PostgreSQL rows skipped: {problem}")
            else:
                rows += storage.measure(redis, quick=args.quick)
    print(table(rows))
    for note in notes:
        print(note)
    print(
        "baselines: bench/bare.py under the same gunicorn settings (receiver, and a Flask + RQ + requests pipeline"
        " for end-to-end); RQ's SimpleWorker running a no-op job (worker). Throughput: the better of two runs."
    )


if __name__ == "__main__":
    main()

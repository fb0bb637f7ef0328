"""Slow clients against the receiver, by hand: `.venv/bin/python bench/slow_clients.py [--stalled N]`.

N connections (200 by default) each send a webhook's headers (half of them also the first byte of a
100 kB body) and stall; meanwhile genuine signed webhooks are sent one after another, each on a new
connection as Gu1 does. Printed for each server set-up, next to the same set-up with no stalled
client (the baseline of the same run): genuine webhooks answered, and their p50/p99/max latency.

Set-ups: gu1-sync as `serve` runs it now (its gthread worker with a read deadline, 128 threads per
process), and gunicorn's stock gthread with 4 threads per process (what `serve` ran before), both
with 2 processes.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from pathlib import Path

from harness import PYTHON, Processes, environment, free_port, http_ok, percentile, redis_url, temp_dir, wait_until
from harness import signed_events as build_events

GENUINE = 300


def stall(port: int, count: int) -> list[socket.socket]:
    held = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        head = b"POST /webhooks/gu1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 100000\r\n\r\n{" if n % 2 else head)
        held.append(sock)
    return held


def genuine(port: int, requests: list[bytes]) -> list[float | None]:
    """Each request's latency, or None when it was not answered within 5 s (after 5 of those in a row,
    the rest is not tried: the server is starved)."""
    out: list[float | None] = []
    for raw in requests:
        if len(out) >= 5 and all(x is None for x in out[-5:]):
            out += [None] * (len(requests) - len(out))
            break
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(raw)
                answer = sock.recv(64)
            out.append(time.perf_counter() - started if answer.startswith(b"HTTP/1.1 2") else None)
        except OSError:
            out.append(None)
    return out


def measure(setup: str, command: list[str], stalled: int, redis: str) -> dict:
    directory = temp_dir("slow")
    config = directory / "config.yaml"
    config.write_text(
        f'version: 1\nstorage: {{path: events.db}}\nqueue: {{redis_url: "{redis}"}}\n'
        'sources:\n  gu1: {kind: gu1, environment: production, secrets: ["${GU1_SECRET}"]}\n'
    )
    env = environment(GU1_SYNC_LOG_LEVEL="WARNING", GU1_SYNC_CONFIG=str(config))
    results = {}
    with Processes(directory / "server.log") as procs:
        port = free_port()
        procs.start([part.format(port=port) for part in command], env)
        wait_until(lambda: http_ok(port), 30, "the receiver")
        time.sleep(2)  # both processes booted
        for label, count in (("baseline", 0), ("stalled", stalled)):
            held = stall(port, count)
            time.sleep(0.3)
            latencies = genuine(port, build_events(GENUINE, seed=count + len(setup)))
            for sock in held:
                sock.close()
            answered = [x for x in latencies if x is not None]
            results[label] = {
                "answered": f"{len(answered)}/{len(latencies)}",
                "p50_ms": round(statistics.median(answered) * 1000, 1) if answered else None,
                "p99_ms": round(percentile(answered, 99) * 1000, 1) if answered else None,
                "max_ms": round(max(answered) * 1000, 1) if answered else None,
            }
            time.sleep(1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=200)
    args = parser.parse_args()
    gunicorn = str(Path(PYTHON).with_name("gunicorn"))
    setups = {
        "gu1-sync serve (read deadline, 128 threads/process)": [
            PYTHON, "app.py", "serve", "--bind", "127.0.0.1:{port}", "--workers", "2",
        ],
        "stock gthread, 4 threads/process (serve before)": [
            gunicorn, "--bind", "127.0.0.1:{port}", "--workers", "2", "--threads", "4", "--worker-class", "gthread",
            "--keep-alive", "0", "app:wsgi()",
        ],
    }  # fmt: skip
    with redis_url() as redis:
        for setup, serve in setups.items():
            result = measure(setup, serve, args.stalled, redis)
            base, hit = result["baseline"], result["stalled"]
            ratio = f"{hit['p99_ms'] / base['p99_ms']:.2f}" if hit["p99_ms"] and base["p99_ms"] else "n/a"
            print(f"{setup}\n  no stalled client: {base}\n  {args.stalled} stalled:      {hit}  p99 ratio {ratio}")


if __name__ == "__main__":
    main()

"""Slow clients cannot starve intake, through the real gunicorn as `serve` runs it: with 200
connections that send a request's start and stall, genuine webhooks are still answered; each stalled
request is dropped at its read deadline, with a 408 (its headers never came in full, or its body)."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from gu1sync import samples
from tests.support.helpers import ROOT, SECRETS, config_text, dumps, free_port, gu1_headers, wait_until

STALLED = 200
READ_TIMEOUT = 2.0


@pytest.fixture
def receiver(tmp_path, redis_url):
    config = tmp_path / "config.yaml"
    config.write_text(config_text(redis_url) + f"receiver: {{read_timeout: {READ_TIMEOUT}s}}\n")
    port = free_port()
    with open(tmp_path / "server.log", "w+") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--config", str(config), "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env={**os.environ, **SECRETS},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Both receiver processes up (200 stalled clients are more than one process's threads).
            answering: set[str] = set()
            wait_until(
                lambda: len(_answering(port, answering)) == 2 or process.poll() is not None,
                timeout=60,
                what="both receiver processes",
            )
            assert process.poll() is None, log.read()
            yield port
        finally:
            process.terminate()
            process.wait(30)


def _answering(port: int, seen: set[str]) -> set[str]:
    """The receiver processes that have answered a scrape of /metrics so far (it names its process)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/metrics")
        seen.update(re.findall(r"# gu1-sync process (\d+)", conn.getresponse().read().decode()))
    except OSError:  # not listening yet
        return seen
    return seen


def _stall(port: int, *, in_body: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    start = b"POST /webhooks/gu1-prod HTTP/1.1\r\nHost: gu1-sync\r\nContent-Type: application/json\r\n"
    sock.sendall(start + b"Content-Length: 100000\r\n\r\n{" if in_body else start)
    return sock


def test_two_hundred_stalled_clients_do_not_starve_genuine_webhooks(receiver):
    stalled = [_stall(receiver, in_body=n % 2 == 0) for n in range(STALLED)]  # half in their body, half headers
    try:
        time.sleep(0.3)  # they have reached the receiver and hold what they hold
        for n in range(20):
            body = dumps(samples.sample("entity.updated", seed=n))
            conn = http.client.HTTPConnection("127.0.0.1", receiver, timeout=READ_TIMEOUT)
            conn.request("POST", "/webhooks/gu1-prod", body=body, headers=gu1_headers(body))
            # Answered at all, and well before the stalled ones are dropped (how fast: bench/slow_clients.py).
            assert conn.getresponse().status == 202
        for sock in stalled:  # each is dropped at its deadline, told why
            sock.settimeout(READ_TIMEOUT + 10)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            assert b'"request_timeout"' in answer or b"Content-Length" in answer
    finally:
        for sock in stalled:
            sock.close()


def test_a_stalled_body_gets_a_json_408(receiver):
    sock = _stall(receiver, in_body=True)
    sock.settimeout(READ_TIMEOUT + 10)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head
    assert json.loads(body) == {
        "error": "request_timeout",
        "message": "the body did not arrive within the read deadline",
    }

"""The receiver as it runs in production: gunicorn on a real socket, spoken to over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from gu1sync import samples
from gu1sync.storage import Store
from tests.support.helpers import ROOT, SECRETS, config_text, dumps, free_port, gu1_headers

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_choice):
    directory = tmp_path_factory.mktemp("served")
    config = directory / "config.yaml"
    config.write_text(config_text(redis_choice.url or "redis://127.0.0.1:1/0"))
    port = free_port()
    log = open(directory / "server.log", "w+")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "app.py",
            "--config",
            str(config),
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "2",
        ],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the receiver did not start:\n{log.read()}") from None
            time.sleep(0.1)
    yield {"port": port, "store": Store(str(directory / "events.db")), "log": log}
    process.terminate()
    process.wait(30)
    log.close()


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else None


def test_signed_event_round_trip_over_http(server):
    body = dumps(samples.sample("entity.status_changed", seed=1))
    status, answer = request(server["port"], "POST", "/webhooks/gu1-prod", body, gu1_headers(body))
    assert status == 202 and answer["duplicate"] is False
    assert server["store"].event(answer["id"]).raw == body
    status, again = request(server["port"], "POST", "/webhooks/gu1-prod", body, gu1_headers(body))
    assert (status, again) == (200, {"id": answer["id"], "duplicate": True})


def test_forged_event_over_http_is_401(server):
    body = dumps(samples.sample("entity.status_changed", seed=2))
    status, answer = request(server["port"], "POST", "/webhooks/gu1-prod", body, gu1_headers(body, "forged"))
    assert status == 401 and answer["error"] == "signature_mismatch"


def test_readyz_over_http(server, redis_choice):
    status, answer = request(server["port"], "GET", "/readyz")
    assert answer["checks"]["database"] == {"ok": True}
    assert answer["checks"]["redis"] == {"ok": bool(redis_choice.url)}
    assert status == 200  # Redis is reported, and does not take the receiver out of a balancer


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_oversized_body_is_refused_before_it_is_sent(server):
    """Content-Length over the limit: the 413 arrives before a single byte of the body is sent."""
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
        sock.sendall(
            b"POST /webhooks/gu1-prod HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-Webhook-Signature: {'0' * 64}\r\nContent-Length: {100 * LIMIT}\r\n\r\n".encode()
        )
        head = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b"\r\nConnection: close\r\n" in head  # nothing more of that body will be read


def test_oversized_chunked_body_is_refused(server):
    """No Content-Length (chunked): the limit trips while reading, not after reading everything."""
    chunk = b"x" * 65536
    sent = [0]

    def send_until_refused(sock: socket.socket) -> None:
        try:
            while sent[0] < 50 * LIMIT:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent[0] += len(chunk)
        except OSError:
            pass  # the server closed the connection: it stopped reading

    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
        sock.sendall(
            b"POST /webhooks/gu1-prod HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"X-Webhook-Signature: {'0' * 64}\r\n\r\n".encode()
        )
        sender = threading.Thread(target=send_until_refused, args=(sock,), daemon=True)
        sender.start()  # keep sending while we read, as a client that does not wait would
        head = _read_response(sock)
        sender.join(10)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert sent[0] < 50 * LIMIT


def test_a_chunked_body_within_the_limit_is_accepted(server):
    envelope = samples.sample("entity.created", seed=3)
    body = dumps({**envelope, "padding": "p" * (LIMIT - len(dumps(envelope)) - 20)})
    assert LIMIT - 100 < len(body) <= LIMIT
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=10)
    pieces = (body[i : i + 50_000] for i in range(0, len(body), 50_000))
    conn.request("POST", "/webhooks/gu1-prod", body=pieces, headers=gu1_headers(body), encode_chunked=True)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 202, answer
    assert server["store"].event(answer["id"]).raw == body


def test_the_server_survives_all_of_that(server):
    assert request(server["port"], "GET", "/healthz") == (200, {"status": "ok"})

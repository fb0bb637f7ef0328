"""A local HTTP(S) server for emulating a service: it records every request and can be told to fail.

Subclasses implement `route(request) -> Response`. Tests inspect `requests` and inject faults with
`fail(...)` (a status and body as the real service would send them, a delay, or a dropped
connection), which are consumed in order before the normal route runs: the next `times` matching
requests, or every matching request for the next `during` seconds (an outage, a rate-limit storm).
Each request records when it arrived, from which client port, and the status it was answered with
(None while it is in flight), so that a test can tell what took effect and who was mid-call.
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request the emulator saw."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes
    at: float = 0.0  # time.monotonic() on arrival
    client_port: int = 0
    status: int | None = None  # the answer's status, set before it is written; None: in flight, or dropped
    reply_lost: bool = False  # the client was gone before it could read the answer
    finished: bool = False  # answered, dropped, or its client gone

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.raw.decode()).items()}


@dataclass
class Response:
    status: int
    body: Any = b""  # bytes, str, or JSON-able
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json; charset=utf-8"


@dataclass
class Fault:
    method: str | None
    path: re.Pattern
    response: Response | None
    delay: float
    times: int
    drop: bool
    until: float | None = None  # time.monotonic() after which it stops (then `times` is not counted)


class Emulator:
    """Start with `with Emulator() as e:`; `e.url` is its base URL."""

    scheme = "http"

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.requests: list[Request] = []
        self.latency = 0.0  # seconds every answer takes, as a real service's would (benchmarks)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle's algorithm the body would wait
            # for the client's delayed ACK (40 ms a response), which no real service makes anyone wait.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet: the test reads `requests`
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers),
                    raw,
                    at=time.monotonic(),
                    client_port=self.client_address[1],
                )
                with emulator._lock:
                    emulator.requests.append(request)
                try:
                    self._answer(request)
                finally:
                    request.finished = True

            def _answer(self, request: Request) -> None:
                response = emulator._dispatch(request)
                if response is None:  # a dropped connection
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                request.status = response.status
                body, content_type = response.encoded()
                try:
                    self.send_response(response.status)
                    headers = {"Content-Type": content_type, **response.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client died mid-call (a killed worker)
                    request.reply_lost = True
                    self.close_connection = True

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.scheme = "https"
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> Emulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(
        self,
        path: str,
        status: int = 500,
        body: Any = b"",
        *,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
        drop: bool = False,
        during: float | None = None,
    ) -> None:
        """The next `times` requests whose path matches `path` (a regex) get this answer instead; with
        `during`, every matching request for the next `during` seconds does."""
        response = None if drop else Response(status, body, headers or {})
        with self._lock:
            self._faults.append(Fault(method, re.compile(path), response, delay, times, drop, _until(during)))

    def stall(self, path: str, seconds: float, *, times: int = 1, during: float | None = None) -> None:
        """The next matching requests (or all of them for `during` seconds) are answered normally, but
        only after `seconds`."""
        with self._lock:
            self._faults.append(Fault(None, re.compile(path), None, seconds, times, False, _until(during)))

    def clear_faults(self) -> None:
        """Forget every fault not yet used up: the service is healthy again."""
        with self._lock:
            self._faults.clear()

    def _dispatch(self, request: Request) -> Response | None:
        fault = None
        now = time.monotonic()
        with self._lock:
            self._faults = [f for f in self._faults if f.until is None or f.until > now]
            for candidate in self._faults:
                if (candidate.method in (None, request.method)) and candidate.path.search(request.path):
                    if candidate.until is None:
                        candidate.times -= 1
                        if candidate.times <= 0:
                            self._faults.remove(candidate)
                    fault = candidate
                    break
        if self.latency:
            time.sleep(self.latency)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                return None
            if fault.response is not None:
                return fault.response
        return self.route(request)

    def route(self, request: Request) -> Response:  # pragma: no cover - subclasses
        raise NotImplementedError

    def in_flight(self) -> list[Request]:
        """Requests received and not answered yet (stalled, or being routed)."""
        with self._lock:
            return [r for r in self.requests if not r.finished]

    def seen(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """The requests seen, optionally only those with this method and path (a regex)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (path is None or re.search(path, r.path))
            ]


class _Server(ThreadingHTTPServer):
    """Quiet about clients that vanish mid-request (a worker killed by a test): that is the test's doing."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            return
        super().handle_error(request, client_address)


def _until(during: float | None) -> float | None:
    return None if during is None else time.monotonic() + during

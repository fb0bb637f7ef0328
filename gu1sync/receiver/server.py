"""The receiver's gunicorn worker: gunicorn's threaded worker, with a deadline on reading a request.

A client that sends part of a request and stalls holds a thread while the rest is awaited. Two things
keep such clients from starving the webhooks that matter:

- threads are many (`serve --threads`, 128 per process by default: a thread waiting on a socket costs
  a little memory and no CPU, and the pool starts them only when they are needed);
- no request may take longer than `receiver.read_timeout` to arrive, headers and body together. A
  watchdog thread stops the reading side of a connection past its deadline: still in its headers,
  it is answered 408 here and closed; in its body, the app answers 408 (routes._read_body asks
  `timed_out`).

A proxy in front that buffers whole requests before passing them on (nginx does by default, with
client_header_timeout and client_body_timeout) takes slow clients off gu1-sync altogether.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

log = logging.getLogger(__name__)

WATCH_EVERY = 0.25  # seconds between the watchdog's rounds
TIMEOUT_BODY = json.dumps(
    {"error": "request_timeout", "message": "the request did not arrive within the read deadline"}
).encode()
TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\n\r\n" + TIMEOUT_BODY
)

# The requests of this process still arriving: id(socket) -> [socket, deadline, in its body?].
_arriving: dict[int, list[Any]] = {}
_late: set[int] = set()  # sockets whose reading was stopped at their deadline, still being answered
_lock = threading.Lock()


def body_read(sock: Any) -> None:
    """The app has the whole body: this request is no longer arriving."""
    with _lock:
        _arriving.pop(id(sock), None)


def timed_out(sock: Any) -> bool:
    """Whether this request's reading was stopped because it passed its deadline."""
    with _lock:
        return id(sock) in _late


class ReceiverWorker(ThreadWorker):
    """gthread, with a deadline on the arrival of each request."""

    read_timeout: float = 10.0  # set by `serve` from receiver.read_timeout, before gunicorn forks

    def init_process(self) -> None:
        threading.Thread(target=_watch, name="gu1sync-read-deadline", daemon=True).start()
        super().init_process()

    def handle(self, conn: Any) -> Any:
        key = id(conn.sock)
        with _lock:
            _arriving[key] = [conn.sock, time.monotonic() + self.read_timeout, False]
        try:
            return super().handle(conn)
        finally:
            with _lock:
                _arriving.pop(key, None)
                _late.discard(key)

    def handle_request(self, req: Any, conn: Any) -> Any:
        with _lock:  # the headers are in; the body is read by the app, which says when it has it
            entry = _arriving.get(id(conn.sock))
            if entry is not None:
                entry[2] = True
        return super().handle_request(req, conn)


def _watch() -> None:
    while True:
        time.sleep(WATCH_EVERY)
        now = time.monotonic()
        with _lock:
            late = [entry for entry in _arriving.values() if entry[1] < now]
            for sock, _, _ in late:
                _arriving.pop(id(sock), None)
                _late.add(id(sock))
        for sock, _, in_body in late:
            _stop(sock, in_body)


def _stop(sock: Any, in_body: bool) -> None:
    """Stop reading a late request: the thread waiting on it goes free. In its body, the app answers 408;
    still in its headers, the answer is sent from here (a client still reading sees why) and it is closed."""
    steps = [lambda: sock.shutdown(socket.SHUT_RD)] if in_body else [lambda: _answer(sock), lambda: _close(sock)]
    for step in steps:
        try:
            step()
        except OSError as exc:  # the client is gone already
            log.debug("dropping a slow connection: %s", exc)


def _answer(sock: Any) -> None:
    sock.settimeout(1.0)
    sock.sendall(TIMEOUT_ANSWER)


def _close(sock: Any) -> None:
    sock.shutdown(socket.SHUT_RDWR)

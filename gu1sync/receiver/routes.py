"""POST /webhooks/<source>: verify, store, deduplicate, enqueue, answer; the health endpoints; /metrics.

The order matters: the source is looked up before the body is read, the size is checked before
anything is verified, the signature before the body is parsed, and the event is committed to
SQLite before the 2xx is sent. Nothing about a body is logged except ids and the event type.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from dataclasses import dataclass

from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..config import Config
from ..core.body import body_digest, parse_json
from ..core.errors import NotAuthentic, Unreadable
from ..core.records import Event, event_id, make_event
from ..core.status import EventStatus
from ..core.timeutil import Clock, iso
from ..kinds import Kind
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import render as render_metrics
from ..queue import BackgroundEnqueuer, EventQueue
from ..runtime import Runtime
from ..storage import Store, StoreUnavailable
from ..storage.groupcommit import GroupCommit
from .errors import (
    BadRequest,
    Forbidden,
    HTTPProblem,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from .server import body_read, timed_out

log = logging.getLogger(__name__)

# Headers worth keeping with each delivery for debugging; none of them is secret or personal.
KEPT_HEADERS = (
    "Content-Type",
    "Content-Length",
    "User-Agent",
    "X-Webhook-ID",
    "X-Webhook-Event",
    "X-Webhook-Timestamp",
    "webhook-id",
    "webhook-timestamp",
)


@dataclass
class Services:
    """What the receiver works with; one per app. `config` is the config the app started with: the
    receiver reads `sources` (and their secrets) when it starts, not on every change of the file."""

    runtime: Runtime
    config: Config
    kinds: dict[str, Kind]
    # In a server: events are committed together (one sync for the requests that came together) and
    # queued from a thread, many per round trip. Elsewhere each is committed and queued on its own.
    committer: GroupCommit | None = None
    enqueuer: BackgroundEnqueuer | None = None

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def queue(self) -> EventQueue:
        return self.runtime.queue

    @property
    def clock(self) -> Clock:
        return self.runtime.clock


def services() -> Services:
    """The running app's services."""
    return current_app.extensions["gu1sync"]


blueprint = Blueprint("receiver", __name__)
# Every answer here is JSON: no automatic OPTIONS answers (Flask's are empty HTML; a method not served
# is a 405 like any other), and no HTML redirect from //webhooks/x to /webhooks/x (a 404 like any other).
ROUTE_OPTIONS = {"provide_automatic_options": False, "merge_slashes": False}


def _read_body(req: Request, limit: int) -> bytes:
    """The body; 413 without reading further than `limit` + 1 bytes; 400 when it cannot be read; 408
    when it does not arrive within receiver.read_timeout (server.ReceiverWorker stops the reading).

    A Content-Length over the limit is refused before anything is read. A chunked body has no
    length, so the app's MAX_CONTENT_LENGTH is limit + 1: werkzeug stops reading there (and says
    nothing when it reaches its limit exactly), and one byte over our limit is the tell.
    """
    too_large = PayloadTooLarge("payload_too_large", f"the body is over {limit} bytes")
    if req.content_length is not None and req.content_length > limit:
        raise too_large
    sock = req.environ.get("gunicorn.socket")
    try:
        body = req.get_data(cache=False)
    except RequestEntityTooLarge:
        raise too_large from None
    except Exception:  # whatever the server's reader raises: werkzeug's ClientDisconnected, gunicorn's bad chunk
        if sock is not None and timed_out(sock):
            raise RequestTimeout("request_timeout", "the body did not arrive within the read deadline") from None
        raise BadRequest("bad_request", "the body could not be read: it ended early or its chunks are broken") from None
    finally:
        if sock is not None:
            body_read(sock)
    if sock is not None and timed_out(sock):  # its reading was stopped: what came is not the whole body
        raise RequestTimeout("request_timeout", "the body did not arrive within the read deadline")
    if len(body) > limit:
        raise too_large
    return body


def printable(text: str | None, limit: int = 100) -> str:
    """Text from a sender, safe for one log line (no newlines or control characters)."""
    return "-" if text is None else text[:limit].encode("unicode_escape").decode("ascii")


def _kept_headers(req: Request) -> dict[str, str]:
    return {name: req.headers[name][:200] for name in KEPT_HEADERS if name in req.headers}


@blueprint.post("/webhooks/<source_name>", **ROUTE_OPTIONS)
def receive(source_name: str):
    """Accept one webhook delivery."""
    started = time.perf_counter()
    svc = services()
    request.environ["gu1sync.source"] = "?"
    kind = svc.kinds.get(source_name)
    if kind is None:
        raise NotFound("unknown_source", "no source with this name is configured")
    request.environ["gu1sync.source"] = source_name
    source = svc.config.sources[source_name]
    if not svc.runtime.ready.is_set():  # the schema waits for another process's lock: Gu1 retries
        raise ServiceUnavailable("storage_unavailable", "the database is not ready yet; retry later")
    body = _read_body(request, svc.config.receiver.max_body_bytes)
    received = svc.clock()
    try:
        secret = kind.verify(request.headers, body, received)
    except NotAuthentic as refused:
        raise Unauthorized(refused.reason, refused.message) from None

    base = dict(source=source_name, kind=kind.name, environment=source.environment, received_at=iso(received))
    try:
        document = parse_json(body)
        if not isinstance(document, dict):
            raise BadRequest("not_an_object", "the body is JSON but not an object")
        try:
            envelope = kind.parse(document, request.headers)
        except Unreadable as refused:
            raise BadRequest(refused.reason, refused.message) from None
        event = make_event(envelope=envelope, raw=body, secret=secret, **base)
    except BadRequest as problem:
        _keep_invalid(svc, base, body, secret, problem)
        raise
    except (ValueError, ArithmeticError, UnicodeError):  # unreadable JSON, or values no event can hold
        problem = BadRequest("invalid_json", "the body is not JSON an event can be read from")
        _keep_invalid(svc, base, body, secret, problem)
        raise problem from None

    new = _store(svc, event)
    if not new:
        queued = "-"
    elif svc.enqueuer is not None:
        svc.enqueuer.enqueue(event.id)
        queued = "soon"
    else:
        queued = str(svc.queue.enqueue(event.id)).lower()
    took = (time.perf_counter() - started) * 1000
    log.info(
        "accepted event=%s source=%s type=%s secret=%s duplicate=%s queued=%s ms=%.1f",
        event.id,
        source_name,
        printable(event.type),
        secret,
        str(not new).lower(),
        queued,
        took,
        extra={
            "event_id": event.id,
            "source": source_name,
            "event_type": printable(event.type),
            "secret": secret,
            "duplicate": not new,
            "queued": queued,
            "ms": round(took, 1),
        },
    )
    return jsonify(id=event.id, duplicate=not new), 202 if new else 200


def _store(svc: Services, event: Event) -> bool:
    try:
        recorder = svc.committer or svc.store
        return recorder.record(event, _kept_headers(request))
    except StoreUnavailable as exc:
        log.error("cannot store event=%s source=%s: %s", event.id, event.source, exc)
        raise ServiceUnavailable("storage_unavailable", "the event could not be stored; retry later") from None


def _keep_invalid(svc: Services, base: dict, body: bytes, secret: str, problem: BadRequest) -> None:
    """Keep an authentic but unreadable body for inspection; its id goes back in the 400."""
    dedupe_key = f"{base['kind']}:{base['environment']}:invalid:{body_digest(body)}"
    event = Event(
        id=event_id(dedupe_key),
        dedupe_key=dedupe_key,
        type=None,
        occurred_at=None,
        payload=None,
        raw=body,
        secret=secret,
        status=EventStatus.INVALID,
        error=problem.reason,
        **base,
    )
    _store(svc, event)
    problem.extra["id"] = event.id


@blueprint.get("/healthz", **ROUTE_OPTIONS)
def healthz():
    """The process is up."""
    return jsonify(status="ok")


@blueprint.get("/readyz", **ROUTE_OPTIONS)
def readyz():
    """Whether a load balancer should send webhooks here: the config is loaded, the database takes
    writes, and the box is not draining; 200, else 503 naming what failed. Redis is reported and does
    not count: while it is away webhooks are still accepted (they wait in the database), and taking
    every receiver out of the balancer for it would turn Gu1's retries into failures."""
    svc = services()
    checks = {"config": {"ok": True, "version": svc.config.digest, "sources": sorted(svc.config.sources)}}
    if os.path.exists(svc.config.drain_path):
        checks["drain"] = {"ok": False, "error": "draining (gu1-sync drain): webhooks are still accepted"}
    try:
        if not svc.runtime.ready.is_set():
            waiting = "waiting for another process's lock to bring the schema up to date"
            failed = "the schema could not be brought up to date; see the log"
            checks["database"] = {"ok": False, "error": failed if svc.runtime.ready.failed else waiting}
        else:
            svc.store.check_writable()
            checks["database"] = {"ok": True}
    except StoreUnavailable as exc:
        log.error("readyz: the database cannot be written: %s", exc)  # the details (a path) stay in the log
        checks["database"] = {"ok": False, "error": "cannot write to the database; see the log"}
    checks["redis"] = {"ok": svc.queue.ping()}
    ready = all(check["ok"] for name, check in checks.items() if name != "redis")
    return jsonify(ready=ready, checks=checks), 200 if ready else 503


@blueprint.get("/metrics", **ROUTE_OPTIONS)
def metrics():
    """Prometheus' text format, for the addresses `metrics.allow` lets in (and the bearer of `metrics.token`)."""
    svc = services()
    settings = svc.config.metrics
    client = ipaddress.ip_address(request.remote_addr or "0.0.0.0")
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped  # ::ffff:10.0.0.5 on a dual-stack socket is 10.0.0.5
    if not any(client in ipaddress.ip_network(network, strict=False) for network in settings.allow):
        raise Forbidden("metrics_forbidden", "this address may not read /metrics (metrics.allow)")
    if settings.token is not None:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {settings.token.value}".encode()):
            raise Unauthorized("metrics_unauthorized", "/metrics needs Authorization: Bearer <metrics.token>")
    try:
        if not svc.runtime.ready.is_set():
            raise StoreUnavailable("the schema is not up to date yet (another process holds the lock)")
        body = render_metrics(svc.runtime)
    except StoreUnavailable as exc:
        log.error("metrics: the database cannot be read: %s", exc)
        raise ServiceUnavailable("storage_unavailable", "the database cannot be read; retry later") from None
    return Response(body, content_type=METRICS_CONTENT_TYPE)


def _rejected(status: int, reason: str, message: str, extra: dict | None = None):
    svc = current_app.extensions.get("gu1sync")
    source = request.environ.get("gu1sync.source")
    if source is not None and svc is not None:  # a webhook route: count it and say why, never what
        log.warning(
            "rejected source=%s status=%d reason=%s remote=%s",
            source,
            status,
            reason,
            request.remote_addr,
            extra={"source": source, "status": status, "reason": reason, "remote": request.remote_addr},
        )
        if status != 503:  # a 503 means SQLite is out of reach: counting it there would only wait again
            try:
                svc.store.count_rejection(source, reason, status)
            except StoreUnavailable as exc:
                log.error("cannot count rejection source=%s reason=%s: %s", source, reason, exc)
    response = jsonify(error=reason, message=message, **(extra or {}))
    response.status_code = status
    if status in (408, 413):
        response.headers["Connection"] = "close"  # do not drain the rest of an oversized or late body
    return response


def install_error_handlers(app: Flask) -> None:
    """One place where every error becomes a JSON answer with a precise status."""

    @app.errorhandler(HTTPProblem)
    def _problem(exc: HTTPProblem):
        body = exc.to_dict()
        response = _rejected(exc.status, body.pop("error"), body.pop("message"), body)
        if isinstance(exc, ServiceUnavailable):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        reason = (exc.name or "error").lower().replace(" ", "_")
        return _rejected(exc.code or 500, reason, exc.description or reason)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _rejected(500, "internal_error", "unexpected error; it has been logged")

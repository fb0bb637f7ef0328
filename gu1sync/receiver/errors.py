"""The receiver's error family: each class is one HTTP status, turned into JSON in one handler
(routes.install_error_handlers). A kind's NotAuthentic becomes Unauthorized, its Unreadable BadRequest."""

from __future__ import annotations


class HTTPProblem(Exception):
    """A request that gets a precise status and a JSON body `{error, message}`."""

    status = 500

    def __init__(self, reason: str, message: str = "", **extra: object):
        self.reason = reason
        self.message = message or reason.replace("_", " ")
        self.extra = extra
        super().__init__(f"{self.status} {reason}: {self.message}")

    def to_dict(self) -> dict:
        """The JSON body of the response."""
        return {"error": self.reason, "message": self.message, **self.extra}


class BadRequest(HTTPProblem):
    """The request is authentic but not something we can read (400)."""

    status = 400


class Unauthorized(HTTPProblem):
    """The signature is missing, malformed or wrong, or its timestamp is out of tolerance (401)."""

    status = 401


class Forbidden(HTTPProblem):
    """This client may not have this (403): /metrics from an address metrics.allow does not list."""

    status = 403


class NotFound(HTTPProblem):
    """No such source or path (404)."""

    status = 404


class RequestTimeout(HTTPProblem):
    """The request did not arrive within receiver.read_timeout (408)."""

    status = 408


class PayloadTooLarge(HTTPProblem):
    """The body is over the configured limit (413)."""

    status = 413


class ServiceUnavailable(HTTPProblem):
    """We cannot store the event right now; the sender should retry (503)."""

    status = 503
    retry_after = 1

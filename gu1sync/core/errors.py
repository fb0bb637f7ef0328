"""Why a delivery is refused, said the same way whoever reads it: a stable reason code
(`signature_mismatch`, `invalid_json`...) and a message for the sender. The receiver answers these
with 401 and 400; `simulate` and `send-test` say them in words."""

from __future__ import annotations


class Refused(Exception):
    """A delivery that cannot be taken as an event; `reason` is the stable code, `status` the HTTP
    status the receiver answers it with."""

    status = 400

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason
        self.message = message or reason.replace("_", " ")
        super().__init__(f"{reason}: {self.message}")


class NotAuthentic(Refused):
    """The signature is missing, malformed or wrong, or its timestamp is out of tolerance."""

    status = 401


class Unreadable(Refused):
    """Authentic, but not an event this kind of source sends: not JSON, not an object, no type."""


__all__ = ["NotAuthentic", "Refused", "Unreadable"]

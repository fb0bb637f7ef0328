"""What tests and benchmarks share: where the project is, the secrets and sources the test configs
read, a config on a real file, a settable clock, free ports, signers for each kind of source, and a
waiter.

The signers are written from the senders' docs, independently of gu1sync's verifiers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

SECRETS = {
    "GU1_SECRET": "gu1-production-secret",
    "GU1_SECRET_NEXT": "gu1-production-secret-rotated",
    "GU1_SANDBOX_SECRET": "gu1-sandbox-secret",
    "KYC_SECRET": "kyc-provider-secret",
    "STD_SECRET": "whsec_" + base64.b64encode(b"standard-webhooks-test-key-32byt").decode(),
}


SOURCES_YAML = """
sources:
  gu1-prod:
    kind: gu1
    environment: production
    secrets: ["${GU1_SECRET}", "${GU1_SECRET_NEXT}"]
  gu1-sandbox:
    kind: gu1
    environment: sandbox
    secrets: ["${GU1_SANDBOX_SECRET}"]
  kyc:
    kind: kyc-webhooks
    environment: production
    secrets: ["${KYC_SECRET}"]
  kyc-ts:
    kind: kyc-webhooks
    environment: production
    secrets: ["${KYC_SECRET}"]
    signed_payload: timestamp.body
  std:
    kind: standard
    environment: production
    secrets: ["${STD_SECRET}"]
"""


def config_text(
    redis_url: str,
    sources: str = SOURCES_YAML,
    extra: str = "",
    *,
    busy_timeout: str = "1s",
    storage_url: str | None = None,
) -> str:
    """A test config: SQLite next to the file (or the database at `storage_url`), the given Redis, the test sources."""
    where = f'url: "{storage_url}"' if storage_url else "path: events.db"
    return (
        "version: 1\n"
        f"storage:\n  {where}\n  busy_timeout: {busy_timeout}\n"
        f'queue:\n  redis_url: "{redis_url}"\n  name: test\n  sweep_interval: 1s\n'
        f"{sources}\n{extra}"
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeClock:
    """A clock that stands still unless a test moves it."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def dumps(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


def gu1_headers(body: bytes, secret: str = SECRETS["GU1_SECRET"], event: str | None = None) -> dict[str, str]:
    """Headers as Gu1 sends them (seed 001): hex HMAC-SHA256 of the raw body."""
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "X-Webhook-ID": "550e8400-e29b-41d4-a716-446655440000",  # the webhook *configuration*
        "X-Webhook-Timestamp": "2025-01-15T10:30:00.000Z",
    }
    if event:
        headers["X-Webhook-Event"] = event
    return headers


def kyc_headers(
    body: bytes, timestamp: int, secret: str = SECRETS["KYC_SECRET"], signed: str = "body", event_id: str = ""
) -> dict[str, str]:
    """Headers as the KYC-Webhooks provider sends them (seed 004)."""
    message = body if signed == "body" else f"{timestamp}.".encode() + body
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "KYC-Webhooks/1.0",
        "X-Webhook-Signature": "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest(),
        "X-Webhook-Timestamp": str(timestamp),
    }
    if event_id:
        headers["X-Webhook-ID"] = event_id
    return headers


def std_headers(body: bytes, msg_id: str, timestamp: int, secret: str = SECRETS["STD_SECRET"]) -> dict[str, str]:
    """Standard Webhooks headers, signed with the spec's reference library."""
    from standardwebhooks.webhooks import Webhook

    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):  # noqa: ANN001
    """Poll `predicate` until it gives something true, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")

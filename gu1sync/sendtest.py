"""`send-test`: a realistic, properly signed event sent to a running receiver, and what became of it.

The sample is shaped like the sender's docs (both Gu1 KYC generations), signed with the source's
first configured secret, posted over HTTP, then followed in SQLite until its actions settle.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from . import samples
from .config import Config
from .core.status import ActionStatus, EventStatus
from .core.timeutil import iso, utcnow
from .kinds import kind_for
from .storage import Store

# Action statuses that will not change on their own: the event's story is told.
SETTLED = {status for status in ActionStatus if not status.in_flight}


@dataclass
class Delivery:
    """What was sent and what came back."""

    url: str
    status: int | None
    answer: Any
    error: str | None = None


def build(config: Config, source_name: str, event_type: str, generation: str = "current") -> tuple[bytes, dict]:
    """A sample body for `event_type` in the source's envelope, and the headers that sign it."""
    source = config.sources[source_name]
    now = utcnow()
    gu1 = samples.sample(event_type, generation=generation)
    if source.kind == "gu1":
        document: dict[str, Any] = gu1
    elif source.kind == "kyc-webhooks":
        document = {
            "id": f"evt_{secrets.token_hex(12)}",
            "type": event_type,
            "created": int(now.timestamp()),
            "data": gu1["payload"],
        }
    else:
        document = {"type": event_type, "timestamp": iso(now), "data": gu1["payload"]}
    body = json.dumps(document, ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "gu1-sync send-test",
        **kind_for(source).sign(body, now, event_type),
    }
    if source.kind == "kyc-webhooks":
        headers["X-Webhook-ID"] = document["id"]
    return body, headers


def post(url: str, body: bytes, headers: dict, timeout: float = 30) -> Delivery:
    """POST it, the way Gu1 would (30 s timeout)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Delivery(url, response.status, _decode(response.read()))
    except urllib.error.HTTPError as exc:
        return Delivery(url, exc.code, _decode(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Delivery(url, None, None, f"cannot reach {url}: {reason}")


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def follow(store: Store, event_id: str, wait: float) -> str:
    """Wait up to `wait` seconds for the event to be processed and its actions to settle.

    Returns why it stopped waiting: settled, not_found (this machine's SQLite never saw it),
    or timeout.
    """
    deadline = time.monotonic() + wait
    seen = False
    while time.monotonic() < deadline:
        event = store.event(event_id)
        if event is not None:
            seen = True
            actions = store.actions(event_id)
            finished = event.status in (EventStatus.DONE, EventStatus.INVALID)
            if finished and all(a["status"] in SETTLED for a in actions):
                return "settled"
        time.sleep(0.2)
    return "timeout" if seen else "not_found"

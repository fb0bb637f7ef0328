"""A Slack workspace on localhost: the Web API methods gu1-sync uses (chat.postMessage, auth.test,
conversations.info) with Slack's `{ok: false, error}` answers and 429 + Retry-After, incoming webhooks
with their text answers (`ok`, `no_service`, `invalid_payload`...), and what an admin can do to both:
revoke the token, remove the webhook, archive a channel. slack-sdk talks to it through `base_url`."""

from __future__ import annotations

import itertools
import re
import threading
import time
from typing import Any

from .base import Emulator, Request, Response

WEBHOOK_PATH = "/services/T0000GU1/B0000SYNC/secretwebhookpath"


class SlackEmulator(Emulator):
    def __init__(self, token: str = "xoxb-test-token", channels: dict[str, str] | None = None):
        super().__init__()
        self.token = token
        self.channels = channels or {
            "compliance-alerts": "C0COMPLIANCE",
            "onboarding": "C0ONBOARDING",
            "compliance": "C0COMPLIANCE2",
            "gu1-sync-ops": "C0OPS",
        }
        self.messages: list[dict[str, Any]] = []
        self._ts = itertools.count(1)
        self._state = threading.Lock()
        self.revoked: str | None = None  # the error every call with the token gets, once revoked
        self.webhook_removed = False
        self.archived: set[str] = set()
        # Slack's limit on posts to one channel: about one a second, short bursts allowed. None: no limit.
        # A token bucket per channel: (tokens a second, burst); a post without a token earns a 429.
        self.channel_rate: tuple[float, int] | None = None
        self._buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, when)
        self.ratelimited = 0  # 429s answered for the channel rate

    def revoke(self, error: str = "token_revoked") -> None:
        """The token stops working (an admin revoked it, or the app was removed)."""
        self.revoked = error

    def restore(self) -> None:
        """A token works again (a new one was put in place of the revoked one), and so does the webhook."""
        self.revoked = None
        self.webhook_removed = False

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}{WEBHOOK_PATH}"

    def rate_limit(self, *, during: float, retry_after: int = 1, method: str = "chat.postMessage") -> None:
        """A 429 storm: for `during` seconds every call of `method` gets Slack's rate-limited answer
        (HTTP 429, `Retry-After`, `{ok: false, error: ratelimited}`)."""
        self.fail(
            rf"^/api/{re.escape(method)}$",
            429,
            {"ok": False, "error": "ratelimited"},
            method="POST",
            headers={"Retry-After": str(retry_after)},
            during=during,
        )

    def posts_by_action(self) -> dict[str, int]:
        """How many messages were posted for each action id (carried in the message metadata)."""
        counts: dict[str, int] = {}
        with self._state:
            for message in self.messages:
                payload = (message.get("metadata") or {}).get("event_payload") or {}
                action = payload.get("action_id", "?")
                counts[action] = counts.get(action, 0) + 1
        return counts

    def channel_id(self, name: str) -> str | None:
        name = name.removeprefix("#")
        return self.channels.get(name) or (name if name in self.channels.values() else None)

    def route(self, request: Request) -> Response:
        if request.path == WEBHOOK_PATH and not self.webhook_removed:
            return self._webhook(request)
        if request.path.startswith("/services/"):
            return Response(404, "no_service")
        if request.method != "POST" or not request.path.startswith("/api/"):
            return Response(404, {"ok": False, "error": "unknown_method"})
        method = request.path.removeprefix("/api/")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return Response(200, {"ok": False, "error": "invalid_auth"})
        if self.revoked:
            return Response(200, {"ok": False, "error": self.revoked})
        if method == "auth.test":
            return Response(
                200,
                {
                    "ok": True,
                    "url": "https://acme.slack.com/",
                    "team": "Acme",
                    "user": "gu1-sync",
                    "team_id": "T0000GU1",
                    "user_id": "U0000SYNC",
                    "bot_id": "B0000SYNC",
                },
            )
        if method == "chat.postMessage":
            return self._post(request.json if "json" in request.headers.get("Content-Type", "") else request.form)
        if method == "conversations.info":
            body = request.json if "json" in request.headers.get("Content-Type", "") else request.form
            channel = self.channel_id(str(body.get("channel") or ""))
            if channel is None:
                return Response(200, {"ok": False, "error": "channel_not_found"})
            name = next((n for n, c in self.channels.items() if c == channel), channel)
            return Response(
                200, {"ok": True, "channel": {"id": channel, "name": name, "is_archived": name in self.archived}}
            )
        return Response(200, {"ok": False, "error": "unknown_method"})

    def _post(self, body: dict[str, Any]) -> Response:
        channel = self.channel_id(str(body.get("channel") or ""))
        if channel is None:
            return Response(200, {"ok": False, "error": "channel_not_found"})
        if any(self.channels.get(name) == channel for name in self.archived):
            return Response(200, {"ok": False, "error": "is_archived"})
        if not body.get("text") and not body.get("blocks"):
            return Response(200, {"ok": False, "error": "no_text"})
        if (wait := self._over_rate(channel)) is not None:
            return Response(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(max(1, round(wait)))})
        with self._state:
            ts = f"1700000000.{next(self._ts):06d}"
            message = {**body, "channel": channel, "ts": ts, "at": time.monotonic()}
            self.messages.append(message)
        return Response(
            200, {"ok": True, "channel": channel, "ts": ts, "message": {"text": body.get("text"), "ts": ts}}
        )

    def _over_rate(self, channel: str) -> float | None:
        """None when the channel has a token for one more post (and takes it), else seconds to wait."""
        if self.channel_rate is None:
            return None
        rate, burst = self.channel_rate
        with self._state:
            now = time.monotonic()
            tokens, when = self._buckets.get(channel, (float(burst), now))
            tokens = min(float(burst), tokens + (now - when) * rate)
            if tokens < 1.0:
                self._buckets[channel] = (tokens, now)
                self.ratelimited += 1
                return (1.0 - tokens) / rate
            self._buckets[channel] = (tokens - 1.0, now)
            return None

    def _webhook(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405, "invalid_method")
        try:
            body = request.json
        except ValueError:
            return Response(400, "invalid_payload")
        if not isinstance(body, dict) or (not body.get("text") and not body.get("blocks")):
            return Response(400, "no_text")
        with self._state:
            self.messages.append({"channel": "webhook", **body})
        return Response(200, "ok")

"""Operational alerts: gu1-sync telling its operators when it breaks, in their Slack channel (`ops:`).

Every `ops.check_every`, one process of all (the receiver's or a worker's, whichever holds the lease)
looks at the state every process records, and tells the ops channel about:

- dead letters: one digest per `ops.dead_letters.interval` (never a message per action), by rule and
  error code, with the first action ids and the exact `gu1-sync replay` command;
- a connector whose credentials are refused (a login refused, a token revoked, a webhook gone): at
  once, once per outage, and again when it works again (while refused, a read-only check every
  minute tells when it does);
- a source refusing many signed requests (a secret regenerated in Gu1 but not here?);
- a backlog: the oldest unfinished event too old, or Redis out of reach too long;
- Salesforce's daily API usage above a share of its limit.

Each condition that can hold for a while (all but the digest) is told once when it starts and once
when it ends. Every alert is kept (`gu1-sync alerts`) and logged; when the ops channel itself fails,
the alert goes to the log at ERROR and to /metrics. Alerts carry ids, counts, rule and source names,
error codes and commands, never what an event said about a person.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from connectors import REGISTRY, ActionError, ActionMeta
from connectors.slack import SlackConnector

from .config import Config
from .config.model import OpsSlack
from .core.timeutil import iso, parse_iso
from .queue import redact
from .runtime import Runtime
from .storage import StoreUnavailable
from .storage.ops import OpsLog

log = logging.getLogger(__name__)

LEASE = "ops-alerts"
PROBE_EVERY = 60.0  # seconds between read-only checks of a connector whose credentials are refused
LATE_PER_ROUND = 20  # alerts the ops channel missed, told late in one round once it works again
NOT_CONFIGURED = (
    "ops.slack is not configured: gu1-sync will not tell anyone when it breaks; failures are visible only "
    "through `gu1-sync failed`, `gu1-sync alerts`, /metrics and the logs"
)


@dataclass(frozen=True)
class Alert:
    """One message about gu1-sync's health."""

    kind: str  # dead_letters, credentials, signatures, backlog, redis, salesforce_api
    key: str  # what it is about: a connector, a source, `events`...
    state: str  # firing, resolved, digest
    title: str
    text: str
    since: str | None = None  # when what it tells of began, if not now (credentials: the first refusal)

    @property
    def firing(self) -> bool | None:
        return None if self.state == "digest" else self.state == "firing"


class Notifier:
    """The ops channel: a bot token and a channel, or an incoming webhook (the Slack connector's client)."""

    def __init__(self, settings: OpsSlack | None):
        self.settings = settings
        self.client = SlackConnector(settings) if settings is not None else None

    def send(self, alert: Alert) -> tuple[str, str | None]:
        """(delivery, error): sent, failed (the ops channel refused or is out of reach), or logged."""
        if self.client is None:
            return "logged", None
        params = {"channel": self.settings.channel, "text": alert.text}
        try:
            self.client.execute("slack.post", params, ActionMeta(f"ops-{alert.kind}", "-", "ops"))
        except ActionError as error:
            return "failed", error.message
        return "sent", None


def _ago(since: str | None, now: datetime) -> str:
    moment = parse_iso(since) if since else None
    if moment is None:
        return "a while"
    seconds = max((now - moment).total_seconds(), 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Alerter:
    """Looks at the conditions and tells the ops channel; `tick` does one round (if this process leads)."""

    def __init__(self, runtime: Runtime, holder: str | None = None):
        self.runtime = runtime
        self.ops = OpsLog(runtime.store)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self._notifier: tuple[OpsSlack | None, Notifier] | None = None
        self._redis_down_since: datetime | None = None
        self._probed: dict[str, float] = {}
        self._pruned = float("-inf")

    @property
    def config(self) -> Config:
        return self.runtime.config

    def notifier(self) -> Notifier:
        settings = self.config.ops.slack
        if self._notifier is None or self._notifier[0] != settings:
            self._notifier = (settings, Notifier(settings))
        return self._notifier[1]

    def tick(self) -> list[Alert]:
        """One round: take (or keep) the lease, then look at every condition; the alerts told."""
        now = self.runtime.clock()
        if not self.ops.take_lease(LEASE, self.holder, 3 * self.config.ops.check_every + 5, now):
            return []
        if time.monotonic() - self._pruned > 600:  # per-second refusal counts are needed for a window only
            self.ops.forget_rejections_before(now - timedelta(seconds=max(2 * self.config.ops.signatures.window, 3600)))
            self._pruned = time.monotonic()
        told: list[Alert] = self._tell_late()
        firing = self.ops.firing()
        for check in (self._credentials, self._signatures, self._backlog, self._redis, self._api_usage):
            for alert in check(now, firing):
                told.append(self._tell(alert, now))
        digest = self._dead_letters(now)
        if digest is not None:
            told.append(self._tell(digest, now))
        return told

    def _tell_late(self) -> list[Alert]:
        """Send what the ops channel missed, oldest first, once it takes messages again: an outage of the
        ops channel must not swallow the alerts told during it. While it still fails, one try per round
        (the first failure was logged at ERROR; this says nothing more)."""
        notifier = self.notifier()
        if notifier.client is None:
            return []
        told = []
        for row in self.ops.undelivered(LATE_PER_ROUND):
            note = f"_(told late: the ops channel could not be reached at {row['created_at']})_"
            alert = Alert(row["kind"], row["key"], row["state"], row["title"], f"{row['text']}\n{note}")
            delivery, _ = notifier.send(alert)
            if delivery != "sent":
                break
            self.ops.delivered(row["id"], "late", row["error"])
            log.warning(
                "ops alert told late (first tried %s): %s",
                row["created_at"],
                row["title"],
                extra={"alert_kind": row["kind"], "alert_key": row["key"], "delivery": "late"},
            )
            told.append(alert)
        return told

    def _tell(self, alert: Alert, now: datetime) -> Alert:
        alert_id = self.ops.record_alert(
            kind=alert.kind,
            key=alert.key,
            state=alert.state,
            title=alert.title,
            text=alert.text,
            firing=alert.firing,
            now=now,
            since=alert.since,
        )
        delivery, error = self.notifier().send(alert)
        self.ops.delivered(alert_id, delivery, error)
        extra = {"alert_kind": alert.kind, "alert_key": alert.key, "alert_state": alert.state, "delivery": delivery}
        if delivery == "failed":
            log.error("ops alert not delivered (%s): %s", error, alert.text, extra=extra)
        else:
            log.warning("ops alert (%s): %s", delivery, alert.text, extra=extra)
        return alert

    # -- the conditions -------------------------------------------------------------------------------

    def _dead_letters(self, now: datetime) -> Alert | None:
        settings = self.config.ops.dead_letters
        dead = self.ops.untold_dead()
        if not dead:
            return None
        oldest = parse_iso(dead[0]["updated_at"])
        if oldest is not None and (now - oldest).total_seconds() < settings.wait:
            return None  # the rest of its burst may still come
        last = parse_iso(self.ops.last_sent("dead_letters", "actions") or "")
        if last is not None and (now - last).total_seconds() < settings.interval:
            return None
        groups = Counter((row["rule"], row["type"], _code(row)) for row in dead)
        lines = [f"• {rule} ({kind}): {code}, {n}" for (rule, kind, code), n in groups.most_common()]
        ids = ", ".join(row["id"] for row in dead[: settings.ids])
        more = f" and {len(dead) - settings.ids} more" if len(dead) > settings.ids else ""
        events = {row["event_id"] for row in dead}
        if len(dead) == 1:
            command = f"gu1-sync replay --action {dead[0]['id']}"
        elif len(events) == 1:
            command = f"gu1-sync replay {dead[0]['event_id']}"
        else:
            command = f"gu1-sync replay --since {dead[0]['updated_at']}"
        title = f"{len(dead)} action{'s' if len(dead) > 1 else ''} failed for good (dead letters)"
        text = "\n".join(
            [
                f":x: *gu1-sync: {title}*",
                *lines,
                f"Actions: {ids}{more} (`gu1-sync failed` lists them with their errors).",
                f"Fix the cause, then send them again: `{command}`",
            ]
        )
        self.ops.mark_told([row["id"] for row in dead], now)
        return Alert("dead_letters", "actions", "digest", title, text)

    def _credentials(self, now: datetime, firing: dict) -> list[Alert]:
        alerts = []
        health = self.ops.health()
        for name in REGISTRY.connectors:
            state = health.get(name)
            refused = state is not None and state.state == "auth_failed"
            was = ("credentials", name) in firing
            if refused and was and self._works_again(name, now):
                refused = False
            label = name.capitalize()
            if refused and not was:
                title = f"{label} refuses gu1-sync's credentials ({state.code})"
                text = (
                    f":lock: *gu1-sync: {title}*\n"
                    f"Every {name}.* action fails until this is fixed: check connectors.{name} (and the secrets it "
                    f"names), then `gu1-sync doctor`. What fails meanwhile is kept: `gu1-sync replay --since "
                    f"{state.since}` once it works again."
                )
                alerts.append(Alert("credentials", name, "firing", title, text, since=state.since))
            elif not refused and was:
                since = firing[("credentials", name)]["since"]
                title = f"{label} takes gu1-sync's credentials again"
                text = (
                    f":white_check_mark: *gu1-sync: {title}* (refused for {_ago(since, now)}). "
                    f"Send what failed meanwhile again: `gu1-sync replay --since {since}`"
                )
                alerts.append(Alert("credentials", name, "resolved", title, text))
        return alerts

    def _works_again(self, name: str, now: datetime) -> bool:
        """While a connector's credentials are refused, a read-only check now and then (no action may be
        going to it: they all fail) tells whether they work again."""
        if time.monotonic() - self._probed.get(name, float("-inf")) < PROBE_EVERY:
            return False
        self._probed[name] = time.monotonic()
        spec = REGISTRY.connectors[name]
        if spec.check is None:
            return False
        connector = self.runtime.connectors.build(name, getattr(self.config.connectors, name))
        try:
            verdict, _ = spec.check(connector)
        except ActionError as error:
            log.info("ops: %s still refuses its credentials (%s)", name, error.code or error.message)
            return False
        if verdict:
            self.ops.set_health(name, failed_code=None, now=now)
        return bool(verdict)

    def _signatures(self, now: datetime, firing: dict) -> list[Alert]:
        settings = self.config.ops.signatures
        window = timedelta(seconds=settings.window)
        counts = self.ops.rejections_since(now - window)
        alerts = []
        sources = set(self.config.sources) | {key for kind, key in firing if kind == "signatures"}
        for source in sorted(sources):
            reasons = counts.get(source, {})
            total = sum(reasons.values())
            was = ("signatures", source) in firing
            span = _span(settings.window)
            if total >= settings.failures and not was:
                detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items()))
                spec = self.config.sources.get(source)
                names = ", ".join(f"${secret.name}" for secret in spec.secrets) if spec is not None else "its secrets"
                title = f"source {source} refused {total} requests for their signature in {span}"
                text = (
                    f":warning: *gu1-sync: {title}* ({detail}).\n"
                    f"Was the webhook secret regenerated in Gu1 but not here? Compare it with {names}; to rotate "
                    f"without losing webhooks, add the new one as a second secret and restart the receiver. "
                    f"Refused deliveries are not kept: Gu1's failed list has them."
                )
                alerts.append(Alert("signatures", source, "firing", title, text))
            elif total == 0 and was:
                title = f"source {source} verifies its webhooks again"
                text = f":white_check_mark: *gu1-sync: {title}* (no refused signature in the last {span})."
                alerts.append(Alert("signatures", source, "resolved", title, text))
        return alerts

    def _backlog(self, now: datetime, firing: dict) -> list[Alert]:
        age_limit = self.config.ops.backlog.age
        oldest = parse_iso(self.ops.oldest_unfinished() or "")
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        was = ("backlog", "events") in firing
        if age > age_limit and not was:
            title = f"events wait: the oldest unfinished one was received {_ago(iso(oldest), now)} ago"
            text = (
                f":hourglass: *gu1-sync: {title}*\n"
                f"Webhooks are still accepted and kept, but nothing processes them. Are the workers running? "
                f"`gu1-sync doctor` says what is missing; `gu1-sync events --status received` lists them."
            )
            return [Alert("backlog", "events", "firing", title, text)]
        if age <= age_limit and was:
            title = "events are processed again"
            text = f":white_check_mark: *gu1-sync: {title}* (the backlog has cleared)."
            return [Alert("backlog", "events", "resolved", title, text)]
        return []

    def _redis(self, now: datetime, firing: dict) -> list[Alert]:
        up = self.runtime.queue.ping()
        if up:
            self._redis_down_since = None
        elif self._redis_down_since is None:
            self._redis_down_since = now
        was = ("redis", "queue") in firing
        url = redact(self.runtime.queue.redis_url)
        down_for = (now - self._redis_down_since).total_seconds() if self._redis_down_since else 0.0
        if not up and down_for > self.config.ops.backlog.redis_down and not was:
            title = f"Redis at {url} out of reach for {_ago(iso(self._redis_down_since), now)}"
            text = (
                f":electric_plug: *gu1-sync: {title}*\n"
                "Webhooks are still accepted and kept in the database; the workers wait, and the sweep queues "
                "everything once Redis answers."
            )
            return [Alert("redis", "queue", "firing", title, text)]
        if up and was:
            title = f"Redis at {url} answers again"
            return [Alert("redis", "queue", "resolved", title, f":white_check_mark: *gu1-sync: {title}*")]
        return []

    def _api_usage(self, now: datetime, firing: dict) -> list[Alert]:
        limit = self.config.ops.salesforce_api.usage
        health = self.ops.health().get("salesforce")
        if health is None or not health.api_limit:
            return []
        share = (health.api_used or 0) / health.api_limit
        was = ("salesforce_api", "salesforce") in firing
        if share >= limit and not was:
            title = f"Salesforce API usage at {share:.0%} of the org's daily limit"
            text = (
                f":chart_with_upwards_trend: *gu1-sync: {title}* ({health.api_used:,} of {health.api_limit:,} in "
                f"the last 24 h, shared with every integration of the org). At the limit, Salesforce refuses "
                f"every call (REQUEST_LIMIT_EXCEEDED) and actions retry until it frees up."
            )
            return [Alert("salesforce_api", "salesforce", "firing", title, text)]
        if share < limit and was:
            title = f"Salesforce API usage back under {limit:.0%} of the daily limit"
            text = f":white_check_mark: *gu1-sync: {title}* ({health.api_used:,} of {health.api_limit:,})."
            return [Alert("salesforce_api", "salesforce", "resolved", title, text)]
        return []


def _code(row: dict) -> str:
    """A dead letter's error code, for grouping: the service's own code, else its HTTP status."""
    return row.get("error_code") or (f"HTTP {row['status_code']}" if row.get("status_code") else "no code")


def _span(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


class AlerterThread(threading.Thread):
    """Runs an Alerter every `ops.check_every` until stopped; never lets a failure end it."""

    def __init__(self, runtime: Runtime):
        super().__init__(name="gu1sync-alerts", daemon=True)
        self.alerter = Alerter(runtime)
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.alerter.config.ops.check_every):
            try:
                self.alerter.tick()
            except StoreUnavailable as exc:
                log.warning("ops alerts skipped this round: %s", exc)
            except Exception:
                log.exception("ops alerts failed this round; the next is in %g s", self.alerter.config.ops.check_every)

    def stop(self) -> None:
        self._stopped.set()


__all__ = ["NOT_CONFIGURED", "Alert", "Alerter", "AlerterThread", "Notifier"]

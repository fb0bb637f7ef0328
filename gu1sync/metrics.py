"""GET /metrics: Prometheus' text format, read from the database and Redis when scraped.

Why at scrape time and not prometheus-client's multiprocess mode: every figure is kept where the work
is recorded (counters in the same transactions as the events and attempts they count, states in the
tables themselves), so any receiver process, on any box, answers the same numbers; a restart resets
nothing; and there is no directory of per-process files to share and clean. The cost is a few indexed
queries per scrape.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis.exceptions import RedisError
from rq.registry import ScheduledJobRegistry

from .core.status import ActionStatus
from .core.timeutil import parse_iso
from .runtime import Runtime
from .storage.counting import CALL_BUCKETS
from .storage.ops import OpsLog

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Collector:
    """Every gu1-sync metric, read afresh for each scrape."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.ops = OpsLog(runtime.store)

    def collect(self) -> Iterator[Metric]:
        yield from self._events()
        yield from self._actions()
        yield from self._calls()
        yield from self._queue()
        yield from self._health()
        yield from self._alerts()
        info = GaugeMetricFamily("gu1sync_config_info", "The config in force (its version).", labels=["version"])
        info.add_metric([self.runtime.config.digest], 1)
        yield info

    def _events(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "gu1sync_events_received",
            "Webhook deliveries taken, by source, event type and outcome (accepted, duplicate, invalid).",
            labels=["source", "type", "outcome"],
        )
        for _, labels, value in self.ops.counters("events_received"):
            received.add_metric([labels["source"], labels["type"], labels["outcome"]], value)
        yield received
        rejected = CounterMetricFamily(
            "gu1sync_webhooks_rejected", "Webhook requests refused, by source and reason.", labels=["source", "reason"]
        )
        for source, reason, count in self.ops.rejections():
            rejected.add_metric([source, reason], count)
        yield rejected
        oldest = parse_iso(self.ops.oldest_unfinished() or "")
        age = GaugeMetricFamily(
            "gu1sync_oldest_unfinished_event_age_seconds",
            "How long the oldest event not processed yet has waited (0 when none waits).",
        )
        age.add_metric([], max((self.runtime.clock() - oldest).total_seconds(), 0.0) if oldest else 0.0)
        yield age
        failed = GaugeMetricFamily(
            "gu1sync_events_failed", "Events whose processing failed for good, waiting for `gu1-sync replay EVENT_ID`."
        )
        failed.add_metric([], self.ops.failed_events())
        yield failed

    def _actions(self) -> Iterator[Metric]:
        actions = GaugeMetricFamily(
            "gu1sync_actions", "Actions by rule, connector and status.", labels=["rule", "connector", "status"]
        )
        totals: dict[str, int] = defaultdict(int)
        for rule, action_type, status, count in self.ops.actions_by_status():
            actions.add_metric([rule, action_type.split(".", 1)[0], status], count)
            totals[status] += count
        yield actions
        dead = GaugeMetricFamily("gu1sync_dead_letters", "Actions that failed for good and wait for a replay.")
        dead.add_metric([], totals[ActionStatus.DEAD])
        yield dead
        retries = GaugeMetricFamily("gu1sync_retries_scheduled", "Actions waiting for their next attempt.")
        retries.add_metric([], totals[ActionStatus.RETRYING])
        yield retries

    def _calls(self) -> Iterator[Metric]:
        buckets: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        sums: dict[tuple[str, str], float] = {}
        for name, labels, value in self.ops.counters("connector_calls", "connector_call_seconds"):
            key = (labels["connector"], labels["outcome"])
            if name == "connector_calls":
                buckets[key][labels["le"]] = value
            else:
                sums[key] = value
        histogram = HistogramMetricFamily(
            "gu1sync_connector_call_duration_seconds",
            "Calls to Salesforce and Slack, by connector and outcome (ok, retry, failed), and how long they took.",
            labels=["connector", "outcome"],
        )
        for key, counts in sorted(buckets.items()):
            cumulative, running = [], 0.0
            for bound in [*(str(b) for b in CALL_BUCKETS), "+Inf"]:
                running += counts.get(bound, 0.0)
                cumulative.append((bound, running))
            histogram.add_metric(list(key), cumulative, sums.get(key, 0.0))
        yield histogram

    def _queue(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gu1sync_redis_up", "Whether Redis answered this scrape.")
        depth = GaugeMetricFamily("gu1sync_queue_depth", "Jobs waiting on the RQ queue.")
        scheduled = GaugeMetricFamily("gu1sync_queue_scheduled_jobs", "Jobs parked in Redis until they fall due.")
        queue = self.runtime.queue
        try:
            depth.add_metric([], queue.queue.count)
            scheduled.add_metric([], ScheduledJobRegistry(queue=queue.queue).count)
            up.add_metric([], 1)
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        yield from (up, depth, scheduled)

    def _health(self) -> Iterator[Metric]:
        credentials = GaugeMetricFamily(
            "gu1sync_connector_credentials_ok",
            "Whether the connector's last call (or check) had its credentials taken.",
            labels=["connector"],
        )
        used = GaugeMetricFamily(
            "gu1sync_salesforce_api_requests", "The org's API requests in the last 24 h (Sforce-Limit-Info)."
        )
        limit = GaugeMetricFamily("gu1sync_salesforce_api_requests_limit", "The org's daily API request limit.")
        for name, health in sorted(self.ops.health().items()):
            credentials.add_metric([name], 0 if health.state == "auth_failed" else 1)
            if name == "salesforce" and health.api_limit:
                used.add_metric([], health.api_used or 0)
                limit.add_metric([], health.api_limit)
        yield from (credentials, used, limit)

    def _alerts(self) -> Iterator[Metric]:
        alerts = CounterMetricFamily(
            "gu1sync_ops_alerts",
            "Operational alerts, by kind and delivery (sent; failed: the ops channel refused it; late: of "
            "those failed, sent once it worked again; logged: none set).",
            labels=["kind", "delivery"],
        )
        counts: dict[tuple[str, str], int] = {}
        for kind, delivery, count in self.ops.alert_counts():
            # A failed alert told late stays counted as failed: a counter never goes down.
            for label in ("failed", "late") if delivery == "late" else (delivery,):
                counts[kind, label] = counts.get((kind, label), 0) + count
        for (kind, delivery), count in sorted(counts.items()):
            alerts.add_metric([kind, delivery], count)
        yield alerts


def render(runtime: Runtime) -> bytes:
    """The scrape's answer."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(runtime))
    started = time.perf_counter()
    body = generate_latest(registry)
    took = (time.perf_counter() - started) * 1000
    return body + f"# gu1-sync process {os.getpid()} read these figures in {took:.1f} ms\n".encode()

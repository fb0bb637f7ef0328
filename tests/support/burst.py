"""Bursts of Gu1 events, and how a run must end.

`Sender`: Gu1 as a sender, with distinct signed events, each retried after 1 s, 2 s and 4 s when it
gets no 2xx, every answer kept. `settle`: the end of every fault run: nothing accepted was lost,
everything reached a final state, and every action took effect once, or again only where a kill left
an attempt's outcome unknown. Both work on a tests/support/stack.py Stack running its default RULES.

It is long because `settle` is one check with many parts (every one a way a run can go wrong), and
the SQLite and PostgreSQL fault runs, one box or several, share it.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
from rq.job import Job

from gu1sync.core.records import action_id
from tests.support.emulators.salesforce import SalesforceEmulator
from tests.support.emulators.slack import SlackEmulator
from tests.support.helpers import dumps, gu1_headers, wait_until
from tests.support.stack import Stack

# The rules of tests/support/stack.py's RULES: every status change upserts the Contact, a block is posted too.
UPSERT_RULE, SLACK_RULE = "status-to-salesforce", "alert-blocked"
EXTERNAL_ID_FIELD = "Gu1_External_Id__c"

# Retries come quickly, so that a test waits for the fault, not for the back-off; enough attempts to
# outlast the longest outage.
RETRY = "retry: {max_attempts: 50, backoff: 200ms, max_backoff: 1s}"

EVENT_FINAL = ("done", "failed", "invalid")
ACTION_FINAL = ("done", "dead", "skipped", "dry_run", "shadow", "throttled")


def status_change(number: int, status: str, *, start: datetime | None = None) -> dict:
    """A distinct entity.status_changed event: its own entity, external id and timestamp."""
    when = (start or datetime(2025, 1, 8, 9, tzinfo=UTC)) + timedelta(milliseconds=number)
    return {
        "event": "entity.status_changed",
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "payload": {
            "status": status,
            "previousStatus": "active",
            "reason": "Sanctions list match",
            "entity": {
                "id": f"00000000-0000-4000-8000-{number:012d}",
                "externalId": f"customer_{number:06d}",
                "name": f"Person {number}",
                "type": "person",
            },
        },
    }


def burst(count: int, *, every_nth_blocked: int = 2) -> list[dict]:
    """`count` distinct status changes; every n-th is a block (an upsert and a Slack post), the rest
    suspensions (an upsert only)."""
    start = datetime.now(UTC).replace(microsecond=0)
    return [
        status_change(n, "blocked" if n % every_nth_blocked == 0 else "suspended", start=start) for n in range(count)
    ]


@dataclass
class Delivery:
    """One event as Gu1 delivers it: every try's answer, and the id the receiver gave it."""

    document: dict
    answers: list[tuple[int | None, str | None, str | None]] = field(default_factory=list)  # status, error, Retry-After
    event_id: str | None = None
    duplicate_on_acceptance: bool = False

    @property
    def accepted(self) -> bool:
        return self.event_id is not None


class Sender:
    """Posts events as Gu1 does: a try, then retries after 1 s, 2 s and 4 s while the answer is not 2xx.

    `ports`: receivers behind a load balancer that sends each try to the next one (the first tries of a
    burst spread over all, each retry to another than the one before); default: the stack's receiver."""

    RETRIES = (1.0, 2.0, 4.0)

    def __init__(
        self,
        stack: Stack,
        *,
        threads: int = 4,
        retries: tuple[float, ...] = RETRIES,
        ports: list[int] | None = None,
    ):
        self.stack = stack
        self.ports = ports or [stack.port]
        self.retries = retries
        self.deliveries: list[Delivery] = []
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gu1-sender")
        self._futures: list = []
        self._threads: list[threading.Thread] = []

    def send(self, document: dict) -> Delivery:
        delivery = Delivery(document)
        self.deliveries.append(delivery)
        first = len(self.deliveries)
        body = dumps(document)
        for tried, wait in enumerate((0.0, *self.retries)):
            time.sleep(wait)
            status, answer, retry_after = self._post(body, self.ports[(first + tried) % len(self.ports)])
            error = answer.get("error") if isinstance(answer, dict) else None
            delivery.answers.append((status, error, retry_after))
            if status is not None and 200 <= status < 300:
                delivery.event_id = answer["id"]
                delivery.duplicate_on_acceptance = bool(answer.get("duplicate"))
                break
        return delivery

    def _post(self, body: bytes, port: int) -> tuple[int | None, dict | None, str | None]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/webhooks/gu1-prod", body=body, headers=gu1_headers(body))
            response = conn.getresponse()
            raw = response.read()
            conn.close()
        except OSError:
            return None, None, None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        return response.status, answer, response.getheader("Retry-After")

    def start(self, documents: list[dict], *, pace: float = 0.0) -> None:
        """Send `documents` in the background, one every `pace` seconds, several at a time (again while a
        burst is going: the two go side by side)."""

        def feed() -> None:
            for document in documents:
                self._futures.append(self._pool.submit(self.send, document))
                time.sleep(pace)

        thread = threading.Thread(target=feed, name="gu1-burst", daemon=True)
        self._threads.append(thread)
        thread.start()

    def sending(self) -> bool:
        """Whether the burst is still going."""
        return any(t.is_alive() for t in self._threads) or any(not f.done() for f in self._futures)

    def join(self, timeout: float = 60) -> None:
        """Wait for every delivery (with its retries) to end; a sender thread's error is raised here."""
        for thread in self._threads:
            thread.join(timeout)
        for future in self._futures:
            future.result(timeout)
        self._pool.shutdown()

    def accepted(self) -> dict[str, Delivery]:
        """Deliveries that got a 2xx, by event id."""
        return {d.event_id: d for d in self.deliveries if d.event_id is not None}

    def refusals(self) -> Counter:
        """Every non-2xx answer (and every try that got none), counted by (status, error)."""
        return Counter(
            (status, error)
            for d in self.deliveries
            for status, error, _ in d.answers
            if status is None or not 200 <= status < 300
        )


# -- the end of a run -----------------------------------------------------------------------------------


class Unsettled(AssertionError):
    """Some accepted event or action did not reach a final state in time."""


class WorkerDied(AssertionError):
    """A worker process ended on its own: nothing but the test may stop one."""


class DuplicateEffect(AssertionError):
    """An action took effect more often than the kills of the run can explain."""

    def __init__(self, message: str, settlement: Settlement):
        super().__init__(message)
        self.settlement = settlement


@dataclass
class Settlement:
    """What a run ended with; `repeats` is (action id, action type, extra times it took effect)."""

    events: int
    actions: int
    upserts: int
    posts: int
    repeats: list[tuple[str, str, int]]
    interrupted: int
    refusals: Counter

    @property
    def slack_duplicates(self) -> int:
        """Posts made twice: the harm a crash can do (a Slack post is not idempotent)."""
        return sum(extra for _, kind, extra in self.repeats if kind == "slack.post")

    @property
    def upserts_repeated(self) -> int:
        """Upserts that landed again (idempotent: the record ends the same)."""
        return sum(extra for _, kind, extra in self.repeats if kind != "slack.post")

    def summary(self) -> str:
        refused = ", ".join(
            f"{status or 'no answer'} {error or ''}".strip() + f" x{count}"
            for (status, error), count in sorted(self.refusals.items(), key=str)
        )
        return (
            f"{self.events} events, {self.actions} actions done ({self.upserts} upserts, {self.posts} Slack posts); "
            f"{self.interrupted} attempt(s) interrupted; Slack duplicates: {self.slack_duplicates}; "
            f"upserts repeated: {self.upserts_repeated}; refused tries: {refused or 'none'}"
        )


def report(record_property, line: str) -> None:  # noqa: ANN001 - pytest's fixture
    """One line for the "fault suite" section of the run's summary (and the JUnit XML); -s shows it too."""
    record_property("fault_summary", line)
    print(line)


def expected_actions(document: dict, event_id: str) -> dict[str, str]:
    """The actions RULES give an event: action id -> type."""
    expected = {action_id(event_id, UPSERT_RULE, 0): "salesforce.upsert"}
    if document["payload"]["status"] == "blocked":
        expected[action_id(event_id, SLACK_RULE, 0)] = "slack.post"
    return expected


def _unsettled(stack: Stack, accepted: dict[str, Delivery]) -> str:
    """Why the run has not settled yet ('' once it has)."""
    db = stack.store.db
    stored = {row[0] for row in db.execute("SELECT id FROM events")}
    missing = set(accepted) - stored
    events = db.execute(
        f"SELECT id, status FROM events WHERE status NOT IN ({','.join('?' * len(EVENT_FINAL))})", EVENT_FINAL
    ).fetchall()
    actions = db.execute(
        f"SELECT id, status FROM actions WHERE status NOT IN ({','.join('?' * len(ACTION_FINAL))})", ACTION_FINAL
    ).fetchall()
    if not (missing or events or actions):
        return ""
    return (
        f"{len(missing)} accepted event(s) not stored, {len(events)} event(s) not final "
        f"({dict(Counter(s for _, s in events))}), {len(actions)} action(s) not final "
        f"({dict(Counter(s for _, s in actions))})"
    )


def _dead_workers(stack: Stack) -> str:
    """A line per worker process that ended although the test did not stop it ('' if none did)."""
    return "".join(
        f"worker process {w.pid} ended on its own, with status {w.returncode}\n"
        for w in stack.workers
        if w.poll() is not None
    )


def _describe_stuck(stack: Stack) -> str:
    """The unfinished events and actions, with the state of their RQ jobs: what a failure needs to say."""
    db = stack.store.db
    conn = redis.Redis.from_url(stack.redis_url)
    lines = []
    for event_id, status, attempts, started_at in db.execute(
        f"SELECT id, status, attempts, started_at FROM events WHERE status NOT IN ({','.join('?' * 3)}) LIMIT 10",
        EVENT_FINAL,
    ):
        job = conn.hget(Job.key_for(event_id), "status")
        lines.append(f"  event {event_id} {status} attempts={attempts} started_at={started_at} job={job!r}")
    for ident, status, attempts, lease, job_id, next_at in db.execute(
        "SELECT id, status, attempts, lease_until, job_id, next_attempt_at FROM actions "
        f"WHERE status NOT IN ({','.join('?' * len(ACTION_FINAL))}) LIMIT 10",
        ACTION_FINAL,
    ):
        job = conn.hget(Job.key_for(job_id), "status") if job_id else None
        lines.append(
            f"  action {ident} {status} attempts={attempts} lease_until={lease} next_attempt_at={next_at} "
            f"job={job_id}:{job!r}"
        )
    conn.close()
    return "\n".join(lines)


def settle(
    stack: Stack,
    sender: Sender,
    org: SalesforceEmulator,
    workspace: SlackEmulator,
    *,
    kills: int = 0,
    timeout: float = 60,
) -> Settlement:
    """Wait until the run is over, then assert what every fault run must end with:

    - every event answered 2xx is stored (nothing accepted was lost), and every stored event is `done`;
    - every expected action exists and is `done`;
    - Salesforce holds one Contact per event with its status, and Slack one post per blocked event;
    - each upsert and post took effect once; again only for an action whose attempt a kill interrupted
      (the documented window), and for Slack posts at most once per kill; these are returned, not hidden;
    - every refusal was a 503 `storage_unavailable` with Retry-After, and a 503 stored nothing.
    """
    accepted = sender.accepted()
    assert accepted, "no event was accepted: the run proves nothing"

    def over() -> bool:  # settled, or nobody left to settle it
        return not _unsettled(stack, accepted) or all(w.poll() is not None for w in stack.workers)

    try:
        wait_until(over, timeout=timeout, what="every event and action to settle")
        assert not _unsettled(stack, accepted)
    except AssertionError:
        raise (WorkerDied if _dead_workers(stack) else Unsettled)(
            f"not settled after {timeout:g} s: {_unsettled(stack, accepted)}\n{_describe_stuck(stack)}\n"
            f"{_dead_workers(stack)}--- log tail ---\n{stack.log_tail()}"
        ) from None

    for delivery in sender.deliveries:
        for status, error, retry_after in delivery.answers:
            if status is not None and not 200 <= status < 300:
                assert (status, error) == (503, "storage_unavailable") and retry_after, delivery.answers
        refused = [status for status, _, _ in delivery.answers[:-1]]
        if delivery.duplicate_on_acceptance and refused and None not in refused:
            raise AssertionError(f"event {delivery.event_id}: answered {refused} (nothing stored), then a duplicate")

    db = stack.store.db
    statuses = dict(db.execute("SELECT id, status FROM events").fetchall())
    assert set(accepted) <= set(statuses), "accepted events missing from the store"
    assert set(statuses.values()) == {"done"}, Counter(statuses.values())
    assert set(statuses) == set(accepted), f"stored but never accepted: {sorted(set(statuses) - set(accepted))[:5]}"

    expected: dict[str, str] = {}
    for event_id, delivery in accepted.items():
        expected.update(expected_actions(delivery.document, event_id))
    actions = {row["id"]: row for row in db.query("SELECT id, type, status FROM actions")}
    assert set(actions) == set(expected), (
        f"{len(set(expected) - set(actions))} expected action(s) missing, "
        f"{len(set(actions) - set(expected))} unexpected"
    )
    assert Counter(a["status"] for a in actions.values()) == Counter(done=len(expected)), Counter(
        a["status"] for a in actions.values()
    )
    interrupted = Counter(row[0] for row in db.execute("SELECT action_id FROM attempts WHERE outcome = 'interrupted'"))

    # What took effect, as the services saw it.
    by_external_id = {
        delivery.document["payload"]["entity"]["externalId"]: (event_id, delivery)
        for event_id, delivery in accepted.items()
    }
    landed = org.upserts_landed("Contact", EXTERNAL_ID_FIELD)
    assert set(landed) == set(by_external_id), "upserts of records no accepted event names, or missing"
    effects = {}
    for external_id, (event_id, delivery) in by_external_id.items():
        [record] = org.find("Contact", EXTERNAL_ID_FIELD, external_id)
        assert record["Status__c"] == delivery.document["payload"]["status"], record
        effects[action_id(event_id, UPSERT_RULE, 0)] = landed[external_id]
    posts = workspace.posts_by_action()
    slack_expected = {ident for ident, kind in expected.items() if kind == "slack.post"}
    assert set(posts) == slack_expected, "Slack posts for unknown actions, or posts missing"
    effects.update(posts)

    if _dead_workers(stack):
        raise WorkerDied(f"{_dead_workers(stack)}--- log tail ---\n{stack.log_tail()}")

    repeats = [(ident, expected[ident], n - 1) for ident, n in sorted(effects.items()) if n > 1]
    settlement = Settlement(
        events=len(statuses),
        actions=len(actions),
        upserts=sum(1 for kind in expected.values() if kind == "salesforce.upsert"),
        posts=len(slack_expected),
        repeats=repeats,
        interrupted=sum(interrupted.values()),
        refusals=sender.refusals(),
    )
    # An effect beyond the first is the documented window: an attempt whose worker died mid-call (marked
    # interrupted when its action was claimed again). Without a kill there is none; with kills, Slack
    # posts are duplicated at most once per kill.
    for ident, kind, extra in repeats:
        if extra > interrupted[ident]:
            raise DuplicateEffect(
                f"{kind} {ident} took effect {extra + 1} times; {interrupted[ident]} attempt(s) were interrupted",
                settlement,
            )
    if kills == 0 and repeats:
        raise DuplicateEffect(f"effects repeated without any kill: {repeats}", settlement)
    if settlement.slack_duplicates > kills:
        raise DuplicateEffect(
            f"{settlement.slack_duplicates} duplicate Slack post(s) for {kills} kill(s): "
            f"{[r for r in repeats if r[1] == 'slack.post']}",
            settlement,
        )
    return settlement

"""What every connector shares: one small interface, one way to say how a call went, and the
declaration a connector module makes of itself (`ConnectorSpec`, read by the registry).

A connector carries out rendered actions: `execute(action_type, params, meta) -> Result`, raising
ActionError that says whether trying again later could help. Each connector classifies its own
failures in one place (`classify` in its module); nothing else decides what is retryable.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import quote, quote_plus

from pydantic import Field
from rq.timeouts import JobTimeoutException

from gu1sync.core.values import Duration, StrictModel


@dataclass(frozen=True)
class ActionMeta:
    """What a connector may want to know about the action beyond its parameters."""

    action_id: str
    event_id: str
    rule: str


@dataclass(frozen=True)
class Result:
    """A call that succeeded."""

    status_code: int | None
    summary: str  # e.g. "created 003000000000001", "updated", "posted ts 1700000000.000100"
    dry_run: bool = False


class ActionError(Exception):
    """A call that failed: `retryable` says whether trying again later could help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status_code = status_code
        self.code = code  # the service's own error code: UNABLE_TO_LOCK_ROW, channel_not_found...
        self.retry_after = retry_after  # seconds the service asked us to wait

    def __repr__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        return f"ActionError({kind}, status={self.status_code}, code={self.code!r}, {self.message!r})"


class Connector(Protocol):
    """One external system, as this process talks to it (a client, logged in once and reused)."""

    name: str
    dry_run: bool  # no credentials: its actions are rendered and recorded, never sent

    def execute(self, action_type: str, params: dict[str, Any], meta: ActionMeta) -> Result: ...


class BatchingConnector(Connector, Protocol):
    """A connector that can carry out several actions of one type in one call (ActionType.batch)."""

    def execute_batch(
        self, action_type: str, items: list[tuple[dict[str, Any], ActionMeta]]
    ) -> list[Result | ActionError]:
        """One call for all the items; a Result or an ActionError per item, in order. Raises ActionError
        when the call as a whole failed (every item then shares that outcome)."""
        ...


class BatchSettings(StrictModel):
    """How actions that can share a call are sent together (`connectors.<name>.batch`)."""

    max: int = Field(200, ge=1, description="Most actions in one call (1: every action alone).")
    linger: Duration = Field(
        0,
        description="How long a lone action may wait for others to share its call (0: it goes at once; "
        "batches form from what is already waiting).",
    )


class ActionParams(StrictModel):
    """The parameters of one action type, as a rule writes them (strings may hold templates)."""

    type: ClassVar[str]


def not_ordered(params: dict[str, Any]) -> str | None:
    """For actions that write no record another action could also write (a message, a new record)."""
    return None


@dataclass(frozen=True)
class Grouping:
    """How actions of a type go out together as one (a rule's `group:`): what they must share, each
    one's default line, and the one action made of them."""

    together: Callable[[dict[str, Any]], str]  # what the members of a group share (a channel)
    line: Any  # the compiled default template of a member's line
    # (the first member's params, the members' lines, a header) -> the params of the one action
    compose: Callable[[dict[str, Any], list[str], str, int], dict[str, Any]]


@dataclass(frozen=True)
class ActionType:
    """One action type a connector carries out."""

    params: type[ActionParams]
    # The record the rendered action writes, e.g. `salesforce:contact:gu1_external_id__c:c-1`: writes to
    # one record go one at a time, in the order of the events' timestamps. None: nothing to order.
    target: Callable[[dict[str, Any]], str | None] = not_ordered
    # Whether making the call twice lands the same (an upsert) or shows (a second post, a second
    # record). Repeats that show go one at a time in a worker, so a crash repeats at most one.
    repeat_harmless: bool = False
    # The values to render, from those the rule wrote (a ready-made layout's text and blocks, say).
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Warnings about the params as a rule writes them (raw, before compiling): (path in them, message).
    lint: Callable[[dict[str, Any]], list[tuple[tuple, str]]] | None = None
    # Calls that go to one place kept under the rate the service allows, across every process:
    # (key, calls, in whole seconds) for the rendered params under the connector's settings; None: unpaced.
    pace: Callable[[dict[str, Any], Any], tuple[str, int, int] | None] | None = None
    # How a rule's `group:` makes several of these one (None: the type is never grouped).
    group: Grouping | None = None
    # Which rendered actions of this type may share one call (`execute_batch`): those with the same key.
    # None (the function, or its answer for one action): each goes alone.
    batch: Callable[[dict[str, Any]], str | None] | None = None

    @property
    def name(self) -> str:
        return self.params.type


@dataclass(frozen=True)
class ConnectorSpec:
    """What a connector module declares of itself; the registry reads it, nothing else needs to know."""

    name: str  # the prefix of its action types, and its key under `connectors:`
    description: str
    settings: type[StrictModel]  # `connectors.<name>`: it must have `timeout`
    client: Callable[[Any], Connector]  # builds the connector from its settings
    classify: Callable[[Exception], ActionError]  # retryable or permanent, for every way a call can fail
    actions: tuple[ActionType, ...]
    dry_run_notice: str  # what start-up says when the settings give no credentials
    # The calls one attempt may make, each within the connector's timeout (a login, a lookup, the write,
    # a fresh login and the write again): with 5 s to spare, the time limit of one attempt.
    calls_per_attempt: int = 5
    # Whether a failure means the service refused the credentials (a login refused, a token revoked, a
    # webhook gone): the ops channel is told at once, and again when the connector works again.
    refuses_credentials: Callable[[ActionError], bool] = lambda error: False
    # A real, read-only call that proves the credentials (`doctor`, and while they are refused):
    # (True, what it found), (None, why it cannot tell); raises ActionError when it fails.
    check: Callable[[Any], tuple[bool | None, str]] | None = None

    def limits(self, settings: Any) -> tuple[float, float]:
        """(lease, time limit) of one attempt. RQ stops the attempt's job at its time limit, and the lease
        lasts longer still, so no second attempt can start while the first may still be running."""
        timeout = settings.timeout
        job_limit = self.calls_per_attempt * timeout + 5
        return job_limit + timeout + 10, job_limit


def common(exc: Exception) -> ActionError | None:
    """What every connector decides the same way: its own ActionError stands, and running out of
    the job's time limit (RQ raises it in the middle of a call) is worth another try."""
    if isinstance(exc, ActionError):
        return exc
    if isinstance(exc, JobTimeoutException):
        return ActionError("the attempt ran out of time (the job's time limit)", retryable=True)
    return None


def retry_after_seconds(value: Any) -> float | None:
    """Seconds from a Retry-After header (delta-seconds; an HTTP date is read as 'soon', 1 s)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    try:
        return max(0.0, float(str(value).strip()))
    except ValueError:
        return 1.0 if value else None


REDACTED = "[redacted]"


def secret_forms(values: Iterable[str | None]) -> list[str]:
    """Secrets as they could turn up in a message: as they are, URL-encoded, or in base64; longest
    first. Values too short to be secrets (under 6 characters) are left out."""
    forms: set[str] = set()
    for value in values:
        if not value or len(value) < 6:
            continue
        raw = value.encode()
        forms |= {value, quote(value, safe=""), quote_plus(value)}
        forms |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
        forms |= {form.rstrip("=") for form in list(forms) if form.endswith("=")}
    return sorted(forms, key=len, reverse=True)


def _without(text: str, forms: list[str]) -> str:
    for form in forms:
        text = text.replace(form, REDACTED)
    return text


def scrub(error: ActionError, forms: list[str]) -> ActionError:
    """The error with every secret form replaced by [redacted]. Its message is stored and shown by
    `failed` and `show`, its code is logged, and either may quote what a server answered: some echo
    a URL or a credential back."""
    message = _without(error.message, forms)
    if message != error.message:
        error.message = message
        error.args = (message,)
    if error.code is not None:
        error.code = _without(error.code, forms)
    return error

"""What every connector shares: one small interface, and one way to say how a call went.

A connector carries out rendered actions: `execute(action_type, params, meta) -> Result`, raising
ActionError that says whether trying again later could help. Each connector classifies its own
failures in one place (`classify` in its module); nothing else decides what is retryable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rq.timeouts import JobTimeoutException


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
    """One external system."""

    name: str
    dry_run: bool

    def execute(self, action_type: str, params: dict[str, Any], meta: ActionMeta) -> Result: ...


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

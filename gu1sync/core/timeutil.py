"""Time helpers: one clock, one ISO 8601 format, and the one grammar of durations.

A duration is written the way ops teams write them: seconds as a number, or text such as 500ms,
30s, 5m, 1h, 2d. Every duration in gu1-sync (config keys, --since, --older-than) is read by
`parse_duration`, and the JSON Schema describes it with `DURATION_PATTERN`, from the same units.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT = "|".join(UNITS)
_NUMBER = r"\d+(?:\.\d+)?"
DURATION_PATTERN = rf"^\s*{_NUMBER}\s*(?:{_UNIT})?\s*$"  # a bare number is seconds
POSITIVE_DURATION_PATTERN = rf"^\s*(?:0*[1-9]\d*(?:\.\d+)?|0+\.\d*[1-9]\d*)\s*(?:{_UNIT})?\s*$"
_DURATION = re.compile(rf"^\s*({_NUMBER})\s*({_UNIT})?\s*$")
DURATION_EXAMPLE = "a duration such as 30s, 5m or 1h"


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """Format a datetime as UTC ISO 8601 with milliseconds and a Z: 2025-01-15T10:30:00.000Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: object) -> datetime | None:
    """Parse an ISO 8601 timestamp (Z or offset; naive means UTC); None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.astimezone(UTC)  # year 1 at +05:00 or 9999 at -05:00 has no UTC time
    except (ValueError, OverflowError):
        return None
    return moment


def from_unix(seconds: float) -> datetime | None:
    """A UTC datetime from unix seconds; None when out of range."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def parse_duration(value: object, *, unit_required: bool = False) -> float:
    """Seconds from a duration: a number of seconds, or text such as 500ms, 30s, 5m, 1h, 2d.

    `unit_required`: text must carry its unit (on a command line, a bare `90` is more likely a
    mistake for 90 days than 90 seconds).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_EXAMPLE}, got {value!r}")
    if isinstance(value, int | float) and not unit_required:
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)) and (match.group(2) or not unit_required):
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        raise ValueError(f"expected {DURATION_EXAMPLE}, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds

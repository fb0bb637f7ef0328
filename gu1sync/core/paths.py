"""Field paths as ops teams write them: `payload.entity.type`, `payload.decision.id_verifications[0].status`,
`payload.changes["attributes.email"].new` (brackets and quotes for keys that contain dots).
"""

from __future__ import annotations

import re
from typing import Any

# What a rule can look at; see rules.engine.context_for.
ROOTS = ("event", "id", "source", "environment", "occurred_at", "received_at", "payload", "entity")

_SEGMENT = re.compile(r"""\.?([A-Za-z_$@][\w$@-]*)|\.(\d+)|\[(\d+)\]|\[\s*"([^"]*)"\s*\]|\[\s*'([^']*)'\s*\]""")


class Missing:
    """The value of a path that leads nowhere (distinct from a JSON null)."""

    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING = Missing()


def parse_path(text: str) -> tuple[str | int, ...]:
    """Split a path into keys and indexes; ValueError (with the reason) if it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a field path cannot be empty")
    text = text.strip()
    parts: list[str | int] = []
    position = 0
    while position < len(text):
        match = _SEGMENT.match(text, position)
        if match is None or (position == 0 and text[0] in ".["):
            raise ValueError(f"cannot read the path {text!r} at character {position + 1}")
        name, dotted_index, index, dq, sq = match.groups()
        if name is not None:
            parts.append(name)
        elif dotted_index is not None or index is not None:
            parts.append(int(dotted_index if dotted_index is not None else index))
        else:
            parts.append(dq if dq is not None else sq)
        position = match.end()
    if not isinstance(parts[0], str) or parts[0] not in ROOTS:
        from .values import did_you_mean

        raise ValueError(
            f"a field path starts with one of {', '.join(ROOTS)}; "
            f"{str(parts[0])!r} is not one{did_you_mean(str(parts[0]), list(ROOTS))}"
        )
    return tuple(parts)


def resolve(data: Any, parts: tuple[str | int, ...]) -> Any:
    """The value at `parts` inside `data`, or MISSING."""
    node = data
    for part in parts:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif isinstance(part, int) and str(part) in node:
                node = node[str(part)]
            else:
                return MISSING
        elif isinstance(node, list) and isinstance(part, int):
            if -len(node) <= part < len(node):
                node = node[part]
            else:
                return MISSING
        else:
            return MISSING
    return node

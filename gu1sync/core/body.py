"""Reading a webhook body: JSON from raw bytes, liberally where it costs nothing, and its digest."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile("[\ud800-\udfff]")
MAX_DEPTH = 100  # Gu1's payloads nest about 5 deep; a fixed limit, so the stack in use never decides


def parse_json(raw: bytes) -> Any:
    """JSON from raw bytes; ValueError for anything unreadable, absurd nesting included.

    Liberal where it costs nothing: a byte order mark is skipped, UTF-16 and UTF-32 are read as
    json.loads reads them, and surrogates that do not form a pair become U+FFFD, since such text
    cannot be stored or encoded: escaped (`\\ud83d`: senders cut strings in the middle of an emoji)
    or raw (CESU-8 bytes, a lone half in UTF-16).
    """
    text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads(bytes) does
    try:
        document = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting(document) > MAX_DEPTH:
        raise ValueError(f"JSON nested more than {MAX_DEPTH} deep")
    if _LONE_SURROGATE.search(text) or _SURROGATES.search(text):
        document = _mend(document)
    return document


def _nesting(document: Any) -> int:
    """How deep lists and objects nest, level by level (not recursively: it may be too deep for that)."""
    depth, level = 0, [document]
    while level and depth <= MAX_DEPTH:
        containers = [value for value in level if isinstance(value, dict | list)]
        if not containers:
            break
        depth += 1
        level = [child for value in containers for child in (value.values() if isinstance(value, dict) else value)]
    return depth


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        # json.loads has joined every escaped pair; what is left of U+D800..U+DFFF cannot be encoded.
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend(v) for v in value]
    return value


def body_digest(raw: bytes) -> str:
    """The fallback identity of an event: what was signed, byte for byte."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# The keys that hold an id: id, entityId, externalId, session_id, taxID.
ID_KEY = re.compile(r"^(?:id|Id|ID)$|[_-](?:id|ID)$|[a-z0-9]I[dD]$")
MAX_KEYS = 100  # ids kept per event for finding it: a payload with more is not about a few things
MAX_KEY_LENGTH = 256


def id_values(document: Any) -> Iterator[str]:
    """The value of every id field (`id`, `entityId`, `externalId`...) anywhere in a parsed body."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str | int) and not isinstance(value, bool):
                    if isinstance(key, str) and ID_KEY.search(key) and str(value).strip():
                        yield str(value).strip()
                elif isinstance(value, dict | list):
                    pending.append(value)
        elif isinstance(node, list):
            pending.extend(node)


def search_keys(raw: bytes | Any) -> list[str]:
    """The ids a stored event can be found by (a raw body, or one already parsed): at most MAX_KEYS of
    them, none longer than MAX_KEY_LENGTH; none when the body is not JSON."""
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = parse_json(bytes(raw))
        except ValueError:
            return []
    found = dict.fromkeys(value for value in id_values(raw) if len(value) <= MAX_KEY_LENGTH)
    return list(found)[:MAX_KEYS]

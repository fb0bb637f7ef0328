"""Kinds of webhook sources: how each proves a delivery authentic and where its event lies.

Every kind has `verify(headers, body, now) -> secret name` (raising Unauthorized) and
`parse(document, headers) -> Envelope` (raising BadRequest). Add a kind by adding a module and
a line here, and its config model in config.py.
"""

from __future__ import annotations

from typing import Protocol

from .base import Envelope, Headers
from .gu1 import Gu1Kind
from .kyc_webhooks import KycWebhooksKind
from .standard import StandardKind


class Kind(Protocol):
    """One source's verifier and reader."""

    name: str
    payload_field: str

    def verify(self, headers: Headers, body: bytes, now: object) -> str: ...

    def parse(self, document: dict, headers: Headers) -> Envelope: ...


KINDS: dict[str, type] = {
    Gu1Kind.name: Gu1Kind,
    KycWebhooksKind.name: KycWebhooksKind,
    StandardKind.name: StandardKind,
}


def payload_of(kind: str, document: object) -> object:
    """The event-specific data inside a parsed envelope of `kind` ({} when absent)."""
    if not isinstance(document, dict):
        return None
    return document.get(KINDS[kind].payload_field, {})


def kind_for(source: object) -> Kind:
    """The verifier for a configured source."""
    return KINDS[source.kind](source)  # type: ignore[attr-defined]


__all__ = ["KINDS", "Envelope", "Kind", "kind_for", "payload_of"]

"""Kinds of webhook sources: how each proves a delivery authentic and where its event lies.

Every kind has its settings model (`sources.<name>` in config.yaml), `verify(headers, body, now) ->
secret name` (raising NotAuthentic) and `parse(document, headers) -> Envelope` (raising Unreadable).
Add a kind by adding a module and a line in KINDS.
"""

from __future__ import annotations

from typing import Annotated, Protocol, Union

from pydantic import Field

from ..core.records import Envelope
from .base import Headers, NoHeaders
from .gu1 import Gu1Kind, Gu1Source
from .kyc_webhooks import KycWebhooksKind, KycWebhooksSource
from .standard import StandardKind, StandardSource


class Kind(Protocol):
    """One source's verifier and reader."""

    name: str
    payload_field: str

    def verify(self, headers: Headers, body: bytes, now: object) -> str: ...

    def parse(self, document: dict, headers: Headers) -> Envelope: ...


KINDS: dict[str, tuple[type, type]] = {
    Gu1Kind.name: (Gu1Source, Gu1Kind),
    KycWebhooksKind.name: (KycWebhooksSource, KycWebhooksKind),
    StandardKind.name: (StandardSource, StandardKind),
}

# `sources.<name>`: one of the kinds' settings, by `kind:`.
Source = Annotated[Union[tuple(settings for settings, _ in KINDS.values())], Field(discriminator="kind")]  # noqa: UP007


def payload_of(kind: str, document: object) -> object:
    """The event-specific data inside a parsed envelope of `kind` ({} when absent)."""
    if not isinstance(document, dict):
        return None
    return document.get(KINDS[kind][1].payload_field, {})


def kind_for(source: object) -> Kind:
    """The verifier for a configured source."""
    return KINDS[source.kind][1](source)  # type: ignore[attr-defined]


__all__ = ["KINDS", "Envelope", "Kind", "NoHeaders", "Source", "kind_for", "payload_of"]

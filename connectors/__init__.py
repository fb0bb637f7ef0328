"""Connectors: the systems actions reach. Each is one module that declares itself (a ConnectorSpec:
its settings, its client, its `classify`, its action types), and one line in the registry below.

    salesforce.upsert / update / create  ->  connectors.salesforce
    slack.post                            ->  connectors.slack

A connector without credentials runs dry: its actions are rendered and recorded, never sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import salesforce, slack
from .base import ActionError, ActionMeta, ActionParams, ActionType, Connector, ConnectorSpec, Result
from .registry import Connectors as _Connectors
from .registry import Registry

REGISTRY = Registry(
    salesforce.CONNECTOR,
    slack.CONNECTOR,
)

ConnectorSettings = REGISTRY.settings_model()


class Connectors(_Connectors):
    """This process's connectors, from the registry above."""

    def __init__(self, factories: dict[str, Callable[[Any], Connector]] | None = None):
        super().__init__(REGISTRY, factories)


__all__ = [
    "REGISTRY",
    "ActionError",
    "ActionMeta",
    "ActionParams",
    "ActionType",
    "ConnectorSettings",
    "ConnectorSpec",
    "Connectors",
    "Registry",
    "Result",
]

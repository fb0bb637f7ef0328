"""Connectors: the systems actions reach. One small interface (connectors.base), a plain registry.

    salesforce.upsert / update / create  ->  connectors.salesforce
    slack.post                            ->  connectors.slack

A connector without credentials runs dry: its actions are rendered and recorded, never sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from gu1sync.schema import StrictModel

from .base import ActionError, ActionMeta, Connector, Result
from .salesforce import SalesforceConnector, SalesforceSettings
from .slack import SlackConnector, SlackSettings


class ConnectorSettings(StrictModel):
    """`connectors:` in config.yaml."""

    salesforce: SalesforceSettings = Field(SalesforceSettings(), description="Where salesforce.* actions go.")
    slack: SlackSettings = Field(SlackSettings(), description="Where slack.post goes.")


FACTORIES: dict[str, Callable[[Any], Connector]] = {
    "salesforce": SalesforceConnector,
    "slack": SlackConnector,
}


def connector_name(action_type: str) -> str:
    """The connector an action type belongs to: salesforce.upsert -> salesforce."""
    return action_type.split(".", 1)[0]


class Connectors:
    """This process's connectors: built on first use, kept (a logged-in client is reused), and
    rebuilt only when their settings change in a reloaded config."""

    def __init__(self, factories: dict[str, Callable[[Any], Connector]] | None = None):
        self.factories = {**FACTORIES, **(factories or {})}
        self._built: dict[str, tuple[Any, Connector]] = {}

    def get(self, action_type: str, settings: ConnectorSettings) -> Connector:
        """The connector for an action type, under these settings."""
        name = connector_name(action_type)
        section = getattr(settings, name)
        built = self._built.get(name)
        if built is None or built[0] != section:
            built = (section, self.factories[name](section))
            self._built[name] = built
        return built[1]


__all__ = ["ActionError", "ActionMeta", "ConnectorSettings", "Connectors", "Result", "connector_name"]

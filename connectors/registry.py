"""The registry: every connector's declaration (its ConnectorSpec), and the questions the rest of
gu1-sync asks of them: which action types exist, which connector carries one out, the settings
model of `connectors:`, an attempt's time limits. Nothing outside a connector module names a
connector; adding one is a module and a line in connectors/__init__.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, create_model

from gu1sync.core.values import StrictModel

from .base import ActionType, BatchSettings, Connector, ConnectorSpec


class Registry:
    """The connectors gu1-sync knows, and their action types."""

    def __init__(self, *specs: ConnectorSpec):
        self.connectors: dict[str, ConnectorSpec] = {spec.name: spec for spec in specs}
        self.actions: dict[str, ActionType] = {}
        for spec in specs:
            for action in spec.actions:
                if not action.name.startswith(spec.name + "."):
                    raise ValueError(f"action type {action.name!r} must start with {spec.name + '.'!r}")
                self.actions[action.name] = action

    def connector_of(self, action_type: str) -> ConnectorSpec:
        """The connector that carries out an action type (salesforce.upsert -> salesforce)."""
        return self.connectors[action_type.split(".", 1)[0]]

    def action(self, action_type: str) -> ActionType:
        """The declaration of an action type."""
        return self.actions[action_type]

    def settings_model(self) -> type[StrictModel]:
        """The model of `connectors:` in config.yaml: one section per connector, each with its defaults."""
        fields: dict[str, Any] = {
            name: (spec.settings, Field(spec.settings(), description=spec.description))
            for name, spec in self.connectors.items()
        }
        model = create_model("ConnectorSettings", __base__=StrictModel, **fields)
        model.__doc__ = "`connectors:` in config.yaml."
        return model

    def settings_of(self, settings: Any, action_type: str) -> Any:
        """The section of `connectors:` for an action type's connector."""
        return getattr(settings, self.connector_of(action_type).name)

    def batching(self, settings: Any, action_type: str) -> BatchSettings | None:
        """How actions of this type share calls (`connectors.<name>.batch`), or None: each goes alone."""
        batch = getattr(self.settings_of(settings, action_type), "batch", None)
        if self.action(action_type).batch is None or batch is None or batch.max < 2:
            return None
        return batch

    def limits(self, settings: Any, action_type: str) -> tuple[float, float]:
        """(lease, time limit) of one attempt of an action type, under `connectors:` settings."""
        return self.connector_of(action_type).limits(self.settings_of(settings, action_type))

    def longest_attempt(self, settings: Any) -> float:
        """The time limit of the slowest connector's attempt."""
        return max(spec.limits(getattr(settings, name))[1] for name, spec in self.connectors.items())

    def dry_run_notices(self, settings: Any, connectors: Connectors) -> list[str]:
        """One sentence per connector that has no credentials (its actions are recorded, never sent)."""
        return [
            spec.dry_run_notice
            for name, spec in self.connectors.items()
            if connectors.build(name, getattr(settings, name)).dry_run
        ]


class Connectors:
    """This process's connectors: built on first use, kept (a logged-in client is reused), and rebuilt
    only when their settings change in a reloaded config. `factories` replace a connector's client
    (the tests hand Salesforce a session that trusts their emulator's CA)."""

    def __init__(self, registry: Registry, factories: dict[str, Callable[[Any], Connector]] | None = None):
        self.registry = registry
        self.factories = {name: spec.client for name, spec in registry.connectors.items()} | (factories or {})
        self._built: dict[str, tuple[Any, Connector]] = {}

    def build(self, name: str, section: Any) -> Connector:
        """The connector `name` under these settings (kept while they stay the same)."""
        built = self._built.get(name)
        if built is None or built[0] != section:
            built = (section, self.factories[name](section))
            self._built[name] = built
        return built[1]

    def get(self, action_type: str, settings: Any) -> Connector:
        """The connector for an action type, under these `connectors:` settings."""
        name = self.registry.connector_of(action_type).name
        return self.build(name, getattr(settings, name))

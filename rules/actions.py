"""What a rule can do: `actions:` items, each a mapping with one key, its type:

    - salesforce.upsert: {object: Contact, external_id_field: Gu1_External_Id__c, external_id: "...", fields: {}}

The action types and their parameters come from the connector registry (connectors/); this module
makes them into the one-key mappings a rule writes, with errors that name the known types.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Field, Tag

from connectors import REGISTRY, ActionParams
from gu1sync.core.values import CUSTOM_MESSAGES, StrictModel, did_you_mean

ACTIONS: dict[str, type[ActionParams]] = {name: action.params for name, action in REGISTRY.actions.items()}


def _action_model(params: type[ActionParams]) -> type[StrictModel]:
    """The one-key mapping `{<type>: params}` as a model (so errors and the JSON Schema follow it)."""
    return type(
        params.__name__ + "Action",
        (StrictModel,),
        {
            "__annotations__": {"params": params},
            "params": Field(alias=params.type),
            "__doc__": params.__doc__,
        },
    )


_ACTION_MODELS = {name: _action_model(params) for name, params in ACTIONS.items()}


def action_tag(value: Any) -> str | None:
    """The action type of `{type: params}`, or None."""
    if isinstance(value, StrictModel):
        return next((name for name, model in _ACTION_MODELS.items() if isinstance(value, model)), None)
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ACTIONS:
        return next(iter(value))
    return None


def unknown_action_message(value: Any) -> str:
    """What to say about an item of `actions:` that is not an action."""
    known = ", ".join(ACTIONS)
    if isinstance(value, dict) and len(value) == 1:
        name = str(next(iter(value)))
        return f'unknown action "{name}"{did_you_mean(name, list(ACTIONS))}; known: {known}'
    if isinstance(value, dict):
        return f"an action is a mapping with one key, its type ({known}); found {len(value)} keys"
    return f"an action is a mapping with one key, its type: {known}"


Action = Annotated[
    Union[tuple(Annotated[model, Tag(name)] for name, model in _ACTION_MODELS.items())],  # noqa: UP007
    Discriminator(action_tag, custom_error_type="unknown_action", custom_error_message="unknown action"),
]

CUSTOM_MESSAGES["unknown_action"] = unknown_action_message

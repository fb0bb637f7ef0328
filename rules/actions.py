"""The actions a rule can take, and the parameters each one takes.

An action is written as a mapping with one key, its type:

    - salesforce.upsert: {object: Contact, external_id_field: Gu1_External_Id__c, external_id: "...", fields: {}}

Every string in the parameters may be a template (compiled when the config loads). The connectors
that carry the actions out live in connectors/; this module is the language side.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, WithJsonSchema, model_validator

from gu1sync.schema import CUSTOM_MESSAGES, StrictModel, did_you_mean

from .templates import Template, compile_value

Templated = Annotated[
    Any,
    BeforeValidator(compile_value),
    WithJsonSchema({"description": "a value; strings may hold {{ templates }}"}),
]
TemplatedText = Annotated[
    str | Template,
    BeforeValidator(lambda v: compile_value(v) if isinstance(v, str) else v),
    WithJsonSchema({"type": "string", "description": "text; may hold {{ templates }}"}),
]
ApiName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="A Salesforce API name: Contact, Gu1_External_Id__c"),
]


class Params(StrictModel):
    """Parameters of one action type."""

    type: ClassVar[str]


class SalesforceUpsert(Params):
    """Create or update a record by an external id field: one API call."""

    type: ClassVar[str] = "salesforce.upsert"
    object: ApiName
    external_id_field: ApiName
    external_id: TemplatedText
    fields: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], Templated], Field(min_length=1)]


class SalesforceUpdate(Params):
    """Update a record found by its record id, or by an external id field."""

    type: ClassVar[str] = "salesforce.update"
    object: ApiName
    record_id: TemplatedText | None = None
    external_id_field: ApiName | None = None
    external_id: TemplatedText | None = None
    fields: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], Templated], Field(min_length=1)]

    @model_validator(mode="after")
    def _one_way_to_find_it(self) -> SalesforceUpdate:
        by_id = self.record_id is not None
        by_external = self.external_id_field is not None or self.external_id is not None
        if by_id == by_external:
            raise ValueError("give either record_id, or external_id_field and external_id")
        if by_external and (self.external_id_field is None or self.external_id is None):
            raise ValueError("external_id_field and external_id go together")
        return self


class SalesforceCreate(Params):
    """Create a record, for example a Case or a Task for compliance review."""

    type: ClassVar[str] = "salesforce.create"
    object: ApiName
    fields: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], Templated], Field(min_length=1)]


class SlackPost(Params):
    """Post a message: text and/or Block Kit blocks, or a ready-made layout."""

    type: ClassVar[str] = "slack.post"
    channel: TemplatedText | None = Field(None, description="#channel or channel id; required with a bot token.")
    text: TemplatedText | None = Field(None, description="The message, or its fallback text with blocks.")
    blocks: Templated = Field(None, description="Block Kit blocks (a list); strings inside may be templates.")
    layout: Literal["compliance-alert"] | None = Field(
        None, description="compliance-alert: who, external id, what changed, from what to what, why."
    )

    @model_validator(mode="after")
    def _something_to_say(self) -> SlackPost:
        if self.text is None and self.blocks is None and self.layout is None:
            raise ValueError("give text, blocks or layout")
        if self.blocks is not None and not isinstance(self.blocks, list):
            raise ValueError("blocks is a list of Block Kit blocks")
        return self


ACTIONS: dict[str, type[Params]] = {
    model.type: model for model in (SalesforceUpsert, SalesforceUpdate, SalesforceCreate, SlackPost)
}


def _action_model(params: type[Params]) -> type[StrictModel]:
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

"""The shape of config.yaml and the one function that loads it.

`load_config` reads the file strictly: every error in the file is reported at once, each with
file:line:column, and a missing environment variable stops start-up naming the variable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PrivateAttr,
    StringConstraints,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from connectors import ConnectorSettings
from rules.model import DEFAULT_RETRY, ConfigTest, RetrySettings, Rule
from rules.validate import LoadedTest, check_rules, load_tests

from .configfile import ConfigError, Document, Problem, interpolate, parse_yaml
from .kinds.standard import decode_secret
from .schema import (
    NAME_PATTERN,
    Duration,
    Name,
    PositiveDuration,
    Secret,
    SecretValue,
    StrictModel,
    one_or_many,
    problems_from,
    sort_problems,
)
from .timeutil import parse_duration

MIB = 1024 * 1024


class _SourceBase(StrictModel):
    environment: Literal["sandbox", "production"] = Field(
        description="Which Gu1 environment sends to this source; rules can match on it."
    )
    secrets: Annotated[list[SecretValue], Field(min_length=1)] = Field(
        description="Signing secrets, each ${ENV_VAR}. Any one verifies, so a new secret can be added "
        "before the old one is removed (rotation); each event records which one matched.",
        json_schema_extra=one_or_many,
    )
    description: str | None = Field(None, description="Free text for people reading the config.")

    @field_validator("secrets", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class Gu1Source(_SourceBase):
    """Gu1 webhooks: X-Webhook-Signature is the hex HMAC-SHA256 of the raw body."""

    kind: Literal["gu1"]


class KycWebhooksSource(_SourceBase):
    """The KYC-Webhooks provider: `sha256=<hex>` signature and a unix X-Webhook-Timestamp."""

    kind: Literal["kyc-webhooks"]
    tolerance: Duration = Field(300, description="How far X-Webhook-Timestamp may be from now, either way.")
    signed_payload: Literal["body", "timestamp.body"] = Field(
        "body", description="What the provider signs: the raw body, or `{timestamp}.{body}`."
    )


class StandardSource(_SourceBase):
    """Any sender following the Standard Webhooks spec (webhook-id, webhook-timestamp, webhook-signature)."""

    kind: Literal["standard"]
    tolerance: Duration = Field(300, description="How far webhook-timestamp may be from now, either way.")

    @field_validator("secrets")
    @classmethod
    def _secrets_decode(cls, secrets: list[Secret]) -> list[Secret]:
        for secret in secrets:
            try:
                decode_secret(secret.value)
            except ValueError:
                raise ValueError(
                    f"the value of ${secret.name} is not a Standard Webhooks secret (whsec_ followed by base64)"
                ) from None
        return secrets


Source = Annotated[Gu1Source | KycWebhooksSource | StandardSource, Field(discriminator="kind")]


DAY = 86400.0


def _retention(value: object) -> float | None:
    """`keep`, or a duration of at least a day (a bare number is seconds: `90` would purge after 90 s)."""
    if isinstance(value, str) and value.strip() == "keep":
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = None
    if seconds is None or seconds < DAY:
        raise ValueError("expected keep, or a duration of at least 1d such as 90d (a bare number is seconds)")
    return seconds


Retention = Annotated[
    float | None,
    BeforeValidator(_retention),
    WithJsonSchema(
        {
            "anyOf": [
                {"const": "keep"},
                {"type": "number", "minimum": DAY},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$"},
            ],
            "description": "keep, or a duration of at least 1d: 90d, 2160h",
        }
    ),
]


class StorageSettings(StrictModel):
    """Where accepted events and their history are kept."""

    path: str = Field("var/gu1-sync.db", description="SQLite file; a relative path is relative to config.yaml.")
    busy_timeout: Duration = Field(5, description="How long to wait for a lock held by another process.")
    retention: Retention = Field(
        "90d",
        validate_default=True,
        description="How long the personal data of a finished event is kept (its body, the rules' reasons, "
        "rendered requests, error texts); the audit trail of ids, statuses and outcomes stays. `keep`: forever.",
    )


class QueueSettings(StrictModel):
    """The RQ queue between the receiver and the workers."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for RQ, e.g. ${REDIS_URL}.")
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        "gu1-sync", description="RQ queue name."
    )
    sweep_interval: PositiveDuration = Field(
        30, description="How often workers look for stored events that never reached the queue."
    )


class ReceiverSettings(StrictModel):
    """The HTTP side."""

    max_body_bytes: int = Field(MIB, ge=1024, le=64 * MIB, description="Larger bodies get 413 unread.")


class Config(StrictModel):
    """config.yaml, validated."""

    version: Literal[1] = Field(description="Format version of this file; 1 today.")
    storage: StorageSettings = StorageSettings()
    queue: QueueSettings = QueueSettings()
    receiver: ReceiverSettings = ReceiverSettings()
    sources: Annotated[dict[Name, Source], Field(min_length=1)] = Field(
        description="Webhook senders; each is served at POST /webhooks/<name>.",
        json_schema_extra={"propertyNames": {"pattern": NAME_PATTERN}},
    )
    connectors: ConnectorSettings = Field(
        ConnectorSettings(), description="Salesforce and Slack; a connector without credentials runs dry."
    )
    retry: RetrySettings = Field(DEFAULT_RETRY, description="How failed actions are retried (rules may override).")
    rules: list[Rule] = Field([], description="What to do with events; see README, Rules.")
    tests: Annotated[
        Annotated[list[ConfigTest], Tag("list")] | Annotated[str, Tag("file")],
        Discriminator(lambda v: "file" if isinstance(v, str) else "list"),
    ] = Field(
        [], description="Config tests that `check` runs: a list, or a YAML file (relative to this one) holding it."
    )

    _file: str = PrivateAttr("config.yaml")
    _base_dir: str = PrivateAttr(".")
    _digest: str = PrivateAttr("")
    _warnings: list[Problem] = PrivateAttr(default_factory=list)
    _tests: list[LoadedTest] = PrivateAttr(default_factory=list)

    @property
    def file(self) -> str:
        """The file this config was read from."""
        return self._file

    @property
    def digest(self) -> str:
        """Short hash of the file's bytes: the config version each processed event records."""
        return self._digest

    @property
    def warnings(self) -> list[Problem]:
        """Things in the file that are allowed but probably not meant (a pattern that matches nothing)."""
        return self._warnings

    @property
    def config_tests(self) -> list[LoadedTest]:
        """The config tests, with their events read."""
        return self._tests

    def rule(self, name: str) -> Rule | None:
        """The rule of that name."""
        return next((rule for rule in self.rules if rule.name == name), None)

    def retry_for(self, rule_name: str) -> RetrySettings:
        """The retry policy for a rule's actions: the rule's own settings over the top-level ones."""
        rule = self.rule(rule_name)
        own = rule.retry.model_dump(exclude_none=True) if rule is not None and rule.retry else {}
        return RetrySettings(**{**DEFAULT_RETRY.model_dump(), **self.retry.model_dump(exclude_none=True), **own})

    @property
    def storage_path(self) -> str:
        """The SQLite file, resolved against the config file's directory."""
        return os.path.join(self._base_dir, os.path.expanduser(self.storage.path))


def parse_config(
    text: str, file: str = "config.yaml", environ: Mapping[str, str] | None = None, base_dir: str | None = None
) -> Config:
    """Validate config text; raise ConfigError listing every problem."""
    doc: Document = parse_yaml(text, file)
    if not isinstance(doc.data, dict):
        raise ConfigError([Problem(file, 1, 1, "", "the file must be a mapping with version: 1 and sources:")])
    problems = doc.duplicates + interpolate(doc, environ)
    found = check_rules(doc)
    problems += [p for p in found if p.severity == "error"]
    warnings = [p for p in found if p.severity != "error"]
    config = None
    try:
        config = Config.model_validate(doc.data)
    except ValidationError as exc:
        problems += problems_from(exc, doc, Config)
    if config is not None and not problems:
        config._file = file
        tests, test_problems = load_tests(config, doc, environ)
        problems += test_problems
        config._tests = tests
    if problems or config is None:
        raise ConfigError(sort_problems(problems + warnings))
    config._warnings = sort_problems(warnings)
    config._file = file
    config._base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(file))
    config._digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return config


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`."""
    try:
        text = FilePath(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(path, None, None, "", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(path, None, None, "", "the file is not UTF-8 text")]) from None
    return parse_config(text, path, environ)


def json_schema() -> str:
    """The JSON Schema of config.yaml, generated from the models that validate it."""
    schema = Config.model_json_schema(by_alias=True)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://gu1-sync/config.schema.json",
        **schema,
        "title": "gu1-sync config.yaml",
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"

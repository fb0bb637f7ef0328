"""The shape of config.yaml: one pydantic model per section, from which both validation and the
JSON Schema (config.schema.json) come. The sources' models come from their kinds, the connectors'
from the connector registry, the rules' from the rules language."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    PrivateAttr,
    StringConstraints,
    Tag,
    WithJsonSchema,
    model_validator,
)

from connectors import ConnectorSettings
from connectors.slack import SlackSettings
from gu1sync.core.pgurl import url_problem
from gu1sync.core.values import NAME_PATTERN, Duration, Name, PositiveDuration, SecretValue, StrictModel, duration
from gu1sync.core.yamlfile import Document, Problem
from gu1sync.kinds import Source
from rules.model import DEFAULT_RETRY, ConfigTest, RetrySettings, Rule

MIB = 1024 * 1024
DAY = 86400

# `keep`, or a duration of at least a day (a bare number is seconds: `90` would purge after 90 s).
Retention = duration(
    minimum=DAY,
    keep=True,
    message="expected keep, or a duration of at least 1d such as 90d (a bare number is seconds)",
)


class StorageSettings(StrictModel):
    """Where accepted events and their history are kept."""

    url: str | None = Field(
        None,
        description="Where events are kept: sqlite:///var/gu1-sync.db (one box; the default, made from `path`) "
        "or postgresql://user@host:5432/db (several boxes; the password from ${VAR} or PGPASSWORD).",
    )
    path: str = Field("var/gu1-sync.db", description="SQLite file; a relative path is relative to config.yaml.")
    busy_timeout: Duration = Field(5, description="How long to wait for a lock held by another process.")
    retention: Retention = Field(
        "90d",
        validate_default=True,
        description="How long the personal data of a finished event is kept (its body, the rules' reasons, "
        "rendered requests, error texts); the audit trail of ids, statuses and outcomes stays. `keep`: forever.",
    )

    @model_validator(mode="after")
    def _one_place(self) -> StorageSettings:
        if self.url is None:
            return self
        if not self.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("url: expected sqlite:///path/to/file.db or postgresql://user@host:5432/database")
        if "path" in self.model_fields_set:
            raise ValueError("give url or path, not both (url: sqlite:///... is the path as a URL)")
        if self.engine == "postgresql" and (problem := url_problem(self.url)) is not None:
            raise ValueError(f"url: {problem}")
        if self.url.startswith("sqlite:///"):
            if not self.url.removeprefix("sqlite:///"):
                raise ValueError("url: sqlite:/// needs a file, e.g. sqlite:///var/gu1-sync.db")
            object.__setattr__(self, "path", self.url.removeprefix("sqlite:///"))  # what the rest reads
        return self

    @property
    def engine(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if self.url is not None and not self.url.startswith("sqlite:") else "sqlite"


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
    read_timeout: PositiveDuration = Field(
        10, description="A request (headers and body) must arrive within this long, else 408 and it is dropped."
    )
    drain_file: str = Field(
        "var/drain",
        description="While this file exists /readyz answers 503 (draining) and webhooks are still accepted: "
        "`gu1-sync drain` makes it, `drain --off` removes it. Relative to config.yaml.",
    )


def _ratio(value: object) -> object:
    """A share written as 0.8 or as text such as 80%."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"expected a share such as 80% or 0.8, got {value!r}") from None
    return value


Ratio = Annotated[
    float,
    BeforeValidator(_ratio),
    Field(gt=0, le=1),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"},
            ],
            "description": "a share: 0.8, or 80%",
        }
    ),
]


class OpsSlack(SlackSettings):
    """Where gu1-sync tells of its own health: a bot token and a channel, or an incoming webhook."""

    channel: str | None = Field(None, description="#channel or channel id; required with a bot token.")

    @model_validator(mode="after")
    def _channel_with_token(self) -> OpsSlack:
        if self.token is not None and not self.channel:
            raise ValueError('give the channel to post to (channel: "#gu1-sync-ops") with a bot token')
        if self.token is None and self.webhook_url is None:
            raise ValueError("give a bot token and a channel, or an incoming webhook's webhook_url")
        return self


class DeadLetterAlerts(StrictModel):
    """Actions that fail for good: one digest per interval, never a message per action."""

    wait: Duration = Field(30, description="How long the first dead letter waits for others of its burst.")
    interval: PositiveDuration = Field(300, description="At most one digest per interval.")
    ids: int = Field(5, ge=1, le=50, description="How many action ids a digest lists.")


class SignatureAlerts(StrictModel):
    """A source refusing many signed requests: a secret regenerated in Gu1 but not here?"""

    failures: int = Field(10, ge=1, description="Refusals (signature or timestamp) on one source...")
    window: PositiveDuration = Field(300, description="...within this long.")


class BacklogAlerts(StrictModel):
    """Work that does not move."""

    age: PositiveDuration = Field(600, description="The oldest unfinished event older than this.")
    redis_down: PositiveDuration = Field(60, description="Redis unreachable for longer than this.")


class SalesforceApiAlerts(StrictModel):
    """Salesforce's daily API limit, shared with every other integration of the org."""

    usage: Ratio = Field(0.8, description="Alert above this share of the daily limit (Sforce-Limit-Info).")


class OpsSettings(StrictModel):
    """gu1-sync's own health: what it tells its operators, and where."""

    slack: OpsSlack | None = Field(
        None, description="The ops channel; without it, alerts are only kept (`gu1-sync alerts`) and logged."
    )
    check_every: PositiveDuration = Field(10, description="How often the conditions are checked.")
    dead_letters: DeadLetterAlerts = DeadLetterAlerts()
    signatures: SignatureAlerts = SignatureAlerts()
    backlog: BacklogAlerts = BacklogAlerts()
    salesforce_api: SalesforceApiAlerts = SalesforceApiAlerts()


def _network(value: object) -> object:
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an address or a network such as 10.0.0.0/8") from None
    return value


class MetricsSettings(StrictModel):
    """GET /metrics on the receiver (Prometheus' text format)."""

    allow: list[Annotated[str, AfterValidator(_network)]] = Field(
        ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
        description="Client addresses that may read it (loopback and private networks by default).",
    )
    token: SecretValue | None = Field(None, description="When set, a scrape must send Authorization: Bearer <it>.")


class ConsoleProxy(StrictModel):
    """Trust the user name an authenticating proxy (oauth2-proxy style) puts in a header: only from these
    addresses, and only when this section is there."""

    header: str = Field("X-Forwarded-User", description="The header that names the signed-in user.")
    addresses: Annotated[list[Annotated[str, AfterValidator(_network)]], Field(min_length=1)] = Field(
        description="The proxy's addresses (or networks); the header from anywhere else is ignored."
    )
    role: Literal["viewer", "operator"] = Field(
        "viewer", description="The role of a user the console has no account for (an account's own role wins)."
    )


class ConsoleLockout(StrictModel):
    """Sign-ins refused for a while after repeated failures."""

    attempts: int = Field(5, ge=1, le=100, description="Failed sign-ins in a row that lock an account...")
    duration: PositiveDuration = Field(900, description="...for this long.")


class ConsoleSettings(StrictModel):
    """`gu1-sync console`: the web console for ops and compliance staff."""

    bind: str = Field("127.0.0.1:8001", description="Address it listens on; never the receiver's port.")
    secret_key: SecretValue | None = Field(
        None, description="Signs the session cookies; without it, a random key per start (everyone signs in again)."
    )
    session_lifetime: PositiveDuration = Field(8 * 3600, description="A sign-in lasts this long.")
    lockout: ConsoleLockout = ConsoleLockout()
    proxy: ConsoleProxy | None = Field(None, description="Sign-in by an authenticating proxy in front.")


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
    connectors: ConnectorSettings = Field(  # type: ignore[valid-type]
        ConnectorSettings(), description="One section per connector; a connector without credentials runs dry."
    )
    retry: RetrySettings = Field(DEFAULT_RETRY, description="How failed actions are retried (rules may override).")
    ops: OpsSettings = Field(
        OpsSettings(), description="Operational alerts: gu1-sync telling its operators when it breaks."
    )
    metrics: MetricsSettings = Field(MetricsSettings(), description="GET /metrics, for Prometheus.")
    console: ConsoleSettings = Field(ConsoleSettings(), description="The web console (`gu1-sync console`).")
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
    _document: Document | None = PrivateAttr(None)
    _environ: Mapping[str, str] | None = PrivateAttr(None)

    @property
    def file(self) -> str:
        """The file this config was read from."""
        return self._file

    @property
    def base_dir(self) -> str:
        """The directory relative paths in it are relative to (the config file's)."""
        return self._base_dir

    @property
    def digest(self) -> str:
        """Short hash of the file's bytes: the config version each processed event records."""
        return self._digest

    @property
    def warnings(self) -> list[Problem]:
        """Things in the file that are allowed but probably not meant (a pattern that matches nothing)."""
        return self._warnings

    @property
    def document(self) -> Document:
        """The file as read (with the position of every key), for problems found after loading."""
        assert self._document is not None, "a Config is made by parse_config"
        return self._document

    @property
    def environ(self) -> Mapping[str, str] | None:
        """The variables ${NAME} was read from (None: the process environment)."""
        return self._environ

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
        """The SQLite file, resolved against the config file's directory (unused on PostgreSQL)."""
        return os.path.join(self._base_dir, os.path.expanduser(self.storage.path))

    @property
    def drain_path(self) -> str:
        """The receiver's drain file, resolved against the config file's directory."""
        return os.path.join(self._base_dir, os.path.expanduser(self.receiver.drain_file))

    @property
    def storage_url(self) -> str:
        """Where events are kept: the PostgreSQL URL, or the SQLite file as sqlite:///<absolute path>."""
        if self.storage.engine == "postgresql":
            return str(self.storage.url)
        return "sqlite:///" + os.path.abspath(self.storage_path)

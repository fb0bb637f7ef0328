"""Slack through slack-sdk: chat.postMessage with a bot token, or an incoming webhook.

Its declaration (CONNECTOR, at the end) gives the registry its settings, `slack.post` and the
ready-made layouts. slack-sdk's own retry handlers are turned off: a retry waits in the queue, never
in a worker. `classify` is the one place that decides which failures are worth retrying.

Long because a connector is one module, and Slack's is its client, its errors, its layout, its
safe-by-default text, its pace and its grouped messages: each reads the others' words.
"""

from __future__ import annotations

import logging
import re
import urllib.error
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError, SlackRequestError

from gu1sync.core.templates import (
    SlackBlocks,
    SlackText,
    Template,
    TemplatedText,
    compile_blocks,
    compile_value,
    is_template,
    slack_escape,
)
from gu1sync.core.values import PositiveDuration, SecretValue, StrictModel

from .base import (
    ActionError,
    ActionMeta,
    ActionParams,
    ActionType,
    ConnectorSpec,
    Grouping,
    Result,
    common,
    retry_after_seconds,
    scrub,
    secret_forms,
)

log = logging.getLogger(__name__)
# slack-sdk's own log lines carry what must not be logged: at DEBUG each request (the message, personal
# data; an incoming webhook's URL, a secret), at ERROR the body of an answer it cannot read (whatever a
# proxy echoed back). Our own lines say how each call went, so the library's are dropped.
sdk_log = logging.getLogger("connectors.slack.sdk")
sdk_log.setLevel(logging.CRITICAL)

# `ok: false` errors that clear up by themselves; every other one needs a person.
RETRYABLE_ERRORS = {"ratelimited", "service_unavailable", "fatal_error", "internal_error", "request_timeout"}


class SlackPace(StrictModel):
    """`connectors.slack.pace`: posts to one channel, across every worker process and box."""

    posts: int = Field(2, ge=0, description="At most this many posts to one channel... (0: not paced).")
    every: PositiveDuration = Field(2, description="...in any window this long, in whole seconds.")

    @model_validator(mode="after")
    def _whole_seconds(self) -> SlackPace:
        if self.every != int(self.every):
            raise ValueError("every is whole seconds (1s, 2s, 1m)")
        return self


class SlackSettings(StrictModel):
    """`connectors.slack`: a bot token, or an incoming webhook; with neither, Slack actions run dry."""

    token: SecretValue | None = Field(None, description="Bot token (xoxb-...), posts with chat.postMessage.")
    webhook_url: SecretValue | None = Field(None, description="Incoming webhook URL, if there is no token.")
    base_url: str = Field("https://slack.com/api/", description="The Web API's base URL.")
    timeout: PositiveDuration = Field(15, description="For every call to Slack.")
    pace: SlackPace = Field(
        SlackPace(), description="Slack allows about one post per second per channel, with short bursts."
    )

    @model_validator(mode="after")
    def _https(self) -> SlackSettings:
        if not self.base_url.startswith(("https://", "http://")):
            raise ValueError("base_url is an http(s) URL")
        if self.webhook_url is not None and not self.webhook_url.value.startswith(("https://", "http://")):
            # Named, never shown: the URL is the secret, and a malformed one ends up in error messages.
            raise ValueError(f"the value of ${self.webhook_url.name} is not an http(s) URL")
        return self


def classify(exc: Exception) -> ActionError:
    """Retryable or permanent, for every way a Slack call can fail."""
    if (known := common(exc)) is not None:
        return known
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = response.status_code
        error = response.get("error") if isinstance(response.data, dict) else None
        if not (isinstance(error, str) and re.fullmatch(r"[a-z_]+", error)):
            error = None  # slack-sdk's own words about a non-JSON answer, not a Slack error code
        if status == 429 or error == "ratelimited":
            return ActionError(
                "rate limited by Slack",
                retryable=True,
                status_code=status,
                code="ratelimited",
                retry_after=retry_after_seconds(
                    response.headers.get("Retry-After") or response.headers.get("retry-after")
                ),
            )
        if status >= 500 or error in RETRYABLE_ERRORS:
            return ActionError(f"Slack {status} {error or ''}".strip(), retryable=True, status_code=status, code=error)
        return ActionError(f"Slack says {error or status}", retryable=False, status_code=status, code=error)
    if isinstance(exc, urllib.error.HTTPError):  # from the webhook client, which does not raise its own
        return ActionError(f"HTTP {exc.code}", retryable=exc.code >= 500 or exc.code == 429, status_code=exc.code)
    if isinstance(exc, OSError):  # URLError, timeouts, refused and reset connections
        return ActionError(f"cannot reach Slack: {type(exc).__name__}", retryable=True)
    if isinstance(exc, SlackRequestError):
        return ActionError(f"bad request to Slack: {exc}", retryable=False)
    return ActionError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)


def classify_webhook(status: int, body: str, headers: dict[str, Any]) -> ActionError | None:
    """An incoming webhook answers with a status and a word; None when it was posted."""
    if status == 200:
        return None
    word = (body or "").strip()[:100] or None
    if status == 429:
        return ActionError(
            "rate limited by Slack",
            retryable=True,
            status_code=429,
            code=word,
            retry_after=retry_after_seconds(headers.get("Retry-After") or headers.get("retry-after")),
        )
    return ActionError(
        f"Slack webhook {status} {word or ''}".strip(), retryable=status >= 500, status_code=status, code=word
    )


class SlackConnector:
    """Carries out slack.post."""

    name = "slack"

    def __init__(self, settings: SlackSettings):
        self.settings = settings
        self.dry_run = settings.token is None and settings.webhook_url is None
        timeout = max(1, round(settings.timeout))
        self._web = (
            WebClient(
                token=settings.token.value,
                base_url=settings.base_url,
                timeout=timeout,
                retry_handlers=[],
                logger=sdk_log,
            )
            if settings.token
            else None
        )
        self._hook = (
            WebhookClient(settings.webhook_url.value, timeout=timeout, retry_handlers=[], logger=sdk_log)
            if settings.webhook_url and not settings.token
            else None
        )
        hook = settings.webhook_url.value if settings.webhook_url else None
        # The webhook URL's path is the secret part of it: a message may quote the path alone.
        self._secrets = secret_forms(
            [settings.token.value if settings.token else None, hook, urlsplit(hook).path if hook else None]
        )

    def check(self, channel: str | None = None) -> tuple[bool | None, str]:
        """auth.test with the bot token (read-only), and the channel's info when one is named; an incoming
        webhook cannot be checked without posting."""
        if self.dry_run:
            return None, "no credentials (token or webhook_url): slack.post actions run dry"
        if self._web is None:
            return None, "an incoming webhook: it cannot be checked without posting to it"
        try:
            who = self._web.auth_test()
            found = f"signed in as {who.get('user')} in {who.get('team')}"
            if channel:
                try:
                    info = self._web.conversations_info(channel=channel.removeprefix("#"))
                except SlackApiError as exc:
                    if exc.response.get("error") == "missing_scope":  # the bot may post without channels:read
                        return None, f"{found}; cannot see {channel} (the token lacks channels:read)"
                    raise
                found += f"; {channel} is {'archived' if info['channel'].get('is_archived') else 'there'}"
                if info["channel"].get("is_archived"):
                    raise ActionError(f"{channel} is archived", retryable=False, code="is_archived")
            return True, found
        except ActionError:
            raise
        except Exception as exc:  # every failure is classified in one place, and no secret leaves in it
            raise scrub(classify(exc), self._secrets) from exc

    def execute(self, action_type: str, params: dict[str, Any], meta: ActionMeta) -> Result:
        """Post one message."""
        if action_type != "slack.post":
            raise ActionError(f"slack cannot {action_type}", retryable=False)
        text, blocks = params.get("text"), params.get("blocks")
        try:
            if self._web is not None:
                if not params.get("channel"):
                    raise ActionError("slack.post needs a channel when posting with a bot token", retryable=False)
                response = self._web.chat_postMessage(
                    channel=params["channel"],
                    text=text,
                    blocks=blocks,
                    # The action id travels with the message, so a post can be traced back to its action.
                    metadata={"event_type": "gu1_sync_action", "event_payload": {"action_id": meta.action_id}},
                )
                return Result(response.status_code, f"posted ts {response.get('ts')} in {response.get('channel')}")
            response = self._hook.send(text=text, blocks=blocks)
            problem = classify_webhook(response.status_code, response.body, dict(response.headers or {}))
            if problem is not None:
                raise problem
            return Result(response.status_code, "posted via incoming webhook")
        except Exception as exc:  # every failure is classified in one place, and no secret leaves in it
            raise scrub(classify(exc), self._secrets) from exc


# -- slack.post and its ready-made layouts ----------------------------------------------------------
# `compliance-alert` reads well at a glance: who, external id, what changed, from what to what, why.
# Every value from the event is escaped for Slack (as in any rule's Slack text; `| slack` says so here
# too), so a name such as `<!channel>` cannot notify a whole channel, and every field has a default,
# so no event lacks one.

# default(x, true): a value that is there but null or empty counts as missing.
_WHO = "{{ entity.name | default(payload.entityId | default('unknown entity', true), true) | slack }}"
_EXTERNAL = "{{ entity.externalId | default('—', true) | slack }}"
_FROM_TO = (
    "{{ payload.previousStatus | default('—', true) | slack }} → "
    "{{ payload.status | default(entity.status | default('—', true), true) | slack }}"
)
_WHY = (
    "{{ payload.reason | default(payload.rejectionReason | default(payload.rule.name | default("
    "payload.warnings | default(['—'], true) | join('; '), true), true), true) | slack }}"
)
_WHAT = "{{ event | slack }}{% if payload.changes is mapping %}: {{ payload.changes | join(', ') | slack }}{% endif %}"

LAYOUTS: dict[str, dict[str, Any]] = {
    "compliance-alert": {
        "text": f"{_WHAT} for {_WHO} ({_EXTERNAL}): {_FROM_TO}. {_WHY}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "{{ event | truncate(150) }}", "emoji": True}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Who*\n{_WHO}"},
                    {"type": "mrkdwn", "text": f"*External id*\n{_EXTERNAL}"},
                    {"type": "mrkdwn", "text": f"*What changed*\n{_WHAT}"},
                    {"type": "mrkdwn", "text": f"*From → to*\n{_FROM_TO}"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why*\n{_WHY}"}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "{{ source }} ({{ environment }}) · event {{ id }} · "
                        "{{ occurred_at | default(received_at, true) | date }}",
                    }
                ],
            },
        ],
    }
}

_COMPILED = {
    name: {"text": compile_value(layout["text"], slack_text=True), "blocks": compile_blocks(layout["blocks"])}
    for name, layout in LAYOUTS.items()
}


class SlackPost(ActionParams):
    """Post a message: text and/or Block Kit blocks, or a ready-made layout."""

    type: ClassVar[str] = "slack.post"
    channel: TemplatedText | None = Field(None, description="#channel or channel id; required with a bot token.")
    text: SlackText | None = Field(
        None,
        description="The message, or its fallback text with blocks. Values from the event are escaped "
        "(`<!channel>` shows as typed); `| safe` lets one through as it is.",
    )
    blocks: SlackBlocks = Field(
        None, description="Block Kit blocks (a list); strings may be templates, mrkdwn text escapes the event's values."
    )
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


def with_layout(values: dict[str, Any]) -> dict[str, Any]:
    """A post's values with its layout's text and blocks, unless the rule gives its own."""
    layout = values.pop("layout", None)
    return {**_COMPILED[layout], **values} if layout is not None else values


def _channel_key(params: dict[str, Any]) -> str:
    return str(params.get("channel") or "").removeprefix("#").lower()


# A grouped match's line, unless the rule's `group.line` says otherwise: the layout's one-line summary.
GROUP_LINE = compile_value(LAYOUTS["compliance-alert"]["text"], slack_text=True)
LINE_LENGTH = 300  # characters of one line in a group's message at most


def compose_group(first: dict[str, Any], lines: list[str], rule: str, max_lines: int) -> dict[str, Any]:
    """The one post of a group: a header with the count, a line per match (`max_lines` at most), and how
    many more there were; to the channel its members share."""
    count = len(lines)
    shown = [line if len(line) <= LINE_LENGTH else line[: LINE_LENGTH - 1] + "…" for line in lines[:max_lines]]
    text = "\n".join(
        [
            f"*{count} {'match' if count == 1 else 'matches'} of {slack_escape(rule)}*",
            *(f"• {line}" for line in shown),
            *([f"…and {count - len(shown)} more"] if count > len(shown) else []),
        ]
    )
    return {"channel": first.get("channel"), "text": text}


def paced(params: dict[str, Any], settings: SlackSettings) -> tuple[str, int, int] | None:
    """Posts to one channel share its pace (an incoming webhook posts to one channel, its own)."""
    if settings.pace.posts == 0:
        return None
    channel = _channel_key(params) if settings.token else "webhook"
    return f"slack:{channel}", settings.pace.posts, int(settings.pace.every)


def unescaped(params: dict[str, Any]) -> list[tuple[tuple, str]]:
    """Where a rule's Slack text lets a value from the event through unescaped (`| safe`): `check` warns."""
    found = []
    texts: list[tuple[tuple, Any]] = [(("text",), params.get("text"))]
    texts += [(("blocks", *path), text) for path, text in _mrkdwn_texts(params.get("blocks"))]
    for path, text in texts:
        if not (isinstance(text, str) and is_template(text)):
            continue
        try:
            template = Template(text)
        except ValueError:  # a broken template is an error of its own, reported where it is
            continue
        if "safe" in template.filters:
            found.append(
                (
                    path,
                    "`| safe` posts the event's own text unescaped: a name typed as <!channel> would notify "
                    "the whole channel, <https://evil.example|Review case> would be a link; keep it only for "
                    "values that are mentions or links on purpose",
                )
            )
    return found


def _mrkdwn_texts(value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(value, dict):
        found = [(path + ("text",), value.get("text"))] if value.get("type") == "mrkdwn" else []
        for key, item in value.items():
            if key != "text" or value.get("type") != "mrkdwn":
                found += _mrkdwn_texts(item, (*path, key))
        return found
    if isinstance(value, list):
        return [found for n, item in enumerate(value) for found in _mrkdwn_texts(item, (*path, n))]
    return []


# Slack's answers that refuse the credentials: a token revoked or wrong, an app removed, a webhook gone.
REFUSALS = {
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "no_permission",
    "org_login_required",
    "ekm_access_denied",
    "no_service",
    "no_active_hooks",
    "invalid_token",
    "action_prohibited",
}


def refuses_credentials(error: ActionError) -> bool:
    """A refusal of the credentials (or of the webhook URL), not of one message."""
    return not error.retryable and (error.code in REFUSALS or error.status_code in (401, 403, 404, 410))


CONNECTOR = ConnectorSpec(
    name="slack",
    description="Where slack.post goes.",
    settings=SlackSettings,
    client=SlackConnector,
    classify=classify,
    actions=(
        ActionType(
            SlackPost,
            prepare=with_layout,
            lint=unescaped,
            pace=paced,
            group=Grouping(together=_channel_key, line=GROUP_LINE, compose=compose_group),
        ),
    ),  # a repeated post shows twice
    dry_run_notice="Slack has no credentials (connectors.slack.token or webhook_url): slack.post actions run "
    "dry, rendered and recorded but never sent.",
    refuses_credentials=refuses_credentials,
    check=lambda connector: connector.check(),
)

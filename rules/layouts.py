"""Ready-made Slack layouts, written as templates like any other value.

`compliance-alert` reads well at a glance: who, external id, what changed, from what to what, why.
Every value from the event is escaped for Slack (`| slack`), so a name such as `<!channel>`
cannot notify a whole channel, and every field has a default, so no event lacks one.
"""

from __future__ import annotations

from typing import Any

from .templates import compile_value

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

COMPILED = {name: compile_value(layout) for name, layout in LAYOUTS.items()}

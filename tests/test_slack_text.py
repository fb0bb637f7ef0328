"""Slack text is safe by default: the person being verified types their own name into the KYC flow, and
a name such as `<!channel>` or `<https://evil.example|Review case>` must show as typed, in any rule's
`text` and `mrkdwn` blocks, not only in the ready-made layout. `| safe` opts one value out, and `check`
warns where a rule does. Other connectors' values are never escaped."""

from __future__ import annotations

import textwrap

from gu1sync.config import parse_config
from gu1sync.core.records import Event
from rules.engine import evaluate
from tests.support.helpers import SECRETS

HEAD = """version: 1
sources:
  gu1-production:
    kind: gu1
    environment: production
    secrets: ["${GU1_SECRET}"]
rules:
"""  # rules start on line 8

PING = "<!channel>"
PHISH = "<https://evil.example|Review case>"


def config_with(rules_yaml: str):
    return parse_config(HEAD + textwrap.dedent(rules_yaml), "config.yaml", environ=SECRETS)


def event(name: str, warnings: list[str] | None = None) -> Event:
    payload = {
        "status": "rejected",
        "entity": {"id": "e-1", "externalId": "customer_1", "name": name, "type": "person"},
        "warnings": warnings or [],
        "reviewer": "<@U024BE7LH>",
        "changes": {"<!here>": {"new": 1}},
    }
    return Event(
        id="ev_1",
        dedupe_key="k",
        source="gu1-production",
        kind="gu1",
        environment="production",
        type="kyc.validation_rejected",
        occurred_at="2025-01-15T11:00:00.000Z",
        received_at="2025-01-15T11:00:01.000Z",
        payload=payload,
        raw=b"{}",
    )


def rendered(config, ev: Event) -> list[dict]:
    return [action.params for result in evaluate(config.rules, ev) if result.matched for action in result.actions]


RULE = """\
- name: rejected
  on: kyc.validation_rejected
  actions:
    - slack.post:
        channel: "#compliance"
        text: "KYC rejected for {{ entity.name }}: {{ payload.warnings | join('; ') }}"
        blocks:
          - type: section
            text: {type: mrkdwn, text: "*Who* {{ entity.name }}"}
            fields:
              - {type: mrkdwn, text: "{{ entity.name | slack }}"}
              - {type: plain_text, text: "{{ entity.name }}"}
          - type: actions
            elements:
              - type: button
                text: {type: plain_text, text: Open}
                url: "https://gu1.example/entities/{{ entity.id }}?n={{ entity.name | truncate(20) }}"
    - salesforce.upsert:
        object: Contact
        external_id_field: Gu1_External_Id__c
        external_id: "{{ entity.externalId }}"
        fields: {Name__c: "{{ entity.name }}"}
"""


def test_event_values_in_a_hand_written_text_are_escaped():
    config = config_with(RULE)
    [post, upsert] = rendered(config, event(PING, warnings=[PHISH, "a & b"]))
    assert post["text"] == ("KYC rejected for &lt;!channel&gt;: &lt;https://evil.example|Review case&gt;; a &amp; b")
    section = post["blocks"][0]
    assert section["text"]["text"] == "*Who* &lt;!channel&gt;"  # the template's own * stays markup
    assert section["fields"][0]["text"] == "&lt;!channel&gt;"  # `| slack` written out: escaped once, not twice
    assert section["fields"][1]["text"] == PING  # plain_text: Slack shows it as it is, nothing to escape
    assert post["blocks"][1]["elements"][0]["url"].startswith("https://gu1.example/entities/e-1?n=<!channel>")
    assert upsert["fields"]["Name__c"] == PING  # Salesforce gets the name as typed


def test_a_single_expression_and_keys_are_escaped_too():
    config = config_with(
        """\
        - name: rejected
          on: kyc.validation_rejected
          actions:
            - slack.post: {channel: "#c", text: "{{ entity.name }}"}
            - slack.post: {channel: "#c", text: "changed: {{ payload.changes | join(', ') }}"}
        """
    )
    first, second = rendered(config, event(PHISH))
    assert first["text"] == "&lt;https://evil.example|Review case&gt;"
    assert second["text"] == "changed: &lt;!here&gt;"


def test_the_layout_escapes_as_before():
    config = config_with(
        """\
        - name: rejected
          on: kyc.validation_rejected
          actions:
            - slack.post: {channel: "#c", layout: compliance-alert}
        """
    )
    [post] = rendered(config, event(PING))
    assert "&lt;!channel&gt;" in post["text"] and PING not in post["text"]
    assert "&amp;lt;" not in post["text"]  # never twice


def test_safe_lets_a_value_through_and_check_warns_where():
    config = config_with(
        """\
        - name: rejected
          on: kyc.validation_rejected
          actions:
            - slack.post:
                channel: "#c"
                text: "Reviewer {{ payload.reviewer | safe }}, for {{ entity.name }}"
                blocks:
                  - type: context
                    elements: [{type: mrkdwn, text: "{{payload.reviewer|safe}}"}]
        """
    )
    [post] = rendered(config, event(PING))
    assert post["text"] == "Reviewer <@U024BE7LH>, for &lt;!channel&gt;"
    assert post["blocks"][0]["elements"][0]["text"] == "<@U024BE7LH>"
    warnings = [str(w) for w in config.warnings]
    assert len(warnings) == 2
    assert warnings[0].startswith("config.yaml:13:15: warning: rules[0].actions[0].slack.post.text: `| safe`")
    assert "rules[0].actions[0].slack.post.blocks[0].elements[0].text" in warnings[1]
    assert "config.yaml:16:" in warnings[1]


def test_safe_elsewhere_changes_nothing_and_needs_no_warning():
    config = config_with(
        """\
        - name: rejected
          on: kyc.validation_rejected
          actions:
            - salesforce.upsert:
                object: Contact
                external_id_field: Gu1_External_Id__c
                external_id: "{{ entity.externalId }}"
                fields: {Name__c: "{{ entity.name | safe }}"}
        """
    )
    [upsert] = rendered(config, event(PING))
    assert upsert["fields"]["Name__c"] == PING
    assert config.warnings == []

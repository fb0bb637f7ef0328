"""Grouped Slack alerts (a rule's `group:`, Alertmanager's idea): matches that share a key within `wait`
become one message with a header, a line per entity and "...and N more" past `max`; each match is still
an action of its own, recorded and traceable to the message that carried it. Real Redis, RQ, SQLite,
slack-sdk and the Slack emulator; the windows are seconds long, not the default 30 s."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from gu1sync.cli import cli
from gu1sync.config import parse_config
from gu1sync.core.yamlfile import ConfigError
from gu1sync.storage.retention import purge_older_than
from tests.support.delivery import ENV, drain, post, setup, status_changed  # noqa: F401 - setup is a fixture
from tests.support.helpers import SECRETS

pytestmark = [pytest.mark.real_redis, pytest.mark.storage]

GROUPED = """
  - name: blocked-digest
    on: entity.status_changed
    when: {{status_changes: {{to: [blocked]}}}}
    group: {{by: "{{{{ payload.status }}}}", wait: {wait}, max: {max}}}
    actions:
      - slack.post: {{channel: "#onboarding", text: "{{{{ entity.name }}}} is blocked"}}
"""
ONBOARDING = "C0ONBOARDING"


def grouped(setup, wait: str = "2s", max_lines: int = 50):
    return setup(extra=GROUPED.format(wait=wait, max=max_lines))


def block(app, n: int) -> str:
    return post(app, status_changed(f"cust-{n:02d}", "blocked", "active", f"2025-01-08T09:00:{n:02d}Z"))["id"]


def digest_messages(workspace) -> list[dict]:
    return [m for m in workspace.messages if m["channel"] == ONBOARDING]


def test_thirty_matches_in_the_window_are_one_message_and_a_later_match_a_new_one(setup, workspace, redis_conn):
    config, app, ctx = grouped(setup, wait="3s")
    events = [block(app, n) for n in range(30)]
    drain(redis_conn)
    [message] = digest_messages(workspace)
    lines = message["text"].splitlines()
    assert lines[0] == "*30 matches of blocked-digest*"
    assert len(lines) == 31 and all(line.startswith("• ") for line in lines[1:])
    # A line per entity (by default: what changed, who, the external id, from what to what, why); the
    # name the person typed shows as typed.
    assert lines[1] == (
        "• entity.status_changed for Zoë &lt;!channel&gt; Doe (cust-00): active → blocked. compliance review"
    )
    assert sorted(line.split("(")[1].split(")")[0] for line in lines[1:]) == [f"cust-{n:02d}" for n in range(30)]
    # Every match is an action of its own, done, and says which message carried it.
    actions = [a for e in events for a in ctx.store.actions(e) if a["rule"] == "blocked-digest"]
    assert len(actions) == 30 and {a["status"] for a in actions} == {"done"}
    carrier = next(a for a in actions if a["group_id"] == a["id"])
    assert message["metadata"]["event_payload"]["action_id"] == carrier["id"]
    assert carrier["result"].startswith(f"posted ts {message['ts']}") and "group of 30" in carrier["result"]
    for member in actions:
        assert member["group_id"] == carrier["id"]
        if member is not carrier:
            assert member["result"].startswith(
                f"in the group message of action {carrier['id']}: posted ts {message['ts']}"
            )
    # The rule's window is over: the next match opens a new group, and a new message.
    later = block(app, 31)
    drain(redis_conn)
    assert len(digest_messages(workspace)) == 2
    assert digest_messages(workspace)[1]["text"].splitlines()[0] == "*1 match of blocked-digest*"
    [last] = [a for a in ctx.store.actions(later) if a["rule"] == "blocked-digest"]
    assert last["group_id"] == last["id"] != carrier["id"]


def test_past_max_the_message_says_how_many_more(setup, workspace, redis_conn):
    config, app, ctx = grouped(setup, wait="2s", max_lines=10)
    for n in range(25):
        block(app, n)
    drain(redis_conn)
    [message] = digest_messages(workspace)
    lines = message["text"].splitlines()
    assert lines[0] == "*25 matches of blocked-digest*" and len(lines) == 12
    assert lines[-1] == "…and 15 more"


def test_matches_with_different_keys_go_in_different_messages_and_other_actions_run_for_each(
    setup, org, workspace, redis_conn
):
    config, app, ctx = setup(
        extra="""
  - name: by-country
    on: entity.status_changed
    group: {by: "{{ payload.reason }}", wait: 2s, line: "{{ entity.externalId }}"}
    actions:
      - slack.post: {channel: "#onboarding", text: "{{ entity.externalId }}"}
      - salesforce.upsert:
          object: Lead
          external_id_field: Gu1_External_Id__c
          external_id: "{{ entity.externalId }}"
          fields: {Reason__c: "{{ payload.reason }}"}
"""
    )
    for n in range(6):
        reason = "sanctions" if n % 2 else "pep"
        post(app, status_changed(f"k{n}", "under_review", "active", f"2025-01-08T09:00:0{n}Z", reason))
    drain(redis_conn)
    texts = sorted(m["text"] for m in digest_messages(workspace))
    assert [t.splitlines()[0] for t in texts] == ["*3 matches of by-country*"] * 2
    assert {tuple(sorted(t.splitlines()[1:])) for t in texts} == {("• k0", "• k2", "• k4"), ("• k1", "• k3", "• k5")}
    assert len(org.records["Lead"]) == 6  # the upsert ran for every match: only Slack posts are grouped


def test_a_group_message_that_fails_takes_its_members_with_it_and_replay_sends_it_once(setup, workspace, redis_conn):
    config, app, ctx = grouped(setup, wait="1s")
    workspace.archived.add("onboarding")
    events = [block(app, n) for n in range(5)]
    drain(redis_conn)
    actions = [a for e in events for a in ctx.store.actions(e) if a["rule"] == "blocked-digest"]
    assert {a["status"] for a in actions} == {"dead"}
    carrier = next(a for a in actions if a["group_id"] == a["id"])
    members = [a for a in actions if a is not carrier]
    assert all(f"the group message (action {carrier['id']}) failed" in m["error"] for m in members)
    assert {a["error_code"] for a in actions} == {"is_archived"}

    workspace.archived.clear()
    result = CliRunner().invoke(cli, ["--config", config.file, "replay", "--since", "1h"], env=ENV)
    assert result.exit_code == 0, result.output
    assert result.output.count("goes again in its group's message") == 4
    drain(redis_conn)
    [message] = digest_messages(workspace)
    assert message["text"].splitlines()[0] == "*5 matches of blocked-digest*"
    assert {a["status"] for e in events for a in ctx.store.actions(e) if a["rule"] == "blocked-digest"} == {"done"}


def test_group_needs_a_slack_post_and_its_templates_are_checked():
    head = (
        'version: 1\nsources:\n  g:\n    kind: gu1\n    environment: production\n    secrets: ["${GU1_SECRET}"]\n'
        "rules:\n"
    )
    rule = """\
        - name: r
          on: entity.status_changed
          group: {by: "{{ payload.status }}"}
          actions:
            - salesforce.create: {object: Case, fields: {Subject: x}}
        """
    with pytest.raises(ConfigError) as err:
        parse_config(head + textwrap.dedent(rule), "config.yaml", environ=SECRETS)
    assert [str(p) for p in err.value.problems] == [
        "config.yaml:10:10: rules[0].group: group: gathers slack.post actions into one message; this rule has none"
    ]
    bad_line = rule.replace('"{{ payload.status }}"', '"{{ payload.status }}", line: "{{ nope }}"').replace(
        "salesforce.create: {object: Case, fields: {Subject: x}}", 'slack.post: {channel: "#c", text: hi}'
    )
    with pytest.raises(ConfigError) as err:
        parse_config(head + textwrap.dedent(bad_line), "config.yaml", environ=SECRETS)
    assert "rules[0].group.line: unknown name 'nope'" in str(err.value.problems[0])


def test_a_grouped_action_waits_for_its_window_not_for_a_first_attempt(setup, workspace, redis_conn):
    config, app, ctx = grouped(setup, wait="2s")
    first = block(app, 1)
    drain(redis_conn)
    [message] = digest_messages(workspace)
    [action] = [a for a in ctx.store.actions(first) if a["rule"] == "blocked-digest"]
    assert action["status"] == "done" and "group of 1" in action["result"]
    # Its one attempt started once the group's window had closed, not when the event was processed.
    [attempt] = ctx.actions.attempts(action["id"])
    closes_at = ctx.store.db.execute("SELECT closes_at FROM action_groups WHERE id = ?", (action["id"],)).fetchone()[0]
    assert attempt["started_at"] >= closes_at > action["created_at"]


def test_retention_removes_the_lines_and_keys_of_grouped_matches(setup, workspace, redis_conn):
    config, app, ctx = grouped(setup, wait="1s")
    events = [block(app, n) for n in range(3)]
    drain(redis_conn)
    assert len(digest_messages(workspace)) == 1
    db = ctx.store.db
    assert db.execute("SELECT COUNT(*) FROM actions WHERE group_line LIKE '%Zoë%'").fetchone()[0] == 3
    purge_older_than(ctx.store, datetime.now(UTC) + timedelta(seconds=1), now=datetime.now(UTC))
    assert db.execute("SELECT COUNT(*) FROM actions WHERE group_line IS NOT NULL").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM action_groups").fetchone()[0] == 0
    assert {a["status"] for e in events for a in ctx.store.actions(e) if a["rule"] == "blocked-digest"} == {"done"}

"""Rules in config.yaml: every validation error with its exact message and place, warnings, config tests,
the JSON Schema, shadow mode and throttles as the worker records them.

Long because it is, above all, a table of validation messages with their exact places: one file reads
as the reference of what `check` says.
"""

from __future__ import annotations

import json
import textwrap

import jsonschema
import pytest
from click.testing import CliRunner

from gu1sync.cli import cli
from gu1sync.config import json_schema, load_config, parse_config
from gu1sync.core.status import ActionStatus
from gu1sync.core.yamlfile import ConfigError, parse_yaml
from gu1sync.simulate import event_from_document, load_config_tests, run_config_tests
from gu1sync.storage import Store
from rules.engine import evaluate
from tests.support.helpers import ROOT, SECRETS, FakeClock

PENDING, SHADOW, THROTTLED = ActionStatus.PENDING, ActionStatus.SHADOW, ActionStatus.THROTTLED

HEAD = """version: 1
sources:
  gu1-production:
    kind: gu1
    environment: production
    secrets: ["${GU1_SECRET}"]
rules:
"""  # rules start on line 8

ONE_RULE = """  - name: r
    on: kyc.validation_approved
    actions:
      - slack.post: {channel: "#c", text: hi}
"""


def problems(rules_yaml: str, tail: str = "") -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(HEAD + textwrap.dedent(rules_yaml) + tail, "config.yaml", environ=SECRETS)
    return [str(p) for p in err.value.problems]


def ok(rules_yaml: str, tail: str = ""):
    return parse_config(HEAD + textwrap.dedent(rules_yaml) + tail, "config.yaml", environ=SECRETS)


VALIDATION_CASES = [
    (
        "unknown rule key with a did-you-mean",
        """\
        - name: r
          on: kyc.validation_approved
          acions: []
          actions:
            - slack.post: {channel: "#c", text: hi}
        """,
        ['config.yaml:10:3: rules[0].acions: unknown key "acions" (did you mean "actions"?)'],
    ),
    (
        "missing required keys",
        """\
        - name: r
          when: {field: payload.status, eq: x}
        """,
        [
            'config.yaml:8:3: rules[0]: missing required key "on"',
            'config.yaml:8:3: rules[0]: missing required key "actions"',
        ],
    ),
    (
        "unknown action type",
        """\
        - name: r
          on: kyc.*
          actions:
            - slack.pots: {channel: "#c", text: hi}
            - {slack.post: {text: a}, salesforce.create: {object: Case, fields: {A: 1}}}
        """,
        [
            'config.yaml:11:7: rules[0].actions[0]: unknown action "slack.pots" (did you mean "slack.post"?); '
            "known: salesforce.upsert, salesforce.update, salesforce.create, slack.post",
            "config.yaml:12:7: rules[0].actions[1]: an action is a mapping with one key, its type "
            "(salesforce.upsert, salesforce.update, salesforce.create, slack.post); found 2 keys",
        ],
    ),
    (
        "unknown key inside an action, and bad parameters",
        """\
        - name: r
          on: kyc.*
          actions:
            - salesforce.upsert:
                object: Contact
                external_id_feild: Gu1_External_Id__c
                external_id: "{{ entity.externalId }}"
                fields: {"Bad Name": 1}
        """,
        [
            'config.yaml:11:7: rules[0].actions[0].salesforce.upsert: missing required key "external_id_field"',
            "config.yaml:13:9: rules[0].actions[0].salesforce.upsert.external_id_feild: unknown key "
            '"external_id_feild" (did you mean "external_id_field"?)',
            "config.yaml:15:18: rules[0].actions[0].salesforce.upsert.fields.Bad Name: 'Bad Name' is not a valid "
            "name: string should match pattern '^[A-Za-z][A-Za-z0-9_]*$'",
        ],
    ),
    (
        "template errors at load: syntax, unknown name, unknown filter, private attribute",
        """\
        - name: r
          on: kyc.*
          actions:
            - slack.post:
                channel: "{{ entity.channel "
                text: "{{ paylod.status }} {{ entity.name | capitalize }}"
                blocks: [{type: section, text: {type: mrkdwn, text: "{{ payload.__class__ }}"}}]
        """,
        [
            "config.yaml:12:18: rules[0].actions[0].slack.post.channel: template error on its line 1: "
            "unexpected end of template, expected 'end of print statement'.",
            "config.yaml:13:15: rules[0].actions[0].slack.post.text: unknown filter 'capitalize'; available: "
            "d, date, default, join, lower, safe, slack, tojson, truncate, upper",
            "config.yaml:14:17: rules[0].actions[0].slack.post.blocks: templates cannot reach '__class__': "
            "names starting with '_' are off limits",
        ],
    ),
    (
        "conditions",
        """\
        - name: r
          on: entity.*
          when:
            - {field: payload.status, eq: x, ne: y}
            - {feild: payload.status, eq: x}
            - {field: payload.status, equals: x}
            - {field: payload..status, eq: x}
            - {rule_severity: urgent}
            - {status_changes: {from: a, too: b}}
            - any: []
            - not: [{field: payload.status, eq: x}]
          actions:
            - slack.post: {channel: "#c", text: hi}
        """,
        [
            "config.yaml:11:7: rules[0].when[0]: a condition on a field takes exactly one operator (eq, ne, in, "
            "not_in, contains, starts_with, ends_with, matches, exists, gt, gte, lt, lte); got eq and ne; "
            "combine several with all:",
            "config.yaml:12:7: rules[0].when[1]: a condition is one of field, all, any, not, entity_types, "
            "status_changes, rule_severity, rule_ids, changed; found the keys feild, eq (did you forget field:?)",
            'config.yaml:13:31: rules[0].when[2].equals: unknown key "equals"',
            "config.yaml:14:15: rules[0].when[3].field: cannot read the path 'payload..status' at character 8",
            "config.yaml:15:23: rules[0].when[4].rule_severity: expected 'low', 'medium', 'high' or 'critical', "
            "got 'urgent'",
            'config.yaml:16:34: rules[0].when[5].status_changes.too: unknown key "too" (did you mean "to"?)',
            "config.yaml:17:12: rules[0].when[6].any: needs at least 1 entry",
            "config.yaml:18:12: rules[0].when[7].not: a condition is a mapping: one of field, all, any, not, "
            "entity_types, status_changes, rule_severity, rule_ids, changed",
        ],
    ),
    (
        "names, sources, environment, mode, throttle",
        """\
        - name: r
          on: kyc.*
          sources: [gu1-prod]
          environment: sandbox
          mode: dry-run
          throttle: {key: "{{ entity.id }}", window: soon}
          actions:
            - slack.post: {channel: "#c", text: hi}
        - name: r
          on: entity.*
          sources: gu1-production
          environment: sandbox
          actions:
            - slack.post: {channel: "#c", text: hi}
        """,
        [
            'config.yaml:10:13: rules[0].sources[0]: no source named "gu1-prod" (did you mean "gu1-production"?)',
            "config.yaml:12:9: rules[0].mode: expected 'live' or 'shadow', got 'dry-run'",
            "config.yaml:13:46: rules[0].throttle.window: expected a duration such as 30s, 5m or 1h, got 'soon'",
            'config.yaml:16:9: rules[1].name: a rule named "r" already exists (line 8)',
            'config.yaml:19:16: rules[1].environment: source "gu1-production" is production, so this rule can '
            "never match",
        ],
    ),
]


@pytest.mark.parametrize(("title", "rules_yaml", "expected"), VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_validation_errors(title, rules_yaml, expected):
    assert problems(rules_yaml) == expected


def test_duplicate_yaml_keys_in_a_rule():
    assert problems(
        """\
        - name: r
          on: kyc.validation_approved
          on: kyc.validation_rejected
          actions:
            - slack.post: {channel: "#c", text: hi}
        """
    ) == ['config.yaml:10:3: duplicate key "on" (first given on line 9)']


def test_environment_interpolation_in_rules():
    config = ok(
        """\
        - name: r
          on: kyc.validation_approved
          actions:
            - slack.post: {channel: "${ALERT_CHANNEL:-#compliance-alerts}", text: "env ${NOT_SET:-default}"}
        """
    )
    assert config.rules[0].params[0].channel == "#compliance-alerts"
    assert config.rules[0].params[0].text == "env default"


def test_a_pattern_that_matches_no_known_event_is_a_warning_not_an_error():
    config = ok(
        """\
        - name: r
          on: [kyc.validation_aproved, entity.*, kyc.*]
          actions:
            - slack.post: {channel: "#c", text: hi}
        """
    )
    assert [str(w) for w in config.warnings] == [
        'config.yaml:9:8: warning: rules[0].on[0]: "kyc.validation_aproved" matches no Gu1 event type '
        '(did you mean "kyc.validation_approved"?)'
    ]


def test_errors_and_warnings_are_listed_together(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + "  - name: r\n    on: kyc.nope\n    actions: []\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "check"], env=SECRETS)
    assert result.exit_code == 1
    assert f'{path}:9:9: warning: rules[0].on: "kyc.nope" matches no Gu1 event type' in result.output
    assert f"{path}:10:14: rules[0].actions: needs at least 1 entry" in result.output
    assert f"{path}: 1 error(s)" in result.output


# -- config tests ----------------------------------------------------------------------------------

TESTS_YAML = """
tests:
  - name: approved activates the account
    event: {events}/kyc.validation_approved.json
    expect:
      matched: [activate-account-on-kyc-approved]
      actions:
        activate-account-on-kyc-approved:
          - salesforce.upsert:
              external_id: customer_xyz789
              fields: {{KYC_Status__c: approved, Account_Active__c: true}}
  - name: a legacy approval too
    event: {events}/kyc.validation_approved.legacy.json
    expect:
      matched: [activate-account-on-kyc-approved]
  - name: an active entity raises no alert
    event: {events}/entity.status_changed.json
    expect:
      not_matched: [alert-blocked-or-suspended]
  - name: inline event
    source: gu1-production
    event:
      event: entity.status_changed
      timestamp: "2025-01-01T00:00:00Z"
      payload: {{status: suspended, previousStatus: active, reason: fraud, entity: {{name: A, externalId: x}}}}
    expect:
      matched: [alert-blocked-or-suspended]
      actions:
        alert-blocked-or-suspended:
          - slack.post: {{channel: "#compliance-alerts", text: "A (x) active -> suspended: fraud"}}
"""


def rules_config_with(tmp_path, tests_yaml: str, name: str = "config.yaml"):
    text = (ROOT / "tests" / "configs" / "rules.yaml").read_text()
    path = tmp_path / name
    path.write_text(text + tests_yaml.format(events=ROOT / "examples" / "events"))
    return path


def test_config_tests_pass_and_check_says_so(tmp_path):
    path = rules_config_with(tmp_path, TESTS_YAML)
    config = load_config(str(path), environ=SECRETS)
    outcomes = run_config_tests(config, load_config_tests(config))
    assert [(o.name, o.failures) for o in outcomes] == [
        ("approved activates the account", []),
        ("a legacy approval too", []),
        ("an active entity raises no alert", []),
        ("inline event", []),
    ]
    result = CliRunner().invoke(cli, ["--config", str(path), "check"], env=SECRETS)
    assert result.exit_code == 0, result.output
    assert "4 of 4 config test(s) passed: OK" in result.output


def test_failing_config_tests_say_what_differs_and_exit_1(tmp_path):
    broken = TESTS_YAML.replace("KYC_Status__c: approved", "KYC_Status__c: verified").replace(
        "not_matched: [alert-blocked-or-suspended]", "matched: [alert-blocked-or-suspended]"
    )
    path = rules_config_with(tmp_path, broken)
    config = load_config(str(path), environ=SECRETS)
    outcomes = run_config_tests(config, load_config_tests(config))
    assert outcomes[0].failures == [
        "activate-account-on-kyc-approved.actions[0].salesforce.upsert.fields.KYC_Status__c: "
        "expected 'verified', got 'approved'"
    ]
    assert outcomes[2].failures == [
        "expected exactly ['alert-blocked-or-suspended'] to match; matched []",
        "  alert-blocked-or-suspended did not match: when: status changes to ['blocked', 'suspended'] "
        "(was from 'under_review' to 'active')",
    ]
    result = CliRunner().invoke(cli, ["--config", str(path), "check"], env=SECRETS)
    assert result.exit_code == 1
    assert "FAIL approved activates the account" in result.output
    assert "2 of 4 config test(s) passed: FAILED" in result.output


def test_config_tests_in_a_sibling_file(tmp_path):
    text = (ROOT / "tests" / "configs" / "rules.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text + "\ntests: config.tests.yaml\n")
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "blocked.json").write_text(
        (ROOT / "examples" / "events" / "entity.status_changed.blocked.json").read_text()
    )
    (tmp_path / "config.tests.yaml").write_text(
        "- name: blocked alerts\n  event: events/blocked.json\n  expect:\n    matched: [alert-blocked-or-suspended]\n"
    )
    config = load_config(str(tmp_path / "config.yaml"), environ=SECRETS)
    [outcome] = run_config_tests(config, load_config_tests(config))
    assert outcome.passed and outcome.where == f"{tmp_path / 'config.tests.yaml'}:1"


def test_config_test_mistakes_are_config_errors(tmp_path):
    bad = """
tests:
  - name: t
    event: {events}/nope.json
    expect: {{matched: [activate-account]}}
  - name: u
    source: gu1-prod
    event: {events}/rule.triggered.json
    expect: {{not_matched: [kyc-reject], colour: red}}
"""
    path = rules_config_with(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_config(str(path), environ=SECRETS)
    messages = [p.message for p in err.value.problems]
    assert messages == ['unknown key "colour"']
    fixed = rules_config_with(tmp_path, bad.replace(", colour: red", ""))
    with pytest.raises(ConfigError) as err:
        load_config_tests(load_config(str(fixed), environ=SECRETS))  # read by check, never at start-up
    assert [p.message for p in err.value.problems] == [
        f"cannot read {ROOT / 'examples' / 'events' / 'nope.json'}: No such file or directory",
        'no rule named "activate-account" (did you mean "activate-account-on-kyc-approved"?)',
        'no source named "gu1-prod" (did you mean "gu1-production"?)',
        'no rule named "kyc-reject" (did you mean "kyc-rejected"?)',
    ]


def test_a_config_test_event_nested_absurdly_deep_is_a_config_error_not_a_traceback(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    path = rules_config_with(tmp_path, f"\ntests:\n  - name: t\n    event: {deep}\n    expect:\n      matched: []\n")
    with pytest.raises(ConfigError) as err:
        load_config_tests(load_config(str(path), environ=SECRETS))
    [problem] = err.value.problems
    assert problem.message.startswith(f"{deep} is not valid JSON")


# -- JSON Schema ----------------------------------------------------------------------------------


def test_the_committed_schema_is_the_generated_one():
    """config.schema.json is generated; after changing a model, run ./gu1-sync schema > config.schema.json."""
    assert (ROOT / "config.schema.json").read_text() == json_schema()


@pytest.mark.parametrize("path", ["config.yaml", "tests/configs/rules.yaml"])
def test_the_schema_accepts_the_configs_we_ship(path):
    document = parse_yaml((ROOT / path).read_text(), path).data  # YAML 1.2, as editors read it
    jsonschema.validate(document, json.loads(json_schema()))


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"rules": [{"name": "r", "on": "x", "actions": [{"slak.post": {}}]}]},
        {"rules": [{"name": "r", "on": "x", "actions": [{"slack.post": {"text": 1, "colour": "red"}}]}]},
        {"rules": [{"name": "r", "on": "x", "when": {"feild": "a"}, "actions": [{"slack.post": {"text": "a"}}]}]},
        {"sources": {"s": {"kind": "gu1", "environment": "production", "secrets": ["literal"]}}},
        {"storage": {"pth": "x"}},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(change):
    document = {**parse_yaml((ROOT / "config.yaml").read_text(), "config.yaml").data, **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json.loads(json_schema()))


# -- shadow and throttle, as recorded -------------------------------------------------------------

THROTTLED_RULES = """\
- name: live
  on: rule.triggered
  throttle: {key: "{{ payload.entityId }}", window: 1h}
  actions:
    - slack.post: {channel: "#c", text: "{{ payload.rule.name }}"}
- name: trial
  on: rule.triggered
  mode: shadow
  actions:
    - slack.post: {channel: "#c", text: "trial {{ payload.rule.name }}"}
"""


def test_shadow_is_recorded_and_throttle_runs_once_per_key_per_window(tmp_path):
    config = ok(THROTTLED_RULES)
    clock = FakeClock()
    store = Store(str(tmp_path / "events.db"), clock=clock)
    store.migrate()
    document = json.loads((ROOT / "examples" / "events" / "rule.triggered.json").read_text())

    def process(evaluation_id: str, entity_id: str = "entity-1") -> dict[str, str]:
        payload = {**document["payload"], "evaluationId": evaluation_id, "entityId": entity_id}
        event = event_from_document(config, {**document, "payload": payload})
        store.record(event, {})
        store.record_evaluation(event.id, evaluate(config.rules, event), config.digest)
        return {a["rule"]: a["status"] for a in store.actions(event.id)}

    assert process("e1") == {"live": PENDING, "trial": SHADOW}
    clock.advance(1800)
    assert process("e2") == {"live": THROTTLED, "trial": SHADOW}
    assert process("e3", entity_id="entity-2") == {"live": PENDING, "trial": SHADOW}  # another key
    clock.advance(1801)
    assert process("e4") == {"live": PENDING, "trial": SHADOW}  # the window has passed
    throttled = [a for a in store.db.query("SELECT * FROM actions WHERE status = 'throttled'")]
    assert len(throttled) == 1 and json.loads(throttled[0]["params"]) == {
        "channel": "#c",
        "text": "High Risk Country Check",
    }


def test_recording_twice_changes_nothing(tmp_path):
    config = ok(THROTTLED_RULES)
    store = Store(str(tmp_path / "events.db"))
    store.migrate()
    document = json.loads((ROOT / "examples" / "events" / "rule.triggered.json").read_text())
    event = event_from_document(config, document)
    store.record(event, {})
    first = store.record_evaluation(event.id, evaluate(config.rules, event), config.digest)
    second = store.record_evaluation(event.id, evaluate(config.rules, event), config.digest)
    assert len(first.pending) == 1 and second.pending == []  # the same event may take its own throttle window again
    assert len(store.actions(event.id)) == 2


# -- mistakes found in review: each is a clean problem, never a traceback --------------------------


def test_operators_that_need_a_value(tmp_path):
    found = problems(
        """\
        - name: r
          on: kyc.*
          when:
            - {field: payload.status, in: }
            - {field: payload.status, exists: }
            - {field: payload.amount, gt: }
          actions:
            - slack.post: {channel: "#c", text: hi}
        """
    )
    assert found == [
        "config.yaml:11:34: rules[0].when[0].in: needs a value (only eq and ne compare with null)",
        "config.yaml:12:38: rules[0].when[1].exists: needs a value (only eq and ne compare with null)",
        "config.yaml:13:34: rules[0].when[2].gt: compares with a number or an ISO 8601 timestamp; none was given",
    ]


def test_thresholds_may_come_from_the_environment():
    config = ok(
        """\
        - name: r
          on: kyc.*
          when: {field: payload.amount, gt: "${THRESHOLD:-10000}"}
          actions:
            - slack.post: {channel: "#c", text: hi}
        """
    )
    assert (
        config.rules[0].when.all[0].gt == 10000
        if hasattr(config.rules[0].when, "all")
        else (config.rules[0].when.gt == 10000)
    )


def test_yaml_numbers_are_yaml_1_2():
    from gu1sync.core.yamlfile import parse_yaml

    data = parse_yaml("ids: [01234, 10:30, 0x1F, 12, -3, 1.5]\n", "f.yaml").data
    assert data == {"ids": ["01234", "10:30", 31, 12, -3, 1.5]}


def test_an_alias_bomb_is_refused_quickly():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for previous, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 10)}]")
    with pytest.raises(ConfigError) as err:
        parse_config("\n".join(lines) + "\n", "config.yaml", environ=SECRETS)
    assert "more than 1000000 values once its aliases" in str(err.value)


def test_a_constant_throttle_key_is_a_warning():
    config = ok(
        """\
        - name: r
          on: kyc.*
          throttle: {key: payload.entityId, window: 1d}
          actions:
            - slack.post: {channel: "#c", text: hi}
        """
    )
    assert [w.message for w in config.warnings] == [
        '"payload.entityId" is the same for every event, so the actions run once per window in all; to throttle '
        'per entity write a template such as "{{ entity.id }}"'
    ]


def test_a_list_where_a_kind_belongs_is_a_problem_not_a_traceback():
    text = HEAD.replace("kind: gu1", "kind: [gu1]") + textwrap.dedent(ONE_RULE)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "config.yaml", environ=SECRETS)
    assert "sources.gu1-production" in str(err.value)


def test_zero_windows_and_intervals_are_refused():
    found = problems(
        """\
        - name: r
          on: kyc.*
          throttle: {key: "{{ entity.id }}", window: 0}
          actions:
            - slack.post: {channel: "#c", text: hi}
        """,
        "queue:\n  sweep_interval: 0s\n",
    )
    assert found == [
        "config.yaml:10:46: rules[0].throttle.window: must be more than zero",
        "config.yaml:14:19: queue.sweep_interval: must be more than zero",
    ]


def test_did_you_mean_in_a_separate_tests_file(tmp_path):
    text = (ROOT / "tests" / "configs" / "rules.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text + "\ntests: t.yaml\n")
    (tmp_path / "t.yaml").write_text("- name: x\n  event: {event: x}\n  expect: {matchd: []}\n")
    with pytest.raises(ConfigError) as err:
        load_config_tests(load_config(str(tmp_path / "config.yaml"), environ=SECRETS))
    assert 'unknown key "matchd" (did you mean "matched"?)' in str(err.value)


def test_the_layout_escapes_everything_and_survives_missing_values():
    from gu1sync.simulate import simulate

    config = ok(
        """\
        - name: r
          on: "*"
          actions:
            - slack.post: {channel: "#c", layout: compliance-alert}
        """
    )
    document = {"event": "<!channel> <https://evil.example|reset>", "payload": {"reason": None, "entity": {}}}
    _, [result] = simulate(config, document)
    [action] = result.actions
    assert action.error is None
    # Slack reads mentions and links in text and mrkdwn, never in plain_text (the header).
    mrkdwn = [action.params["text"]] + [
        field["text"]
        for block in action.params["blocks"]
        for field in block.get("fields", []) + [block.get("text") or {}]
        if field.get("type") == "mrkdwn"
    ]
    assert mrkdwn and all("<!channel>" not in text and "<https:" not in text for text in mrkdwn)
    assert "&lt;!channel&gt;" in action.params["text"]
    assert action.params["text"].endswith("— → —. —")


def test_a_template_jinja_cannot_even_compile_is_a_config_error_naming_its_place():
    """Jinja's optimizer evaluates a template's constant parts while compiling it: `'x'.payload` is
    evaluated then, and its failure used to escape as a traceback from `check` and from start-up."""
    problems_found = problems(
        """\
        - name: r
          on: kyc.validation_approved
          actions:
            - salesforce.upsert:
                object: Contact
                external_id_field: Gu1_External_Id__c
                external_id: "{{ entity.externalId }}"
                fields: {X__c: "{{ 'x'.payload~payload }}"}
        """
    )
    assert len(problems_found) == 1
    assert (
        problems_found[0].startswith("config.yaml:15:")
        and "rules[0].actions[0].salesforce.upsert.fields.X__c" in (problems_found[0])
    )
    assert "template error" in problems_found[0]

"""Loading config.yaml: every problem at once, each with file:line:column, secrets only from the environment."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from gu1sync.cli import cli
from gu1sync.config import load_config, parse_config
from gu1sync.core.yamlfile import ConfigError
from tests.support.helpers import ROOT, SECRETS


def problems(text: str, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "config.yaml", environ={**SECRETS, **(environ or {})})
    return [str(p) for p in err.value.problems]


GOOD = """version: 1
sources:
  gu1-prod:
    kind: gu1
    environment: production
    secrets:
      - ${GU1_SECRET}
"""


def test_a_good_config_loads():
    config = parse_config(GOOD, "config.yaml", environ=SECRETS)
    source = config.sources["gu1-prod"]
    assert (source.kind, source.environment) == ("gu1", "production")
    assert [(s.name, s.value) for s in source.secrets] == [("GU1_SECRET", SECRETS["GU1_SECRET"])]
    assert config.receiver.max_body_bytes == 1024 * 1024
    assert len(config.digest) == 12


def test_a_missing_environment_variable_is_named_with_its_place():
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD, "config.yaml", environ={})
    assert str(err.value) == (
        "config.yaml:7:9: sources.gu1-prod.secrets[0]: environment variable GU1_SECRET is not set"
    )


def test_secret_values_never_appear_in_messages():
    text = GOOD.replace("kind: gu1", "kind: standard")  # GU1_SECRET is not base64
    environ = {"GU1_SECRET": "this is not base64 at all!"}
    messages = problems(text, environ)
    assert messages == [
        "config.yaml:7:7: sources.gu1-prod.secrets: the value of $GU1_SECRET is not a Standard Webhooks secret "
        "(whsec_ followed by base64)"
    ]
    assert environ["GU1_SECRET"] not in "\n".join(messages)
    leaky = GOOD + "receiver:\n  max_body_bytes: ${GU1_SECRET}\n"
    assert not any(SECRETS["GU1_SECRET"] in m for m in problems(leaky))
    assert any("the value of $GU1_SECRET" in m for m in problems(leaky))


def test_secrets_written_in_the_file_are_refused():
    text = GOOD.replace("${GU1_SECRET}", "hunter2")
    [message] = problems(text)
    assert message.startswith("config.yaml:7:9: sources.gu1-prod.secrets[0]: secrets are read from the environment")
    assert "hunter2" not in message


def test_a_secret_mixed_with_text_is_refused():
    [message] = problems(GOOD.replace("${GU1_SECRET}", "prefix-${GU1_SECRET}"))
    assert "write ${ENV_VAR_NAME} here" in message


def test_an_empty_secret_is_refused():
    assert problems(GOOD, {"GU1_SECRET": ""}) == [
        "config.yaml:7:9: sources.gu1-prod.secrets[0]: environment variable GU1_SECRET is set but empty"
    ]


def test_every_problem_is_reported_at_once_in_file_order():
    text = """version: 1
storage:
  pth: x
sources:
  a:
    kind: gu1
    environment: prod
    secrets: ["${NOT_SET_1}"]
  b:
    kind: kyc-webhook
    environment: sandbox
    secrets: ["${KYC_SECRET}"]
  c:
    kind: kyc-webhooks
    environment: sandbox
    secrets: ["${KYC_SECRET}"]
    tolerence: 5m
    signed_payload: header
  "bad name!":
    kind: gu1
    environment: sandbox
    secrets: ["${GU1_SECRET}"]
  d:
    environment: sandbox
    secrets: ["${GU1_SECRET}"]
  e:
    kind: gu1
    environment: sandbox
    secrets: []
    signed_payload: body
"""
    assert problems(text) == [
        'config.yaml:3:3: storage.pth: unknown key "pth" (did you mean "path"?)',
        "config.yaml:7:18: sources.a.environment: expected 'sandbox' or 'production', got 'prod'",
        "config.yaml:8:15: sources.a.secrets[0]: environment variable NOT_SET_1 is not set",
        "config.yaml:10:11: sources.b.kind: 'kyc-webhook' is not one of: 'gu1', 'kyc-webhooks', 'standard'",
        'config.yaml:17:5: sources.c.tolerence: unknown key "tolerence" (did you mean "tolerance"?)',
        "config.yaml:18:21: sources.c.signed_payload: expected 'body' or 'timestamp.body', got 'header'",
        "config.yaml:19:3: sources.bad name!: 'bad name!' is not a usable name: use letters, digits, '_', '.' "
        "and '-', starting with a letter or digit, at most 64 characters",
        'config.yaml:23:3: sources.d: missing required key "kind"',
        "config.yaml:29:14: sources.e.secrets: needs at least 1 entry",
        'config.yaml:30:5: sources.e.signed_payload: unknown key "signed_payload"',
    ]


def test_duplicate_keys_are_refused_with_both_lines():
    text = GOOD + "storage:\n  path: a.db\n  path: b.db\n"
    assert problems(text) == ['config.yaml:10:3: duplicate key "path" (first given on line 9)']


def test_yaml_syntax_errors_point_at_the_line_and_hint_at_quoting():
    [message] = problems(
        GOOD.replace("      - ${GU1_SECRET}", "    secrets: [${GU1_SECRET}]").replace("    secrets:\n", "")
    )
    assert message.startswith("config.yaml:6:16: ")
    assert 'quote a value that holds ${...}: "${NAME}"' in message


def test_environment_defaults_and_escapes():
    text = (
        GOOD
        + '    description: "costs $$5, see $${NOT_A_VAR}"\nqueue:\n  redis_url: "${REDIS_URL:-redis://example:6379/2}"\n'
    )
    config = parse_config(text, "config.yaml", environ=SECRETS)
    assert config.queue.redis_url == "redis://example:6379/2"
    assert config.sources["gu1-prod"].description == "costs $$5, see ${NOT_A_VAR}"
    overridden = parse_config(text, "config.yaml", environ={**SECRETS, "REDIS_URL": "redis://other:1/0"})
    assert overridden.queue.redis_url == "redis://other:1/0"
    empty = parse_config(text, "config.yaml", environ={**SECRETS, "REDIS_URL": ""})
    assert empty.queue.redis_url == "redis://example:6379/2"  # like the shell: empty takes the default


def test_only_true_and_false_are_booleans():
    """YAML 1.1 reads `on`, `no` and `yes` as booleans; ops teams mean the words (and Norway)."""
    from gu1sync.core.yamlfile import parse_yaml

    doc = parse_yaml("on: x\ncountry: NO\nflag: true\nother: yes\nwhen: 2025-01-01\n", "f.yaml")
    assert doc.data == {"on": "x", "country": "NO", "flag": True, "other": "yes", "when": "2025-01-01"}


def test_storage_path_is_relative_to_the_config_file(tmp_path):
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text(GOOD + "storage:\n  path: data/events.db\n")
    config = load_config(str(path), environ=SECRETS)
    assert config.storage_path == os.path.join(str(path.parent), "data/events.db")


def test_an_unreadable_file_is_a_problem_not_a_traceback(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "missing.yaml"))
    assert "cannot read the file" in str(err.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as err:
        load_config(str(binary))
    assert "not UTF-8" in str(err.value)


def test_the_shipped_config_is_valid():
    environ = {k: "x" for k in ("GU1_PRODUCTION_WEBHOOK_SECRET", "GU1_SANDBOX_WEBHOOK_SECRET")}
    config = load_config(str(ROOT / "config.yaml"), environ=environ)
    assert {s.environment for s in config.sources.values()} == {"sandbox", "production"}


def test_cli_check_exit_codes(tmp_path, monkeypatch):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("production", "prod").replace("${GU1_SECRET}", "${NOPE}"))
    monkeypatch.setenv("GU1_SECRET", "s")
    ok = CliRunner().invoke(cli, ["--config", str(good), "check"])
    assert ok.exit_code == 0 and "OK" in ok.output
    failed = CliRunner().invoke(cli, ["--config", str(bad), "check"])
    assert failed.exit_code == 1
    assert f"{bad}:5:18: sources.gu1-prod.environment" in failed.output
    assert f"{bad}:7:9: sources.gu1-prod.secrets[0]: environment variable NOPE is not set" in failed.output

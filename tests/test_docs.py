"""The README is the front door: it must keep up with the config schema, the CLI and CI."""

from __future__ import annotations

import json
import re
import subprocess

from gu1sync.cli import cli
from gu1sync.config import json_schema
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _properties(schema: dict) -> set[str]:
    names: set[str] = set()
    for definition in [schema, *schema.get("$defs", {}).values()]:
        names |= set(definition.get("properties", {}))
    return names


def test_every_config_key_is_documented():
    """A key in config.schema.json that README never mentions (in backticks) is a key nobody can find."""
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)  # code blocks are examples, not reference
    documented = set(re.findall(r"`([^`\n]+)`", prose))
    words = documented | {word for text in documented for word in re.split(r"[^A-Za-z0-9_]+", text) if word}
    missing = sorted(_properties(json.loads(json_schema())) - words)
    assert missing == []


def test_every_command_is_documented():
    missing = [name for name in cli.commands if not re.search(rf"^\| `{name}\b", README, re.MULTILINE)]
    assert missing == []


def test_ci_runs_the_test_command_the_readme_gives():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in README and "make run" in README


def test_the_default_config_passes_check():
    result = subprocess.run(
        [str(ROOT / "gu1-sync"), "--config", str(ROOT / "config.yaml"), "check"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GU1_PRODUCTION_WEBHOOK_SECRET": "x", "GU1_SANDBOX_WEBHOOK_SECRET": "y"},
    )
    assert result.returncode == 0, result.stderr

"""The README is the front door: it must keep up with the config schema, the CLI and CI."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from gu1sync.cli import cli
from gu1sync.config import json_schema
from tests.support.helpers import ROOT

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


def _layout() -> str:
    return README[README.index("## Layout") :]


def test_the_layout_section_matches_the_tree():
    """Every path the Layout table names exists, and every package and module of the tree is named."""
    layout = _layout()
    table = [line for line in layout.splitlines() if line.startswith("| `")]
    for row in table:
        cell = row.split("|")[1]
        paths = re.findall(r"`([^`]+)`", cell)
        base = Path(paths[0]).parent
        for path in paths:
            target = ROOT / path if "/" in path or (ROOT / path).exists() else ROOT / base / path
            assert target.exists(), path
    named = set(re.findall(r"`([^`]+)`", layout))
    words = named | {Path(name.rstrip("/")).name.removesuffix(".py") for name in named}
    missing = []
    for package in ("gu1sync", "rules", "connectors"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py" or "__pycache__" in path.parts:
                continue
            if (
                path.stem not in words
                and path.parent.name not in ("kinds",)
                or (path.parent.name == "kinds" and path.stem not in words and path.stem != "base")
            ):
                missing.append(str(path.relative_to(ROOT)))
        for sub in sorted(p for p in (ROOT / package).iterdir() if p.is_dir() and p.name != "__pycache__"):
            if f"{package}/{sub.name}/" not in named:
                missing.append(f"{package}/{sub.name}/")
    assert missing == []


def test_the_minimal_connector_in_the_readme_registers_and_posts(tmp_path):
    """The Layout section's connector, as written, is one module and one registry line."""
    import threading
    import types
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from connectors import salesforce, slack
    from connectors.base import ActionMeta
    from connectors.registry import Connectors, Registry
    from gu1sync.core.yamlfile import EnvStr

    section = _layout()[_layout().index("### A connector is one module") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    module = types.ModuleType("connectors.teams")
    module.__package__ = "connectors"
    # As its own module would run: not with this file's `from __future__` flags.
    exec(compile(code, "README.md (connectors/teams.py)", "exec", dont_inherit=True), module.__dict__)
    registry = Registry(salesforce.CONNECTOR, slack.CONNECTOR, module.CONNECTOR)
    assert registry.action("teams.post").params is module.TeamsPost
    settings_model = registry.settings_model()
    assert settings_model().teams.webhook_url is None  # `connectors.teams`, with its defaults
    connectors = Connectors(registry)
    assert connectors.get("teams.post", settings_model()).dry_run
    assert registry.limits(settings_model(), "teams.post") == (1 * 15 + 5 + 15 + 10, 1 * 15 + 5)

    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):  # noqa: ANN002
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = EnvStr(f"http://127.0.0.1:{server.server_port}/hook")
    url.whole = "TEAMS_WEBHOOK_URL"
    live = settings_model(teams={"webhook_url": url})
    result = connectors.get("teams.post", live).execute("teams.post", {"text": "hi"}, ActionMeta("a", "e", "r"))
    server.server_close()
    assert (result.status_code, received) == (200, [b"hi"])

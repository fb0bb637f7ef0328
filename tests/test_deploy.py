"""The deploy files work as written: the systemd units pass `systemd-analyze verify`; the Compose file,
the Dockerfile and the units agree with each other and with the command line they run (no image can
be built or pulled here: there is no Docker engine); .env.example lists exactly the variables the
default config reads; the Prometheus rules pass promtool and its unit tests, and name only metrics
that /metrics serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gu1sync.cli import cli
from gu1sync.config import load_config
from gu1sync.runtime import event_job_limit
from tests.support.helpers import ROOT

DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED = "/opt/gu1-sync"


def parses(argv: list[str]) -> dict:
    """The options a command line gives, as the gu1-sync CLI reads them (a wrong option raises)."""
    assert argv[0] == "gu1-sync" or argv[0].endswith("/gu1-sync"), argv
    ctx = cli.make_context("gu1-sync", list(argv[1:]))
    name, command, rest = cli.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
    return {"command": name, **command.make_context(name, rest, parent=ctx).params}


def unit(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def default_config():
    return load_config(
        str(ROOT / "config.yaml"), environ={"GU1_PRODUCTION_WEBHOOK_SECRET": "x", "GU1_SANDBOX_WEBHOOK_SECRET": "y"}
    )


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_the_systemd_units_pass_systemd_analyze_verify(path, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    # Installed as README says, under /opt/gu1-sync; here that prefix is a directory of the test's own.
    command = tmp_path / ".venv" / "bin" / "gu1-sync"
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(INSTALLED, str(tmp_path)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(copy) not in result.stderr, result.stderr  # no warning about the unit either


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_the_systemd_units_run_gu1_sync_as_the_readme_says_and_stop_gracefully(path):
    values = unit(path)
    [exec_start] = values["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == f"{INSTALLED}/.venv/bin/gu1-sync"  # what `pip install .` into that venv gives
    given = parses(["gu1-sync", *argv[1:]])
    assert values["EnvironmentFile"] == ["/etc/gu1-sync/gu1-sync.env"]
    assert values["User"] == ["gu1sync"] and values["Restart"] == ["on-failure"]
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        key, _, value = hardening.partition("=")
        assert values[key] == [value], hardening
    environment = dict(item.split("=", 1) for item in values["Environment"])
    assert environment["GU1_SYNC_DB"].startswith("/var/lib/" + values["StateDirectory"][0] + "/")
    stop = float(values["TimeoutStopSec"][0])
    if given["command"] == "worker":
        assert stop > event_job_limit(default_config())  # the job in hand finishes before systemd kills
    elif given["command"] == "console":
        assert given["bind"] == default_config().console.bind  # loopback: a proxy or a tunnel in front
    else:
        assert given["command"] == "serve" and stop > 20  # gunicorn's graceful timeout
        # Enough threads that stalled clients cannot take them all (the default, measured in bench/).
        assert given["threads"] >= 128


def test_compose_dockerfile_and_units_agree():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "receiver", "workers", "console"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    build = services["receiver"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert services["workers"]["image"] == services["receiver"]["image"]
    image_env = dict(re.findall(r"(GU1_SYNC_\w+)=(\S+)", dockerfile))
    for name in ("receiver", "workers", "console"):
        service = services[name]
        given = parses(service["command"])
        assert given["command"] == {"receiver": "serve", "workers": "worker", "console": "console"}[name]
        env = service["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:")
        data = str(Path(env["GU1_SYNC_DB"]).parent)
        assert f"gu1sync-data:{data}" in service["volumes"]  # the database on the shared volume
        assert f"../config.yaml:{image_env['GU1_SYNC_CONFIG']}:ro" in service["volumes"]
        assert service["env_file"] == ".env"
    assert int(services["workers"]["stop_grace_period"].rstrip("s")) > event_job_limit(default_config())
    assert services["receiver"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["console"]["ports"] == ["127.0.0.1:8001:8001"]  # never the internet
    assert parses(services["receiver"]["command"])["bind"] == "0.0.0.0:8000"
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert re.search(r"^USER gu1sync$", dockerfile, re.M)
    for package in ("gu1sync", "rules", "connectors"):
        assert f"COPY {package} ./{package}" in dockerfile
    [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    parses(yaml.safe_load(cmd))
    assert "/healthz" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)  # no virtualenv, database or secret in the image


def _config_variables() -> set[str]:
    text = (ROOT / "config.yaml").read_text()
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) - {"ENV_VAR"}  # ENV_VAR: the comment's example


def test_env_example_lists_exactly_the_variables_the_default_config_reads():
    listed = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (DEPLOY / ".env.example").read_text(), re.M))
    assert listed == _config_variables()


def test_the_prometheus_rules_pass_promtool_and_name_only_metrics_gu1_sync_serves(make_app):
    rules = DEPLOY / "prometheus" / "alerts.yml"
    document = yaml.safe_load(rules.read_text())
    expressions = [rule["expr"] for group in document["groups"] for rule in group["rules"]]
    assert len(expressions) == 8
    served = {
        sample.name
        for family in text_string_to_metric_families(make_app().test_client().get("/metrics").get_data(as_text=True))
        for sample in family.samples
    } | {
        "gu1sync_salesforce_api_requests",  # only once Salesforce has said its usage
        "gu1sync_salesforce_api_requests_limit",
        "gu1sync_connector_credentials_ok",  # only once a connector has been called
        "gu1sync_ops_alerts_total",  # only once an alert has been kept
        "gu1sync_webhooks_rejected_total",
    }
    named = {name for expr in expressions for name in re.findall(r"\b(gu1sync_\w+)", expr)}
    assert named and named <= served, named - served
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: prometheus): the rules were parsed, not run")
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit_tests = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=rules.parent, capture_output=True, text=True, timeout=60
    )
    assert unit_tests.returncode == 0, unit_tests.stdout + unit_tests.stderr

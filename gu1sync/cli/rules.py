"""Commands about the rules: `check` (the config and its config tests), `simulate` (what the rules
make of an event) and `schema` (the JSON Schema of config.yaml). None of them touches the database,
Redis, Salesforce or Slack."""

from __future__ import annotations

import json

import click

from ..config import ConfigError, json_schema
from ..core.body import parse_json
from ..simulate import SimulationError, format_outcomes, format_results, load_config_tests, run_config_tests, simulate
from .common import cli, config_of, fail


@cli.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the config and run its config tests; exit 0 if all is well, 1 (saying what is not) if not."""
    config = config_of(ctx)
    for warning in config.warnings:
        click.echo(str(warning), err=True)
    try:
        tests = load_config_tests(config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        fail(f"{config.file}: {len(exc.errors)} error(s) in its config tests")
    outcomes = run_config_tests(config, tests)
    if outcomes:
        click.echo(format_outcomes(outcomes))
    failed = [o for o in outcomes if not o.passed]
    summary = (
        f"{config.file}: version {config.digest}, {len(config.sources)} source(s), {len(config.rules)} rule(s), "
        f"{len(outcomes) - len(failed)} of {len(outcomes)} config test(s) passed"
    )
    if failed:
        fail(f"{summary}: FAILED")
    click.echo(f"{summary}: OK")


@cli.command("simulate")
@click.argument("event_file", type=click.File("rb"))
@click.option("--source", help="The source it arrives at (default: the first gu1 source).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def simulate_command(ctx: click.Context, event_file, source: str | None, as_json: bool) -> None:  # noqa: ANN001
    """Show what the rules make of EVENT_FILE (a webhook body, JSON): no side effects.

    Which rules match, why the others do not (the first condition that failed), and each matched
    rule's actions as they would be sent. Use - to read the event from standard input.
    """
    config = config_of(ctx)
    try:
        document = parse_json(event_file.read())
        event, results = simulate(config, document, source)
    except ValueError:
        fail(f"{event_file.name}: not valid JSON")
    except SimulationError as exc:
        fail(f"{event_file.name}: {exc}")
    if as_json:
        out = {"event": event.to_dict(), "config_version": config.digest, "rules": [r.to_dict() for r in results]}
        click.echo(json.dumps(out, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(format_results(config, event, results))


@cli.command()
def schema() -> None:
    """Print the JSON Schema of config.yaml (for editors; config.schema.json is this output)."""
    click.echo(json_schema(), nl=False)

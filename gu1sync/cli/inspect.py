"""Commands that look at what happened, and act on it: `events` (recent events), `show` (one event's
whole trace), `failed` (dead letters), `replay` (dead actions again), `stats` (per rule and per
connector), `alerts` (what gu1-sync told its operators), `doctor` (is every part working?) and
`send-test` (a realistic signed event, and what became of it). They never change the database's
schema and never wait longer than storage.busy_timeout."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys

import click

from .. import report, sendtest
from ..core.timeutil import utcnow
from ..delivery import replay as run_replay
from ..doctor import FAIL, examine
from ..runtime import Runtime
from ..simulate import default_source
from ..storage import StoreUnavailable
from ..storage.console import ConsoleStore
from ..storage.ops import OpsLog
from ..storage.reports import recent_events, trace
from .common import cli, command_runtime, config_of, fail, progress, since


@cli.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--status", help="Only events in this status: received, processing, done, failed, invalid.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def events(ctx: click.Context, limit: int, status: str | None, as_json: bool) -> None:
    """Recent events and what became of them."""
    rows = recent_events(command_runtime(ctx).store, limit, status)
    click.echo(report.as_json(rows) if as_json else report.format_events(rows))


@cli.command()
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, event_id: str, as_json: bool) -> None:
    """The whole trace of one event: receipt, rules and why, each action's attempts and result."""
    runtime = command_runtime(ctx)
    data = trace(runtime.store, runtime.actions, event_id)
    if data is None:
        fail(f"no event {event_id!r}")
    click.echo(report.as_json(data) if as_json else report.format_trace(data))


@cli.command()
@click.option("--since", "since_text", help="ISO timestamp, or how far back: 30m, 2h, 7d.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def failed(ctx: click.Context, since_text: str | None, as_json: bool) -> None:
    """Dead letters: actions that failed for good, with their last error."""
    rows = command_runtime(ctx).actions.failed(since(since_text))
    click.echo(report.as_json(rows) if as_json else report.format_failed(rows))


@cli.command()
@click.argument("event_id", required=False)
@click.option("--action", "action_id", help="Only this action.")
@click.option("--since", "since_text", help="Every dead action since then: ISO timestamp, or 30m, 2h, 7d.")
@click.pass_context
def replay(ctx: click.Context, event_id: str | None, action_id: str | None, since_text: str | None) -> None:
    """Run dead actions again with the config in force now: one event's, one action, or all since a time."""
    if sum(x is not None for x in (event_id, action_id, since_text)) != 1:
        raise click.UsageError("give one of: EVENT_ID, --action ACTION_ID, --since TIME")
    moment = since(since_text)
    runtime = command_runtime(ctx, writes=True)
    try:
        with progress("replay") as told:
            lines = run_replay(runtime, event_id=event_id, action_id=action_id, since=moment, progress=told)
        _audit_replay(runtime, event_id, action_id, moment, lines)
    except StoreUnavailable as exc:
        fail(f"replay failed: {exc}")
    click.echo("\n".join(lines) if lines else "nothing to replay")
    if any(": no such " in line for line in lines):
        sys.exit(1)


def _account() -> str:
    """The account running this command: its name, or its uid where it has none (a container's)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _audit_replay(
    runtime: Runtime, event_id: str | None, action_id: str | None, moment: str | None, lines: list[str]
) -> None:
    """Who sent what again from a shell goes to the audit log too (the console's Audit page shows it):
    the account that ran it (the one behind sudo, if any), on which machine."""
    replayed = [m.group(1) for line in lines if (m := re.match(r"(act_\w+) .*: queued again", line))]
    requeued = any(line.endswith("processed again") or " event queued" in line for line in lines)
    if not replayed and not requeued:
        return  # nothing went again: nothing to answer for
    scope, target = ("action", action_id) if action_id else ("event", event_id) if event_id else ("since", moment)
    ConsoleStore(runtime.store).audit(
        user=f"shell:{os.environ.get('SUDO_USER') or _account()}",
        action="replay",
        now=utcnow(),
        target=f"{scope}: {target}",
        detail={"scope": scope, "actions": replayed, "lines": lines[:50], "via": "gu1-sync replay"},
        address=socket.gethostname(),
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Per rule and per connector: totals, successes, failures, last success, last failure; the calls
    made to each connector, and the API usage it reported (Salesforce's daily limit)."""
    runtime = command_runtime(ctx)
    data = {**runtime.actions.stats(), "api": OpsLog(runtime.store).api_usage()}
    click.echo(report.as_json(data) if as_json else report.format_stats(data))


@cli.command()
@click.option("--since", "since_text", help="ISO timestamp, or how far back: 30m, 2h, 7d.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alerts(ctx: click.Context, since_text: str | None, limit: int, as_json: bool) -> None:
    """Operational alerts, newest first: what gu1-sync told (or, without ops.slack, logged) about its health."""
    rows = OpsLog(command_runtime(ctx).store).alerts(since(since_text), limit)
    click.echo(report.as_json(rows) if as_json else report.format_alerts(rows))


@cli.command()
@click.option(
    "--url",
    envvar="GU1_SYNC_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The receiver to ask /readyz (or $GU1_SYNC_URL); --url '' when it runs elsewhere.",
)
@click.pass_context
def doctor(ctx: click.Context, url: str) -> None:
    """Is every part working? One line per check, each naming the part; exit 1 if one fails.

    The config and its secrets, the database, Redis and the workers, each connector's credentials (a
    real read-only call), the ops channel, the receiver, dead letters and the backlog.
    """
    failed = 0
    for check in examine(ctx.obj["config_path"], url or None):
        click.echo(str(check))
        failed += check.verdict == FAIL
    if failed:
        fail(f"doctor: {failed} check(s) failed")
    click.echo("doctor: every check passed")


@cli.command("send-test")
@click.argument("event_type")
@click.option("--source", help="The source to send to (default: the first gu1 source).")
@click.option(
    "--url",
    envvar="GU1_SYNC_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The receiver (or $GU1_SYNC_URL); /webhooks/<source> is added.",
)
@click.option(
    "--generation",
    type=click.Choice(["current", "legacy"]),
    default="current",
    show_default=True,
    help="For kyc.* events: Gu1's current payloads, or the older ones (payload.validationId).",
)
@click.option("--wait", default=15.0, show_default=True, help="Seconds to wait for the event's actions to settle.")
@click.pass_context
def send_test(ctx: click.Context, event_type: str, source: str | None, url: str, generation: str, wait: float) -> None:
    """Send a realistic, signed EVENT_TYPE (e.g. kyc.validation_approved) and show what became of it."""
    config = config_of(ctx)
    name = source or default_source(config)
    if name not in config.sources:
        raise click.BadParameter(f"no source {name!r}; sources: {', '.join(config.sources)}", param_hint="--source")
    body, headers = sendtest.build(config, name, event_type, generation)
    target = f"{url.rstrip('/')}/webhooks/{name}"
    delivery = sendtest.post(target, body, headers)
    if delivery.error:
        fail(f"{delivery.error}\nis the receiver running? (make run, or ./gu1-sync serve)")
    click.echo(f"POST {target} ({event_type}, {len(body)} bytes, signed with ${config.sources[name].secrets[0].name})")
    answer = delivery.answer if isinstance(delivery.answer, str) else json.dumps(delivery.answer)
    click.echo(f"-> {delivery.status} {answer}")
    if delivery.status is None or not 200 <= delivery.status < 300 or not isinstance(delivery.answer, dict):
        sys.exit(1)
    if wait <= 0:
        return
    runtime = command_runtime(ctx)
    outcome = sendtest.follow(runtime.store, delivery.answer["id"], wait)
    if outcome == "not_found":
        fail(f"the event is not in {config.storage_path}: is the receiver at {url} using this config?")
    click.echo("")
    click.echo(report.format_trace(trace(runtime.store, runtime.actions, delivery.answer["id"])))
    if outcome == "timeout":
        click.echo(
            f"\n(still in progress after {wait:g} s: are the workers running? ./gu1-sync show {delivery.answer['id']})"
        )

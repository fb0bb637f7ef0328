"""The gu1-sync command line: serve, worker, sweep, check.

Every command reads the config first; a config with errors prints every problem and exits 1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

import click

from . import logs
from .config import Config, ConfigError, load_config


def _config(ctx: click.Context) -> Config:
    path = ctx.obj["config_path"]
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{path}: {len(exc.errors)} error(s)", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="GU1_SYNC_CONFIG",
    default="config.yaml",
    show_default=True,
    help="The config file (or $GU1_SYNC_CONFIG).",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="Variables to read before the config (default: var/secrets.env beside the config, if it exists). "
    "Variables already set in the environment win.",
)
@click.option("--log-level", envvar="GU1_SYNC_LOG_LEVEL", default="INFO", show_default=True)
@click.pass_context
def cli(ctx: click.Context, config_path: str, env_file: str | None, log_level: str) -> None:
    """gu1-sync: receive signed Gu1 webhooks and act on them in Salesforce and Slack."""
    from dotenv import load_dotenv

    logs.setup(log_level)
    env_path = Path(env_file) if env_file else Path(config_path).resolve().parent / "var" / "secrets.env"
    if env_path.is_file():
        load_dotenv(env_path, override=False)
    ctx.obj = {"config_path": config_path, "env_file": env_path}


@cli.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the config and run its config tests; exit 0 if all is well, 1 (saying what is not) if not."""
    from rules.simulate import format_outcomes, run_config_tests

    config = _config(ctx)
    for warning in config.warnings:
        click.echo(str(warning), err=True)
    outcomes = run_config_tests(config)
    if outcomes:
        click.echo(format_outcomes(outcomes))
    failed = [o for o in outcomes if not o.passed]
    summary = (
        f"{config.file}: version {config.digest}, {len(config.sources)} source(s), {len(config.rules)} rule(s), "
        f"{len(outcomes) - len(failed)} of {len(outcomes)} config test(s) passed"
    )
    if failed:
        click.echo(f"{summary}: FAILED", err=True)
        sys.exit(1)
    click.echo(f"{summary}: OK")


@cli.command()
@click.argument("event_file", type=click.File("rb"))
@click.option("--source", help="The source it arrives at (default: the first gu1 source).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def simulate(ctx: click.Context, event_file, source: str | None, as_json: bool) -> None:
    """Show what the rules make of EVENT_FILE (a webhook body, JSON): no side effects.

    Which rules match, why the others do not (the first condition that failed), and each matched
    rule's actions as they would be sent. Use - to read the event from standard input.
    """
    import json

    from gu1sync.event import parse_json
    from rules.simulate import SimulationError, format_results
    from rules.simulate import simulate as run_simulation

    config = _config(ctx)
    try:
        document = parse_json(event_file.read())
        event, results = run_simulation(config, document, source)
    except ValueError:
        click.echo(f"{event_file.name}: not valid JSON", err=True)
        sys.exit(1)
    except SimulationError as exc:
        click.echo(f"{event_file.name}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        out = {"event": event.to_dict(), "config_version": config.digest, "rules": [r.to_dict() for r in results]}
        click.echo(json.dumps(out, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(format_results(config, event, results))


@cli.command()
def schema() -> None:
    """Print the JSON Schema of config.yaml (for editors; config.schema.json is this output)."""
    from .config import json_schema

    click.echo(json_schema(), nl=False)


@cli.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="Address to listen on.")
@click.option("--workers", default=2, show_default=True, help="Receiver processes.")
@click.option("--threads", default=4, show_default=True, help="Threads per receiver process.")
@click.pass_context
def serve(ctx: click.Context, bind: str, workers: int, threads: int) -> None:
    """Run the webhook receiver under gunicorn."""
    from gunicorn.app.base import BaseApplication

    from app import create_app

    config = _config(ctx)

    class Server(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": bind,
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                "timeout": 30,
                "graceful_timeout": 20,
                "accesslog": "-",
                "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
                "proc_name": "gu1-sync-receiver",
                "control_socket_disable": True,  # one fixed path per user: two receivers would collide
                # No keep-alive: after an early answer (a 413 before the body is read) gunicorn would
                # otherwise read and discard the rest of the body to reuse the connection.
                "keepalive": 0,
                "logconfig_dict": logs.gunicorn_logging(),
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):  # called in each gunicorn worker as it boots, so after a HUP too
            try:
                fresh = load_config(ctx.obj["config_path"])
            except ConfigError as exc:
                logging.getLogger("gu1sync.serve").error(
                    "config has %d error(s); keeping version %s:\n%s", len(exc.errors), config.digest, exc
                )
                fresh = config
            return create_app(fresh, server=True)

    Server().run()


@cli.command()
@click.option("--processes", default=1, show_default=True, help="Worker processes (more than 1: an RQ pool).")
@click.option("--burst", is_flag=True, help="Process what is queued, then exit.")
@click.pass_context
def worker(ctx: click.Context, processes: int, burst: bool) -> None:
    """Run workers: they process events and actions, retry, and sweep stored work onto the queue."""
    from .worker import run_worker

    if processes < 1:
        raise click.BadParameter("at least 1", param_hint="--processes")
    run_worker(_config(ctx), burst=burst, processes=processes)


@cli.command()
@click.pass_context
def sweep(ctx: click.Context) -> None:
    """Queue every stored, unfinished event that is not on the queue (Redis must be up)."""
    from redis.exceptions import RedisError

    from .worker import WorkerContext

    work = WorkerContext.from_config(_config(ctx))
    try:
        queued = work.queue.sweep(grace=0)
    except RedisError as exc:
        click.echo(f"sweep failed: Redis is unreachable ({type(exc).__name__})", err=True)
        sys.exit(1)
    click.echo(f"queued {len(queued)} event(s)")


@cli.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="Address the receiver listens on.")
@click.option("--processes", default=2, show_default=True, help="Worker processes.")
@click.pass_context
def run(ctx: click.Context, bind: str, processes: int) -> None:
    """Run everything on this box: Redis (unless REDIS_URL is set), the receiver, the workers. Ctrl-C stops it."""
    from .supervisor import Supervisor, ensure_dev_secrets, local_redis_url, secret_variables

    var_dir = Path(ctx.obj["config_path"]).resolve().parent / "var"
    own_redis = not os.environ.get("REDIS_URL")
    if own_redis:  # config.yaml reads ${REDIS_URL:-...}: point it at the Redis we are about to start
        os.environ["REDIS_URL"] = local_redis_url(var_dir)
    env_file: Path = ctx.obj["env_file"]
    for name in ensure_dev_secrets(env_file, secret_variables(ctx.obj["config_path"])):
        click.echo(
            f"{name} was not set: generated a development secret in {env_file}. Gu1 does not know it; "
            "put the secret from Gu1's dashboard there (or in the environment) to receive real webhooks.",
            err=True,
        )
    config = _config(ctx)
    own_redis = own_redis and config.queue.redis_url == os.environ["REDIS_URL"]
    sys.exit(Supervisor(ctx.obj["config_path"], bind, processes, var_dir).run(config.queue.redis_url, own_redis))


def _since(text: str | None) -> str | None:
    """An ISO timestamp, or a duration back from now (30m, 2h, 1d)."""
    from .timeutil import iso, parse_duration, parse_iso, utcnow

    if text is None:
        return None
    moment = parse_iso(text)
    if moment is not None:
        return iso(moment)
    try:
        return iso(utcnow() - timedelta(seconds=parse_duration(text)))
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither an ISO timestamp nor a duration such as 2h") from None


def _context(ctx: click.Context):
    from .worker import WorkerContext

    return WorkerContext.from_config(_config(ctx))


@cli.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--status", help="Only events in this status: received, processing, done, invalid.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def events(ctx: click.Context, limit: int, status: str | None, as_json: bool) -> None:
    """Recent events and what became of them."""
    from . import report

    rows = report.recent_events(_context(ctx).store, limit, status)
    click.echo(report.as_json(rows) if as_json else report.format_events(rows))


@cli.command()
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, event_id: str, as_json: bool) -> None:
    """The whole trace of one event: receipt, rules and why, each action's attempts and result."""
    from . import report

    work = _context(ctx)
    data = report.trace(work.store, work.actions, event_id)
    if data is None:
        click.echo(f"no event {event_id!r}", err=True)
        sys.exit(1)
    click.echo(report.as_json(data) if as_json else report.format_trace(data))


@cli.command()
@click.option("--since", help="ISO timestamp, or how far back: 30m, 2h, 7d.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def failed(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """Dead letters: actions that failed for good, with their last error."""
    from . import report

    rows = _context(ctx).actions.failed(_since(since))
    click.echo(report.as_json(rows) if as_json else report.format_failed(rows))


@cli.command()
@click.argument("event_id", required=False)
@click.option("--action", "action_id", help="Only this action.")
@click.option("--since", help="Every dead action since then: ISO timestamp, or 30m, 2h, 7d.")
@click.pass_context
def replay(ctx: click.Context, event_id: str | None, action_id: str | None, since: str | None) -> None:
    """Run dead actions again with the config in force now: one event's, one action, or all since a time."""
    from .delivery import replay as run_replay

    if sum(x is not None for x in (event_id, action_id, since)) != 1:
        raise click.UsageError("give one of: EVENT_ID, --action ACTION_ID, --since TIME")
    lines = run_replay(_context(ctx), event_id=event_id, action_id=action_id, since=_since(since))
    click.echo("\n".join(lines) if lines else "nothing to replay")
    if any(": no such " in line for line in lines):
        sys.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Per rule and per connector: totals, successes, failures, last success, last failure."""
    from . import report

    data = _context(ctx).actions.stats()
    click.echo(report.as_json(data) if as_json else report.format_stats(data))


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
    from rules.simulate import default_source

    from . import report, sendtest
    from .actionlog import ActionLog
    from .store import Store

    config = _config(ctx)
    name = source or default_source(config)
    if name not in config.sources:
        raise click.BadParameter(f"no source {name!r}; sources: {', '.join(config.sources)}", param_hint="--source")
    body, headers = sendtest.build(config, name, event_type, generation)
    target = f"{url.rstrip('/')}/webhooks/{name}"
    delivery = sendtest.post(target, body, headers)
    if delivery.error:
        click.echo(f"{delivery.error}\nis the receiver running? (make run, or ./gu1-sync serve)", err=True)
        sys.exit(1)
    click.echo(f"POST {target} ({event_type}, {len(body)} bytes, signed with ${config.sources[name].secrets[0].name})")
    answer = delivery.answer if isinstance(delivery.answer, str) else json.dumps(delivery.answer)
    click.echo(f"-> {delivery.status} {answer}")
    if delivery.status is None or not 200 <= delivery.status < 300 or not isinstance(delivery.answer, dict):
        sys.exit(1)
    if wait <= 0:
        return
    store = Store(config.storage_path, config.storage.busy_timeout)
    outcome = sendtest.follow(store, delivery.answer["id"], wait)
    if outcome == "not_found":
        click.echo(f"the event is not in {config.storage_path}: is the receiver at {url} using this config?", err=True)
        sys.exit(1)
    click.echo("")
    click.echo(report.format_trace(report.trace(store, ActionLog(store), delivery.answer["id"])))
    if outcome == "timeout":
        click.echo(
            f"\n(still in progress after {wait:g} s: are the workers running? ./gu1-sync show {delivery.answer['id']})"
        )


@cli.command()
@click.argument("destination", type=click.Path(dir_okay=False))
@click.pass_context
def backup(ctx: click.Context, destination: str) -> None:
    """Copy the SQLite file to DESTINATION, consistently, while everything keeps running."""
    import sqlite3

    from .store import Store, StoreUnavailable

    config = _config(ctx)
    if Path(destination).exists():
        raise click.BadParameter(f"{destination} exists; choose a new file", param_hint="DESTINATION")
    try:
        source = Store(config.storage_path, config.storage.busy_timeout).db.conn
        with sqlite3.connect(destination) as target:
            source.backup(target)  # SQLite's online backup: a consistent copy, writers are not stopped
    except (sqlite3.Error, StoreUnavailable) as exc:
        click.echo(f"backup failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"backed up {config.storage_path} to {destination}")


def _older_than(text: str | None) -> float | None:
    """Seconds from --older-than, which must carry a unit: a bare `90` would mean 90 seconds."""
    import re

    from .timeutil import parse_duration

    if text is None:
        return None
    if not re.fullmatch(r"\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*", text) or parse_duration(text) <= 0:
        raise click.BadParameter(
            f"{text!r} is not a duration with a unit, such as 90d or 12h", param_hint="--older-than"
        )
    return parse_duration(text)


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    help="Finished events idle for longer than this: 90d, 12h (default: storage.retention).",
)
@click.option(
    "--subject",
    help="Erase one data subject: every finished event whose subject or id field "
    "(entity id, external id, validation id...) has this value, whatever its age.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@click.option(
    "--vacuum",
    is_flag=True,
    help="Then rebuild the file (VACUUM): once after upgrading; holds the write lock while it runs.",
)
@click.pass_context
def purge(ctx: click.Context, older_than: str | None, subject: str | None, dry_run: bool, vacuum: bool) -> None:
    """Remove the personal data of finished events: those older than the retention, or one subject's."""
    from . import retention
    from .store import Store, StoreUnavailable
    from .timeutil import iso, utcnow

    seconds = _older_than(older_than)
    config = _config(ctx)
    if subject is not None:
        if older_than is not None:
            raise click.UsageError("give --older-than or --subject, not both: an erasure ignores age")
        try:
            retention.check_subject(subject)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--subject") from None
    elif seconds is None:
        seconds = config.storage.retention
        if seconds is None:
            raise click.UsageError("storage.retention is keep: give --older-than DURATION, or --subject ID")
    now = utcnow()
    try:
        store = Store(config.storage_path, config.storage.busy_timeout)
        store.migrate()
        if subject is not None:
            result = retention.erase_subject(store, subject, now=now, dry_run=dry_run)
            scope = "about the given id"
        else:
            cutoff = now - timedelta(seconds=seconds)
            result = retention.purge_older_than(store, cutoff, now=now, dry_run=dry_run)
            scope = f"idle since before {iso(cutoff)}"
        vacuumed = retention.vacuum(store) if vacuum and not dry_run else None
    except StoreUnavailable as exc:
        click.echo(f"purge failed: {exc}", err=True)
        sys.exit(1)
    verb = "would purge" if dry_run else "purged"
    click.echo(
        f"{verb} {result.events} finished event(s) {scope}: their bodies, {result.evaluations} rule result(s), "
        f"{result.actions} action(s) (rendered requests, errors), {result.attempts} attempt error(s); "
        f"{result.marks} ordering mark(s), throttle window(s) and stale lock(s)"
    )
    if dry_run:
        click.echo("nothing was changed (--dry-run)")
    elif result.wal_truncated is False or vacuumed is False:
        click.echo("the write-ahead log is still in use: run purge again later to clear old pages from it")
    if result.unfinished:
        click.echo(
            f"{result.unfinished} event(s) {scope} are not finished (received, processing, failed, or with actions "
            "pending, running or retrying) and were left as they are: let them finish (replay failed ones), "
            "then run purge again",
            err=True,
        )
        if subject is not None:
            sys.exit(1)

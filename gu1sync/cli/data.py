"""Commands that look after the data itself: `backup` (a consistent copy of the database while
everything runs), `purge` (remove personal data by age, or one data subject's) and `migrate-storage`
(a SQLite file copied into PostgreSQL)."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import click

from ..core.timeutil import iso, utcnow
from ..storage import Database, StoreUnavailable, is_postgres, retention
from ..storage.postgres import PostgresDatabase, display_url
from ..storage.transfer import TransferError, copy_to_postgres
from .common import cli, command_runtime, config_of, fail, older_than, progress


@cli.command()
@click.argument("destination", type=click.Path(dir_okay=False))
@click.pass_context
def backup(ctx: click.Context, destination: str) -> None:
    """Copy the SQLite file to DESTINATION, consistently, while everything keeps running."""
    config = config_of(ctx)
    if config.storage.engine == "postgresql":
        fail(
            f"the events are in PostgreSQL ({display_url(config.storage_url)}): back it up with PostgreSQL's own "
            "tools, e.g. pg_dump --format=custom --file=gu1-sync.dump <the database URL> (or your provider's "
            "snapshots); `backup` copies a SQLite file"
        )
    if Path(destination).exists():
        raise click.BadParameter(f"{destination} exists; choose a new file", param_hint="DESTINATION")
    runtime = command_runtime(ctx, any_schema=True)  # a copy of the file, whatever its version (before an upgrade)
    try:
        with progress("backup (pages)") as told:
            pages = runtime.store.database.backup(destination, progress=told)
    except StoreUnavailable as exc:
        fail(f"backup failed: {exc}")
    click.echo(f"backed up {runtime.store.path} to {destination} ({pages} pages)")


@cli.command()
@click.option(
    "--older-than",
    "older_than_text",
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
def purge(ctx: click.Context, older_than_text: str | None, subject: str | None, dry_run: bool, vacuum: bool) -> None:
    """Remove the personal data of finished events: those older than the retention, or one subject's."""
    seconds = older_than(older_than_text)
    config = config_of(ctx)
    if subject is not None:
        if older_than_text is not None:
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
    store = command_runtime(ctx, writes=True).store
    try:
        with progress("purge (events)") as told:
            if subject is not None:
                result = retention.erase_subject(store, subject, now=now, dry_run=dry_run, progress=told)
                scope = "about the given id"
            else:
                cutoff = now - timedelta(seconds=seconds)
                result = retention.purge_older_than(store, cutoff, now=now, dry_run=dry_run, progress=told)
                scope = f"idle since before {iso(cutoff)}"
        vacuumed = retention.vacuum(store) if vacuum and not dry_run else None
    except StoreUnavailable as exc:
        fail(f"purge failed: {exc}")
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


@cli.command("migrate-storage")
@click.option(
    "--to",
    "target_url",
    required=True,
    help="postgresql://user@host:5432/database: an empty database (the password: PGPASSWORD, or in the URL).",
)
@click.option(
    "--from",
    "source_path",
    type=click.Path(dir_okay=False, exists=True),
    help="The SQLite file to copy (default: storage.path of the config).",
)
@click.pass_context
def migrate_storage(ctx: click.Context, target_url: str, source_path: str | None) -> None:
    """Copy the SQLite file into an empty PostgreSQL database, then check every table's count."""
    if not is_postgres(target_url):
        raise click.BadParameter("expected postgresql://user@host:5432/database", param_hint="--to")
    config = config_of(ctx)
    if source_path is None:
        if config.storage.engine != "sqlite":
            raise click.UsageError("storage.url already names PostgreSQL: give the SQLite file with --from")
        source_path = config.storage_path
    if not Path(source_path).exists():
        fail(f"{source_path} does not exist: nothing to copy")
    shown = display_url(target_url)
    source = Database(source_path, config.storage.busy_timeout, read_only=True)
    target = PostgresDatabase(target_url, config.storage.busy_timeout)
    try:
        with progress("copy (rows)") as told:
            result = copy_to_postgres(source, target, progress=told)
    except (StoreUnavailable, TransferError) as exc:
        fail(f"migrate-storage failed: {exc}")
    finally:
        target.close()
    for table, (rows, counted) in result.counts.items():
        click.echo(f"  {table:<18} {rows:>9} row(s) copied, {counted:>9} counted in PostgreSQL")
    click.echo(
        f"copied {result.rows} row(s) of {source_path} into {shown}; every count matches.\n"
        f"Next: set storage.url to that URL in config.yaml (the password as ${{VAR}}), start the receivers and "
        f"workers, and keep {source_path} until you are satisfied."
    )

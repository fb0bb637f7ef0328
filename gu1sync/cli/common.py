"""The `gu1-sync` command group, its global options, and what every command shares: reading the
config (a config with errors prints every problem and exits 1), a Runtime for an operator command,
and reading times and durations from the command line."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from redis.exceptions import RedisError

from .. import logs
from ..config import Config, ConfigError, load_config
from ..core.timeutil import iso, parse_duration, parse_iso, utcnow
from ..runtime import Runtime
from ..storage import StoreUnavailable
from ..supervisor import started_redis_url

log = logging.getLogger("gu1sync.cli")


class Commands(click.Group):
    """The group, which turns the failures every command may meet (the database or Redis out of reach)
    into one line and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's
        try:
            return super().invoke(ctx)
        except StoreUnavailable as exc:
            fail(f"{ctx.invoked_subcommand}: the database cannot be used: {exc}")
        except RedisError as exc:
            fail(f"{ctx.invoked_subcommand}: Redis is unreachable ({type(exc).__name__}); try again once it answers")


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    envvar=logs.FORMAT_VARIABLE,
    default="text",
    show_default=True,
    help="text, or json: one JSON object per line (or $GU1_SYNC_LOG_FORMAT).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str, env_file: str | None, log_level: str, log_format: str) -> None:
    """gu1-sync: receive signed Gu1 webhooks and act on them in Salesforce and Slack."""
    from dotenv import load_dotenv

    os.environ[logs.FORMAT_VARIABLE] = log_format  # the processes it starts log the same way
    logs.setup(log_level, log_format)
    env_path = Path(env_file) if env_file else Path(config_path).resolve().parent / "var" / "secrets.env"
    if env_path.is_file():
        load_dotenv(env_path, override=False)
    # `run` (make run) started a Redis of its own and wrote where: a command run beside it, in another
    # terminal (doctor, replay, sweep, send-test), uses that one, as the processes `run` started do.
    if ctx.invoked_subcommand != "run" and not os.environ.get("REDIS_URL"):
        started = started_redis_url(Path(config_path).resolve().parent / "var")
        if started is not None:
            os.environ["REDIS_URL"] = started
    ctx.obj = {"config_path": config_path, "env_file": env_path}


def config_of(ctx: click.Context) -> Config:
    """The config the command was given; every problem and exit 1 when it has errors."""
    path = ctx.obj["config_path"]
    try:
        return load_config(path)
    except ConfigError as exc:
        if logs.log_format() == "json":  # a service's start-up under systemd: one JSON line like all others
            problems = [str(problem) for problem in exc.problems]
            log.error("%s: %d error(s)", path, len(exc.errors), extra={"config": path, "problems": problems})
        else:
            click.echo(str(exc), err=True)
            click.echo(f"{path}: {len(exc.errors)} error(s)", err=True)
        sys.exit(1)


def command_runtime(ctx: click.Context, *, writes: bool = False, any_schema: bool = False) -> Runtime:
    """The Runtime of an operator command (never migrates, never waits past storage.busy_timeout);
    exit 1 saying why when the database cannot be used."""
    config = config_of(ctx)
    try:
        return Runtime.for_command(config, writes=writes, any_schema=any_schema)
    except StoreUnavailable as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """Say what went wrong on stderr (a log line when the logs are JSON: a service under systemd) and exit 1."""
    if logs.log_format() == "json":
        log.error("%s", message)
    else:
        click.echo(message, err=True)
    sys.exit(1)


PLAIN_EVERY = 2.0  # seconds between plain progress lines (none for what ends sooner)


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A way for a long operation to say how far it is: a progress bar on a terminal; otherwise, for
    one that takes a while, a line of plain counts every PLAIN_EVERY seconds."""
    bar: Any = None
    last = [time.monotonic()]

    def update(done: int, total: int) -> None:
        nonlocal bar
        if sys.stdout.isatty():
            if bar is None:
                bar = click.progressbar(length=max(total, 1), label=label)
                bar.__enter__()
            bar.update(done - bar.pos)
        elif time.monotonic() - last[0] >= PLAIN_EVERY:
            click.echo(f"{label}: {done} of {total}")
            last[0] = time.monotonic()

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def since(text: str | None) -> str | None:
    """An ISO timestamp, or a duration back from now (30m, 2h, 1d)."""
    if text is None:
        return None
    moment = parse_iso(text)
    if moment is not None:
        return iso(moment)
    try:
        return iso(utcnow() - timedelta(seconds=parse_duration(text)))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO timestamp nor a duration such as 2h", param_hint="--since"
        ) from None


def older_than(text: str | None) -> float | None:
    """Seconds from --older-than, which must carry a unit: a bare `90` would mean 90 seconds."""
    if text is None:
        return None
    try:
        seconds = parse_duration(text, unit_required=True)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a duration with a unit, such as 90d or 12h", param_hint="--older-than"
        ) from None
    if seconds <= 0:
        raise click.BadParameter(f"{text!r} is no time at all: give more than 0, such as 1h", param_hint="--older-than")
    return seconds


__all__ = ["cli", "command_runtime", "config_of", "fail", "older_than", "progress", "since"]

"""The web console: `console` (its server) and `console-user` (its accounts: add, list, remove, unlock,
password)."""

from __future__ import annotations

import sys

import click

from .. import logs
from ..core.timeutil import utcnow
from ..storage.console import ConsoleStore
from .common import cli, command_runtime, config_of, fail


@cli.command()
@click.option("--bind", default=None, help="Address to listen on (default: console.bind, 127.0.0.1:8001).")
@click.option("--threads", default=16, show_default=True, help="Threads of its one process.")
@click.pass_context
def console(ctx: click.Context, bind: str | None, threads: int) -> None:
    """Run the web console (its own process and port, never the receiver's)."""
    from gunicorn.app.base import BaseApplication

    from ..console import create_console
    from ..runtime import Runtime

    config = config_of(ctx)
    address = bind or config.console.bind

    class Server(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": address,
                "workers": 1,  # one process: its sessions' key, when random, is its own
                "threads": threads,
                "worker_class": "gthread",
                "timeout": 60,
                "graceful_timeout": 20,
                "accesslog": "-",
                "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',  # no PII in the console's addresses
                "proc_name": "gu1-sync-console",
                "control_socket_disable": True,
                "logconfig_dict": logs.gunicorn_logging(),
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):  # noqa: ANN202 - called in the gunicorn worker as it boots
            return create_console(Runtime.for_service(config, role="console"))

    click.echo(f"gu1-sync console at http://{address}/ (sign in with an account: gu1-sync console-user add)", err=True)
    Server().run()


@cli.group("console-user")
def console_user() -> None:
    """The web console's accounts."""


def _password(from_stdin: bool) -> str:
    from ..console import hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        return hash_password(password)
    except ValueError as exc:
        fail(str(exc))


@console_user.command("add")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["viewer", "operator"]), required=True, help="viewer reads; operator also replays."
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
@click.pass_context
def user_add(ctx: click.Context, name: str, role: str, password_stdin: bool) -> None:
    """Add an account (asks for its password twice)."""
    name = name.strip()  # sign-in takes the name without spaces around it
    if not name or len(name) > 100:
        fail("a name is 1 to 100 characters")
    consoles = ConsoleStore(command_runtime(ctx, writes=True).store)
    if consoles.user(name) is not None:
        fail(f"there is already an account named {name!r}: `console-user password {name}` changes its password")
    consoles.add_user(name, role, _password(password_stdin), utcnow())
    click.echo(f"added {name} ({role})")


@console_user.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
@click.pass_context
def user_password(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Give an account a new password (and unlock it)."""
    consoles = ConsoleStore(command_runtime(ctx, writes=True).store)
    if consoles.user(name) is None:
        fail(f"no account named {name!r}")
    consoles.set_password(name, _password(password_stdin))
    click.echo(f"{name}: new password set")


@console_user.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """The accounts, their roles, last sign-in and lock."""
    rows = ConsoleStore(command_runtime(ctx).store).users()
    if not rows:
        click.echo("no account yet: gu1-sync console-user add NAME --role viewer|operator")
    for row in rows:
        locked = f", locked until {row['locked_until']}" if row["locked_until"] else ""
        click.echo(f"{row['name']}  {row['role']}  last sign-in {row['last_signin_at'] or 'never'}{locked}")


@console_user.command("remove")
@click.argument("name")
@click.pass_context
def user_remove(ctx: click.Context, name: str) -> None:
    """Remove an account (its sessions end at their next page)."""
    if not ConsoleStore(command_runtime(ctx, writes=True).store).remove_user(name):
        fail(f"no account named {name!r}")
    click.echo(f"removed {name}")


@console_user.command("unlock")
@click.argument("name")
@click.pass_context
def user_unlock(ctx: click.Context, name: str) -> None:
    """Unlock an account locked after repeated failed sign-ins."""
    if not ConsoleStore(command_runtime(ctx, writes=True).store).unlock(name):
        fail(f"no account named {name!r}")
    click.echo(f"unlocked {name}")

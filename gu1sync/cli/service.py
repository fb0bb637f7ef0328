"""Commands that run gu1-sync: `run` (everything on this box, what `make run` starts), `serve` (the
receiver under gunicorn), `worker` (the workers), `sweep` (queue stored work that is not on the
queue) and `drain` (take this box's receiver out of its load balancer before stopping it)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from redis.exceptions import RedisError

from .. import logs
from ..alerts import NOT_CONFIGURED
from ..config import ConfigError, load_config
from ..receiver.server import ReceiverWorker
from ..storage import StoreUnavailable
from ..supervisor import SUPERVISED
from .common import cli, command_runtime, config_of, fail


@cli.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="Address to listen on.")
@click.option("--workers", default=2, show_default=True, help="Receiver processes.")
@click.option(
    "--threads", default=128, show_default=True, help="Threads per receiver process (started as they are needed)."
)
@click.pass_context
def serve(ctx: click.Context, bind: str, workers: int, threads: int) -> None:
    """Run the webhook receiver under gunicorn."""
    from gunicorn.app.base import BaseApplication

    from ..receiver import create_app

    config = config_of(ctx)
    if config.ops.slack is None and not os.environ.get(SUPERVISED):  # under `run`, the workers say it
        logging.getLogger("gu1sync.serve").warning(NOT_CONFIGURED)
    ReceiverWorker.read_timeout = config.receiver.read_timeout  # the workers gunicorn forks inherit it

    class Server(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": bind,
                "workers": workers,
                "threads": threads,
                "worker_class": "gu1sync.receiver.server.ReceiverWorker",
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

        def load(self):  # noqa: ANN202 - called in each gunicorn worker as it boots, so after a HUP too
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
    from ..worker import run_worker

    if processes < 1:
        raise click.BadParameter("at least 1", param_hint="--processes")
    run_worker(config_of(ctx), burst=burst, processes=processes)


@cli.command()
@click.pass_context
def sweep(ctx: click.Context) -> None:
    """Queue every stored, unfinished event that is not on the queue (Redis must be up)."""
    runtime = command_runtime(ctx, writes=True)
    try:
        queued = runtime.queue.sweep(grace=0)
    except RedisError as exc:
        fail(f"sweep failed: Redis is unreachable ({type(exc).__name__})")
    except StoreUnavailable as exc:
        fail(f"sweep failed: {exc}")
    click.echo(f"queued {len(queued)} event(s)")


@cli.command()
@click.option("--off", is_flag=True, help="Take traffic again: remove the drain file.")
@click.pass_context
def drain(ctx: click.Context, off: bool) -> None:
    """Make this box's /readyz answer 503 (draining) so that the load balancer moves webhooks to the
    others; the receiver keeps answering what still reaches it. Stop the box once no more arrive."""
    path = Path(config_of(ctx).drain_path)
    if off:
        path.unlink(missing_ok=True)
        click.echo(f"not draining: {path} removed; /readyz answers 200 again once the rest is ready")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror} (receiver.drain_file names it)")
    click.echo(
        f"draining: {path} exists, so /readyz answers 503 while /healthz stays up; once your balancer has "
        "moved the traffic (its health check interval times its threshold), stop this box. "
        "`gu1-sync drain --off` undoes it."
    )


@cli.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="Address the receiver listens on.")
@click.option("--processes", default=2, show_default=True, help="Worker processes.")
@click.option("--console-bind", default=None, help="Address the web console listens on (default: console.bind).")
@click.pass_context
def run(ctx: click.Context, bind: str, processes: int, console_bind: str | None) -> None:
    """Run everything on this box: Redis (unless REDIS_URL is set), the receiver, the workers, the web console.
    Ctrl-C stops it."""
    from ..supervisor import Supervisor, ensure_dev_secrets, local_redis_url, secret_variables

    var_dir = Path(ctx.obj["config_path"]).resolve().parent / "var"
    own_redis = not os.environ.get("REDIS_URL")
    if own_redis:  # config.yaml reads ${REDIS_URL:-...}: point it at the Redis we are about to start
        os.environ["REDIS_URL"] = local_redis_url(var_dir)
    env_file: Path = ctx.obj["env_file"]
    for name in ensure_dev_secrets(env_file, secret_variables(ctx.obj["config_path"])):
        logging.getLogger("gu1sync.run").warning(
            "%s was not set: generated a development secret in %s. Gu1 does not know it; put the secret from "
            "Gu1's dashboard there (or in the environment) to receive real webhooks.",
            name,
            env_file,
        )
    config = config_of(ctx)
    own_redis = own_redis and config.queue.redis_url == os.environ["REDIS_URL"]
    supervisor = Supervisor(
        ctx.obj["config_path"], bind, processes, var_dir, console_bind=console_bind, console_default=config.console.bind
    )
    sys.exit(supervisor.run(config.queue.redis_url, own_redis))

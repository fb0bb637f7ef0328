"""gu1-sync's entry points: the app factory, the WSGI target for gunicorn, and the CLI.

create_app(config)     the Flask app, from an already-parsed config (tests, CLI and server alike)
gunicorn 'app:wsgi()'  the app, from $GU1_SYNC_CONFIG (default config.yaml)
python app.py --help   the command line (also ./gu1-sync)
"""

from __future__ import annotations

import os
import sys

from flask import Flask

from gu1sync.config import Config, ConfigError, load_config
from gu1sync.delivery import event_job_limit
from gu1sync.groupcommit import GroupCommit
from gu1sync.kinds import kind_for
from gu1sync.queue import BackgroundEnqueuer, EventQueue
from gu1sync.receiver import Services, blueprint, install_error_handlers
from gu1sync.store import Store
from gu1sync.timeutil import Clock, utcnow


def create_app(
    config: Config,
    *,
    store: Store | None = None,
    queue: EventQueue | None = None,
    clock: Clock = utcnow,
    server: bool = False,
) -> Flask:
    """Build the receiver for `config`; `store`, `queue` and `clock` may be given by tests.

    `server=True` (gunicorn): the requests that arrive together share one commit, and events are put
    on the RQ queue by a thread, many per round trip. Otherwise (tests, the CLI) each request commits
    and queues its own event before it answers.
    """
    app = Flask("gu1sync")
    app.config["MAX_CONTENT_LENGTH"] = config.receiver.max_body_bytes + 1  # see receiver._read_body
    app.json.sort_keys = False
    if store is None:
        store = Store(config.storage_path, config.storage.busy_timeout, clock)
    store.migrate()
    if queue is None:
        queue = EventQueue(config.queue.redis_url, config.queue.name, store, clock)
    queue.event_timeout = event_job_limit(config)
    kinds = {name: kind_for(source) for name, source in config.sources.items()}
    app.extensions["gu1sync"] = Services(
        config=config,
        store=store,
        queue=queue,
        clock=clock,
        kinds=kinds,
        committer=GroupCommit(store) if server else None,
        enqueuer=BackgroundEnqueuer(queue) if server else None,
    )
    app.register_blueprint(blueprint)
    install_error_handlers(app)
    return app


def wsgi() -> Flask:
    """The app for a WSGI server, from $GU1_SYNC_CONFIG; a bad config stops start-up with its problems."""
    path = os.environ.get("GU1_SYNC_CONFIG", "config.yaml")
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    return create_app(config, server=True)


def main() -> None:
    """The command line."""
    from gu1sync.cli import cli

    cli(prog_name="gu1-sync")


if __name__ == "__main__":
    main()

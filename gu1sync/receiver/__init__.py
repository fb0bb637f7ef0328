"""The receiver: the Flask app that takes Gu1's webhooks (`routes`), and its errors (`errors`).

`create_app(config)` builds it from an already-parsed config (tests, the CLI and gunicorn alike),
or `create_app(runtime)` from a Runtime built by the caller.
"""

from __future__ import annotations

from flask import Flask

from ..alerts import AlerterThread
from ..config import Config
from ..core.timeutil import Clock, utcnow
from ..kinds import kind_for
from ..queue import BackgroundEnqueuer
from ..runtime import Runtime
from ..storage.groupcommit import GroupCommit
from .routes import Services, blueprint, install_error_handlers


def create_app(source: Config | Runtime, *, clock: Clock = utcnow, server: bool = False) -> Flask:
    """The receiver for a config (its Runtime is built here, the schema brought up to date) or a Runtime.

    `server=True` (gunicorn): the requests that arrive together share one commit, and events are put
    on the RQ queue by a thread, many per round trip. Otherwise (tests, the CLI) each request commits
    and queues its own event before it answers.
    """
    runtime = source if isinstance(source, Runtime) else Runtime.for_service(source, role="receiver", clock=clock)
    config = runtime.config
    app = Flask("gu1sync")
    app.config["MAX_CONTENT_LENGTH"] = config.receiver.max_body_bytes + 1  # see routes._read_body
    app.json.sort_keys = False
    app.extensions["gu1sync"] = Services(
        runtime=runtime,
        config=config,
        kinds={name: kind_for(spec) for name, spec in config.sources.items()},
        committer=GroupCommit(runtime.store) if server else None,
        enqueuer=BackgroundEnqueuer(runtime.queue) if server else None,
    )
    app.register_blueprint(blueprint)
    install_error_handlers(app)
    if server:  # the receiver's processes look at gu1-sync's health too: when no worker runs, they tell
        runtime.when_ready(AlerterThread(runtime).start)
    return app


__all__ = ["create_app"]

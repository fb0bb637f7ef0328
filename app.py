"""gu1-sync's entry points: the app factory, the WSGI target for gunicorn, and the CLI.

create_app(config)     the Flask app, from an already-parsed config (tests, CLI and server alike)
gunicorn 'app:wsgi()'  the app, from $GU1_SYNC_CONFIG (default config.yaml)
python app.py --help   the command line (also ./gu1-sync, or `gu1-sync` once installed)
"""

from __future__ import annotations

import os
import sys

from flask import Flask

from gu1sync.cli import main
from gu1sync.config import ConfigError, load_config
from gu1sync.receiver import create_app


def wsgi() -> Flask:
    """The app for a WSGI server, from $GU1_SYNC_CONFIG; a bad config stops start-up with its problems."""
    path = os.environ.get("GU1_SYNC_CONFIG", "config.yaml")
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    return create_app(config, server=True)


__all__ = ["create_app", "main", "wsgi"]

if __name__ == "__main__":
    main()

"""Logging set-up shared by the receiver, the workers and the CLI: one readable line per fact."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def gunicorn_logging() -> dict:
    """gunicorn's loggers in the same one-line format as everything else."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": FORMAT, "datefmt": "%Y-%m-%d %H:%M:%S"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"level": logging.getLevelName(logging.getLogger().level), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }


def rq_level(level: str) -> str:
    """RQ's own chatter (worker ids, pubsub channels, results kept) only when debugging: our own lines
    already say what happened to each event and action."""
    return level if level.upper() == "DEBUG" else "WARNING"


def setup(level: str | None = None) -> None:
    """Log to stderr at `level` (or $GU1_SYNC_LOG_LEVEL, default INFO); idempotent."""
    level = (level or os.environ.get("GU1_SYNC_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    if not any(getattr(h, "_gu1sync", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        handler._gu1sync = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    quiet_rq()
    quiet_libraries()


def quiet_rq() -> None:
    """Put RQ's loggers at `rq_level` (RQ sets some of them to INFO as it imports and starts up)."""
    level = rq_level(logging.getLevelName(logging.getLogger().level))
    for name in ("rq", "rq.worker", "rq.job", "rq.queue", "rq.scheduler", "rq.worker_pool"):
        logging.getLogger(name).setLevel(level)


# At DEBUG these write what must never be in a log: urllib3 each request line (a Salesforce path holds
# the external id), slack-sdk each request (the message, an incoming webhook's URL, which is a secret).
CHATTY = ("urllib3", "requests", "slack_sdk", "simple_salesforce", "zeep")


def quiet_libraries() -> None:
    """Keep the HTTP client libraries at INFO even when the log level is DEBUG: our own lines say
    which call was made and how it went, without its data."""
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO)

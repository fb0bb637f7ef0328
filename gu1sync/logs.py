"""Logging set-up shared by the receiver (and gunicorn's access log), the workers (and RQ), the
supervisor and the CLI: one line per fact, either readable text (the default) or, with
`GU1_SYNC_LOG_FORMAT=json` (or `--log-format json`), one JSON object per line with stable keys:
time, level, logger, message, and what the line is about (event_id, action_id, rule, source, ...).

Neither format ever carries a payload: lines name events and actions by id and type only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FORMATS = ("text", "json")
FORMAT_VARIABLE = "GU1_SYNC_LOG_FORMAT"


def log_format(value: str | None = None) -> str:
    """`text` or `json`: as given, else from $GU1_SYNC_LOG_FORMAT, else text."""
    chosen = (value or os.environ.get(FORMAT_VARIABLE) or "text").strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"{FORMAT_VARIABLE} is text or json, not {chosen!r}")
    return chosen


class Json(JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then the line's own fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AccessJson(Json):
    """gunicorn's access log as JSON: the request's fields as keys (gunicorn hands them over as a dict)."""

    ATOMS = {"h": "remote", "m": "method", "U": "path", "s": "status", "B": "bytes", "M": "ms"}

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        atoms = record.args if isinstance(record.args, dict) else {}
        for atom, key in self.ATOMS.items():
            if atom in atoms:
                value = atoms[atom]
                log_data[key] = int(value) if key in ("status", "bytes", "ms") and str(value).isdigit() else value


def formatter(fmt: str | None = None) -> logging.Formatter:
    """The formatter for `fmt` (see log_format)."""
    return Json() if log_format(fmt) == "json" else logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S")


def gunicorn_logging(fmt: str | None = None) -> dict:
    """gunicorn's loggers in the same format as everything else (its access log too)."""
    json_mode = log_format(fmt) == "json"
    plain = {"format": FORMAT, "datefmt": "%Y-%m-%d %H:%M:%S"}
    formatters = {
        "main": {"()": Json} if json_mode else plain,
        "access": {"()": AccessJson} if json_mode else plain,
    }
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {"stderr": {**handler, "formatter": "main"}, "access": {**handler, "formatter": "access"}},
        "root": {"level": logging.getLevelName(logging.getLogger().level), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }


def rq_level(level: str) -> str:
    """RQ's own chatter (worker ids, pubsub channels, results kept) only when debugging: our own lines
    already say what happened to each event and action."""
    return level if level.upper() == "DEBUG" else "WARNING"


def setup(level: str | None = None, fmt: str | None = None) -> None:
    """Log to stderr at `level` (or $GU1_SYNC_LOG_LEVEL, default INFO) in `fmt` (see log_format); idempotent.

    In JSON, an exception nobody caught is logged too (one line, its traceback inside), not printed.
    """
    level = (level or os.environ.get("GU1_SYNC_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_gu1sync", False)]
    handler = ours[0] if ours else logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    if not ours:
        handler._gu1sync = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    if log_format(fmt) == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    quiet_rq()
    quiet_libraries()


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("gu1sync").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("gu1sync").critical("uncaught %s in thread %s", args.exc_type.__name__, name, exc_info=exc_info)


def as_json_line(line: str, process: str) -> str:
    """A child's output line as one JSON object with its process named (the supervisor's relay): its own
    JSON line with `process` added, or any other line (a crash before logging was set up) wrapped."""
    text = line.rstrip("\n")
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = {"time": now, "level": "INFO", "logger": "gu1sync.run", "message": text}
    record["process"] = process
    return json.dumps(record, ensure_ascii=False)


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

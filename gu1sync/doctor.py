"""`gu1-sync doctor`: the first command an ops engineer runs. One line per check, each naming the part:
the config and its secrets, the database, Redis and the workers, each connector's credentials (a
real, read-only call: Salesforce's limits, Slack's auth.test), the ops channel, the receiver, and
what waits: the queue, dead letters, the oldest unfinished event."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from redis.exceptions import RedisError
from rq import Worker

from connectors import REGISTRY, ActionError

from .config import Config, ConfigError, load_config
from .core.status import ActionStatus
from .core.timeutil import parse_iso
from .core.values import Secret
from .queue import redact, redis_client
from .runtime import Runtime
from .storage import StoreUnavailable
from .storage.ops import OpsLog

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    verdict: str  # ok, warn (worth a look, not broken), FAIL
    part: str
    detail: str

    def __str__(self) -> str:
        return f"{self.verdict:<5} {self.part:<12} {self.detail}"


def examine(config_path: str, receiver_url: str | None) -> Iterator[Check]:
    """Every check, in the order a person would want them; stops early only without a config."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        yield Check(FAIL, "config", f"{len(exc.errors)} error(s):\n" + "\n".join(f"      {p}" for p in exc.problems))
        return
    yield Check(
        OK,
        "config",
        f"{config.file}, version {config.digest}: {len(config.sources)} source(s), {len(config.rules)} rule(s)",
    )
    yield _secrets(config)
    try:
        runtime = Runtime.for_command(config, writes=True)
        runtime.store.check_writable()
        yield Check(
            OK, "database", f"{runtime.store.path} takes writes, schema {runtime.store.database.schema().found}"
        )
    except StoreUnavailable as exc:
        yield Check(FAIL, "database", str(exc))
        runtime = None
    yield from _queue(config, runtime)
    for name, spec in REGISTRY.connectors.items():
        if spec.check is not None:
            yield _verdict(name, lambda spec=spec, name=name: spec.check(_connector(config, name)))
    yield _ops(config)
    if receiver_url:
        yield _receiver(receiver_url)
    if runtime is not None:
        yield from _waiting(config, runtime)


def _secrets(config: Config) -> Check:
    names = sorted({secret.name for secret in _secrets_in(config)})
    empty = sorted({secret.name for secret in _secrets_in(config) if not secret.value})
    if empty:
        return Check(FAIL, "secrets", f"set but empty: {', '.join(empty)}")
    return Check(OK, "secrets", f"{len(names)} variable(s) set: {', '.join(names)}" if names else "none needed")


def _secrets_in(value: object) -> Iterator[Secret]:
    """Every secret a config holds, wherever it is."""
    if isinstance(value, Secret):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secrets_in(item)
    elif hasattr(value, "model_fields"):
        for name in type(value).model_fields:
            yield from _secrets_in(getattr(value, name))


def _queue(config: Config, runtime: Runtime | None) -> Iterator[Check]:
    url = redact(config.queue.redis_url)
    if runtime is None:  # the database failed: Redis is asked on its own, the workers cannot be told
        try:
            redis_client(config.queue.redis_url, connect_timeout=2, timeout=2).ping()
        except RedisError as exc:
            yield Check(FAIL, "redis", f"no answer at {url} ({type(exc).__name__})")
        else:
            yield Check(OK, "redis", f"answers at {url}")
        return
    queue = runtime.queue
    if not queue.ping():
        yield Check(FAIL, "redis", f"no answer at {url}: webhooks are kept, but nothing is processed")
        return
    yield Check(OK, "redis", f"answers at {url}")
    try:
        workers = Worker.all(queue=queue.queue)
        depth = queue.queue.count
    except RedisError as exc:
        yield Check(FAIL, "workers", f"cannot tell ({type(exc).__name__})")
        return
    if not workers:
        yield Check(FAIL, "workers", "none is running: `gu1-sync worker` (make run starts them)")
    else:
        yield Check(OK, "workers", f"{len(workers)} running")
    yield Check(OK if depth < 1000 else WARN, "queue", f"{depth} job(s) waiting")


def _connector(config: Config, name: str) -> object:
    return REGISTRY.connectors[name].client(getattr(config.connectors, name))


def _verdict(part: str, check: Callable[[], tuple[bool | None, str]]) -> Check:
    try:
        ok, detail = check()
    except ActionError as error:
        code = error.code or "refused"
        return Check(FAIL, part, error.message if code in error.message else f"{code}: {error.message}")
    return Check(OK if ok else WARN, part, detail)


def _ops(config: Config) -> Check:
    settings = config.ops.slack
    if settings is None:
        return Check(WARN, "ops", "ops.slack is not configured: nobody is told when gu1-sync breaks")
    from connectors.slack import SlackConnector

    return _verdict("ops", lambda: SlackConnector(settings).check(settings.channel))


def _receiver(url: str) -> Check:
    target = url.rstrip("/") + "/readyz"
    try:
        with urllib.request.urlopen(target, timeout=5):  # noqa: S310 - an http(s) URL we were given
            return Check(OK, "receiver", f"ready at {url}")
    except urllib.error.HTTPError as error:
        try:
            checks = json.loads(error.read()).get("checks", {})
            failing = ", ".join(name for name, check in checks.items() if not check.get("ok"))
        except ValueError:
            failing = f"HTTP {error.code}"
        return Check(FAIL, "receiver", f"not ready at {url}: {failing or error.code}")
    except OSError as error:
        return Check(FAIL, "receiver", f"no answer at {url} ({type(error).__name__}): is it running? (--url)")


def _waiting(config: Config, runtime: Runtime) -> Iterator[Check]:
    ops = OpsLog(runtime.store)
    dead = ops.count_actions(ActionStatus.DEAD)
    yield Check(
        FAIL if dead else OK,
        "dead letters",
        f"{dead}: `gu1-sync failed` says why; fix it, then `gu1-sync replay`" if dead else "none",
    )
    failed = ops.failed_events()
    if failed:
        yield Check(
            FAIL,
            "events",
            f"{failed} failed to be processed: `gu1-sync events --status failed`, then `gu1-sync replay EVENT_ID`",
        )
    oldest = parse_iso(ops.oldest_unfinished() or "")
    if oldest is None:
        yield Check(OK, "backlog", "no event waits")
        return
    age = (runtime.clock() - oldest).total_seconds()
    verdict = FAIL if age > config.ops.backlog.age else OK
    yield Check(verdict, "backlog", f"the oldest unfinished event was received {age:.0f} s ago")


__all__ = ["FAIL", "OK", "WARN", "Check", "examine"]

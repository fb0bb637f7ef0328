"""The connector as real processes, for the end-to-end and fault tests.

`Stack`: a config on a real file whose connectors point at the emulators, the receiver under
gunicorn and any number of worker processes (`app.py worker`), each in a process group of its own
so that a test can kill -9 a worker together with its RQ scheduler; and what a test needs to aim a
fault: which worker is in the middle of a call, which one runs the RQ scheduler, another process
holding SQLite's write lock. tests/support/burst.py sends bursts at it and checks how a run ended.

Use the `make_stack` fixture (conftest imports it): `stack = make_stack(timeout="1s", retry=...)`.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq.job import Job

from gu1sync.storage import Store
from tests.support.emulators.base import Request
from tests.support.emulators.salesforce import SalesforceEmulator
from tests.support.emulators.slack import SlackEmulator
from tests.support.helpers import ROOT, SECRETS, config_text, dumps, free_port, gu1_headers, wait_until

SESSION = "00D000000000001!e2e-session"

# Rules for the whole chain: every status change upserts the Contact, a block is also posted to Slack.
# A template: {sf_url}, {slack_url}, {timeout} and {retry} are filled in by the Stack.
RULES = """
connectors:
  salesforce:
    auth: {{method: session, instance_url: "{sf_url}", session_id: "${{SF_SESSION}}"}}
    timeout: {timeout}
  slack:
    token: "${{SLACK_TOKEN}}"
    base_url: "{slack_url}"
    timeout: {timeout}
    pace: {pace}
{retry}
rules:
  - name: status-to-salesforce
    on: entity.status_changed
    actions:
      - salesforce.upsert:
          object: Contact
          external_id_field: Gu1_External_Id__c
          external_id: "{{{{ entity.externalId }}}}"
          fields: {{Status__c: "{{{{ payload.status }}}}", Gu1_Entity_Id__c: "{{{{ entity.id }}}}"}}
  - name: alert-blocked
    on: entity.status_changed
    when: {{status_changes: {{to: blocked}}}}
    actions:
      - slack.post:
          channel: "#compliance-alerts"
          text: "{{{{ entity.name | slack }}}} is blocked: {{{{ payload.reason }}}}"
"""

LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


class Stack:
    """The receiver and workers as processes, with the emulators in this one."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        org: SalesforceEmulator,
        workspace: SlackEmulator,
        *,
        timeout: str = "5s",
        rules: str = RULES,
        retry: str = "",
        busy_timeout: str = "1s",
        extra: str = "",
        env: dict[str, str] | None = None,
        pace: str = "{posts: 0}",
        storage_url: str | None = None,
        cwd: Path | None = None,
    ):
        """`pace`: connectors.slack.pace; off unless a test gives one (the fault tests post dozens of
        messages to one channel at once, and are about something else)."""
        self.redis_url = redis_url
        self.cwd = cwd  # a working directory of its own (a box of several), else the project's
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            config_text(redis_url, busy_timeout=busy_timeout, storage_url=storage_url)
            + rules.format(sf_url=org.url, slack_url=workspace.api_url, timeout=timeout, retry=retry, pace=pace)
            + extra
        )
        org.sessions.add(SESSION)
        self.env = {
            **os.environ,
            **SECRETS,
            "SF_SESSION": SESSION,
            "SLACK_TOKEN": workspace.token,
            "REQUESTS_CA_BUNDLE": org.ca_path,  # the workers trust the emulator's throwaway CA
            **(env or {}),
        }
        self.port = free_port()
        self.db_path = tmp_path / "events.db"  # on SQLite
        self.store = Store(storage_url or str(self.db_path))
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.logs = tmp_path / "logs.txt"

    def start(self, *command: str) -> subprocess.Popen:
        log = open(self.logs, "a")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--config", str(self.config), *command],
            cwd=self.cwd or ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_receiver(self, workers: int = 1) -> None:
        self.start("serve", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers))
        wait_until(lambda: self.request("GET", "/healthz")[0] == 200, what="the receiver")

    def start_worker(self, processes: int = 1, *, ready: bool = False) -> subprocess.Popen:
        """One more `app.py worker` process (with the RQ scheduler, if it gets the lock); with
        `processes` > 1, RQ's pool of that many, which starts a new one when one ends. `ready`: return
        once it has registered with RQ (a lone worker), its start-up (and SQLite migration) behind it."""
        process = self.start("worker", "--processes", str(processes))
        self.workers.append(process)
        if ready:
            wait_until(lambda: process.pid in self.registered_pids() or process.poll() is not None, what="a worker")
            assert process.poll() is None, f"the worker ended at start\n{self.log_tail()}"
        return process

    def registered_pids(self) -> set[int]:
        """Pids of the workers registered with RQ for the queue (a killed one stays a while)."""
        conn = redis.Redis.from_url(self.redis_url)
        try:
            keys = conn.smembers("rq:workers:test")
            pids = [conn.hget(key, "pid") for key in keys]
        finally:
            conn.close()
        return {int(pid) for pid in pids if pid}

    def kill(self, process: subprocess.Popen) -> None:
        """kill -9 the process and everything in its group (a worker's scheduler), and reap it."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        if process in self.workers:
            self.workers.remove(process)

    def worker_calling(
        self, requests: list[Request], exclude: subprocess.Popen | None = None
    ) -> tuple[subprocess.Popen, Request] | None:
        """A live worker (not `exclude`) that is waiting for the answer to one of `requests`, found by
        the client port the emulator saw (a worker makes its calls in its own process: no fork per job)."""
        for request in requests:
            inodes = _socket_inodes(request.client_port)
            for worker in self.workers:
                if worker is not exclude and worker.poll() is None and inodes and _holds_socket(worker.pid, inodes):
                    return worker, request
        return None

    def scheduler_worker(self) -> subprocess.Popen | None:
        """The worker whose RQ scheduler holds the queue's scheduler lock (it runs in the worker's group)."""
        conn = redis.Redis.from_url(self.redis_url)
        try:
            name = conn.get("rq:scheduler-lock:test")
            pid = conn.hget(f"rq:scheduler:{name.decode()}", "pid") if name else None
        finally:
            conn.close()
        if not pid:
            return None
        try:
            group = os.getpgid(int(pid))
        except ProcessLookupError:
            return None
        return next((w for w in self.workers if w.pid == group and w.poll() is None), None)

    def job_status(self, job_id: str) -> str | None:
        """The status of an RQ job as Redis has it (None: no such job)."""
        conn = redis.Redis.from_url(self.redis_url)
        try:
            status = conn.hget(Job.key_for(job_id), "status")
        finally:
            conn.close()
        return status.decode() if status else None

    def hold_write_lock(self, seconds: float) -> subprocess.Popen:
        """Another process takes SQLite's write lock on the file (BEGIN EXCLUSIVE) and keeps it for
        `seconds`; returns once the lock is held."""
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(self.db_path), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.processes.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked", "no lock taken"
        return holder

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return None, b""

    def deliver(self, document: dict) -> tuple[int, bytes]:
        body = dumps(document)
        return self.request("POST", "/webhooks/gu1-prod", body, gu1_headers(body))

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the processes wrote (ids and types only: gu1-sync never logs a payload)."""
        try:
            text = self.logs.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the local TCP sockets bound to `port` (Linux: /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


@pytest.fixture
def make_stack(tmp_path, redis_url, org, workspace, engine, storage_location):
    """Build a Stack on this test's Redis, emulators and storage; every process it started is stopped after."""
    stacks = []
    storage_url = storage_location if engine == "postgresql" else None

    def build(*, redis_url: str = redis_url, **options) -> Stack:
        stack = Stack(tmp_path, redis_url, org, workspace, storage_url=storage_url, **options)
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        stack.stop()

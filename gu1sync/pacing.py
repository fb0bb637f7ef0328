"""Pacing: calls to one place (a Slack channel) kept under the rate the service allows, across every
worker process and box, with a limiter kept in Redis (the `limits` library's moving window).

Slack allows about one message per second per channel, with short bursts: `connectors.slack.pace`
says how many posts in how long (2 in 2 s by default). A post whose turn is less than a second away
waits for it; one whose turn is further off is deferred (it goes again then, without using up an
attempt), so that a burst never earns a 429 and no worker thread sleeps for long. A first attempt
made inside its event's job waits for no turn (`turn(..., wait_at_most=0)`): the job's other
attempts, the Salesforce writes, would wait behind it. When Redis cannot
be asked, the post goes unpaced: a 429 is still honoured as any other.
"""

from __future__ import annotations

import logging
import time

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WAIT_AT_MOST = 1.0  # seconds a call may wait for its turn in a worker thread; later turns are deferred


class Pacer:
    """Turns for calls, per key (`slack:#compliance-alerts`), shared by every process using this Redis."""

    def __init__(self, redis: Redis, prefix: str):
        storage = RedisStorage(
            "redis://", connection_pool=redis.connection_pool, key_prefix=f"{prefix}:pace", wrap_exceptions=True
        )
        self.limiter = MovingWindowRateLimiter(storage)
        self._down_said = False

    def turn(self, key: str, calls: int, seconds: int, *, wait_at_most: float = WAIT_AT_MOST) -> float:
        """Take a turn for `key` (at most `calls` in any `seconds`, whole seconds): 0 when taken (after
        waiting up to `wait_at_most` for it), else the seconds until the next turn may come."""
        item = RateLimitItemPerSecond(calls, seconds)
        waited = 0.0
        try:
            while True:
                if self.limiter.hit(item, key):
                    return 0.0
                reset_at = self.limiter.get_window_stats(item, key).reset_time
                wait = max(reset_at - time.time(), 0.01)
                if waited + wait > wait_at_most:
                    return wait
                time.sleep(wait)
                waited += wait
        except (StorageError, RedisError) as exc:
            if not self._down_said:
                log.warning("pacing off for now: Redis cannot be asked (%s); a 429 is still honoured", exc)
                self._down_said = True
            return 0.0

"""Slack pacing: posts to one channel are kept under Slack's rate across every worker process (a limiter
in Redis), so that a burst earns no 429; a 429 is still honoured. Real processes, Redis, RQ, slack-sdk
and the Slack emulator, which answers 429 past its per-channel rate as Slack does."""

from __future__ import annotations

import pytest

from gu1sync.pacing import Pacer
from tests.support.burst import Sender, burst, settle

pytestmark = [pytest.mark.real_redis, pytest.mark.timeout(180)]


def busiest_window(times: list[float], seconds: float) -> int:
    """The most posts within any `seconds` (from each post on)."""
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < seconds) for i, start in enumerate(times)), default=0)


def test_twenty_posts_to_one_channel_from_two_processes_never_exceed_the_rate(make_stack, org, workspace):
    # Slack's limit, scaled to keep the test short: 4 posts a second, bursts of 4 (a token bucket per
    # channel); gu1-sync's pace: at most 4 posts in any second, shared by both worker processes.
    workspace.channel_rate = (4.0, 4)
    stack = make_stack(timeout="2s", pace="{posts: 4, every: 1s}")
    stack.start_receiver()
    stack.start_worker()
    stack.start_worker()
    sender = Sender(stack)
    sender.start(burst(20, every_nth_blocked=1))  # 20 blocks at once: 20 posts to #compliance-alerts
    sender.join()
    settlement = settle(stack, sender, org, workspace, kills=0, timeout=120)
    assert settlement.posts == 20 and not settlement.repeats
    assert workspace.ratelimited == 0  # not one 429 earned
    times = [m["at"] for m in workspace.messages if m["channel"] == "C0COMPLIANCE"]
    assert len(times) == 20
    # Turns are taken when a post leaves and timed here when it arrives: 50 ms allowed for the difference.
    assert busiest_window(times, 0.95) <= 4
    assert times[-1] - times[0] >= 3.9  # 20 posts at 4 a second, the first 4 at once
    # Posts that waited for their turn were deferred, not failed: no attempt was used up.
    deferred = stack.store.db.execute(
        "SELECT COUNT(*) FROM attempts a JOIN actions b ON b.id = a.action_id "
        "WHERE b.type = 'slack.post' AND a.outcome = 'failed'"
    ).fetchone()[0]
    assert deferred == 0


def test_without_pacing_the_same_burst_earns_429s_which_are_honoured(make_stack, org, workspace):
    """The emulator's rate is real: the same burst, unpaced, is refused, and still ends posted once each."""
    workspace.channel_rate = (4.0, 4)
    stack = make_stack(timeout="2s", retry="retry: {max_attempts: 20, backoff: 200ms, max_backoff: 2s}")
    stack.start_receiver()
    stack.start_worker()
    stack.start_worker()
    sender = Sender(stack)
    sender.start(burst(20, every_nth_blocked=1))
    sender.join()
    settlement = settle(stack, sender, org, workspace, kills=0, timeout=120)
    assert settlement.posts == 20 and not settlement.repeats
    assert workspace.ratelimited > 0


def test_a_turn_that_may_not_wait_says_when_the_next_one_comes(redis_conn):
    """An event's job makes its first attempts with turn_wait=0: a post whose turn is not free now is
    deferred (no worker thread sleeps while the job's Salesforce writes wait)."""
    pacer = Pacer(redis_conn, "pace-test")
    assert [pacer.turn("slack:#c", 2, 2, wait_at_most=0.0) for _ in range(2)] == [0.0, 0.0]
    later = [pacer.turn("slack:#c", 2, 2, wait_at_most=0.0) for _ in range(3)]
    assert all(0 < wait <= 2 for wait in later)  # when to come back, each time; no turn taken
    assert pacer.turn("slack:#other", 2, 2, wait_at_most=0.0) == 0.0  # another channel has its own turns

"""The web console's tests' world: real data made by the real receiver and workers against the
emulators (three events, one upsert dead on a bad field), two accounts, and the console app on the
same Runtime; and what a test needs to use its forms (their CSRF tokens)."""

from __future__ import annotations

import re

import pytest

from gu1sync.console import create_console, hash_password
from gu1sync.core.timeutil import utcnow
from gu1sync.storage.console import ConsoleStore
from tests.support.delivery import drain, post, status_changed
from tests.support.emulators.salesforce import malformed

PASSWORD = "correct horse battery staple"


@pytest.fixture
def world(setup, org, redis_conn):
    """Build (config, receiver app, runtime, console app): events for cust-ok, cust-dead (its upsert dead:
    INVALID_FIELD, once) and cust-other, all blocked; accounts `vera` (viewer) and `otto` (operator)."""

    def build(extra: str = ""):
        config, app, ctx = setup(extra=extra)
        org.fail_record("cust-dead", malformed("No such column 'Status__c' on entity 'Contact'", "INVALID_FIELD"))
        for n, external in enumerate(["cust-ok", "cust-dead", "cust-other"]):
            post(app, status_changed(external, "blocked", "active", f"2025-01-08T09:00:0{n}Z"))
        drain(redis_conn)
        consoles = ConsoleStore(ctx.store)
        consoles.add_user("vera", "viewer", hash_password(PASSWORD), utcnow())
        consoles.add_user("otto", "operator", hash_password(PASSWORD), utcnow())
        console = create_console(ctx)
        console.config["TESTING"] = True
        return config, app, ctx, console

    return build


def csrf(page: str) -> str:
    """The CSRF token of the (first) form in a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)

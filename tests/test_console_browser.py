"""The web console in a real browser: Playwright driving a headless Chromium (Debian's `chromium`,
launched from its system path: Playwright's own browser download is not reachable here) against the
console served over real HTTP, on data the real receiver and workers made. An operator signs in, finds
an event by its external id, opens its trace, replays its dead letter after the confirmation and watches
it become done, and runs the simulator. A screenshot of each step is saved in test-artifacts/browser/.

Skipped, saying why, where Playwright or chromium is missing (`make test` installs chromium where it can).
"""

from __future__ import annotations

import shutil
import threading

import pytest
from werkzeug.serving import make_server

from tests.support.console import PASSWORD, world  # noqa: F401 - world is a fixture
from tests.support.delivery import drain, setup, status_changed  # noqa: F401 - setup is a fixture
from tests.support.helpers import ROOT

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright (requirements-dev.txt)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.real_redis,
    pytest.mark.skipif(
        CHROMIUM is None, reason="browser tests need chromium: as root, apt-get install chromium (make test does)"
    ),
]
SHOTS = ROOT / "test-artifacts" / "browser"


@pytest.fixture
def served(world):
    """The console over real HTTP on a free port, in this process (it shares the workers' Runtime)."""
    config, app, ctx, console = world()
    server = make_server("127.0.0.1", 0, console, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", config, app, ctx
    server.shutdown()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        # As root (CI, containers) Chromium's sandbox cannot start; the page is our own console.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_an_operator_finds_an_event_replays_its_dead_letter_and_simulates_a_rule(served, browser, redis_conn):
    base, config, app, ctx = served
    expect = sync_api.expect
    page = browser.new_page()
    page.set_default_timeout(15_000)

    page.goto(base + "/events")  # signed out: to the sign-in page, and back after it
    expect(page).to_have_title("Sign in · gu1-sync console")
    page.get_by_label("Name").fill("otto")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_title("Events · gu1-sync console")
    expect(page.locator('[data-test="user"]')).to_have_text("otto")
    shot(page, "1-events")

    page.get_by_label("Find by id").fill("cust-dead")
    page.get_by_role("button", name="Find").click()
    rows = page.locator('[data-test="events"] tbody tr')
    expect(rows).to_have_count(1)
    assert "cust-dead" not in page.url  # the id went in the form's body, not the address
    rows.first.get_by_role("link").click()
    expect(page).to_have_title("Event · gu1-sync console")
    dead = page.locator('[data-test="action"]').filter(has_text="INVALID_FIELD")
    expect(dead.locator('[data-test="action-status"]')).to_have_text("dead")
    page.get_by_text("Show the raw body").click()
    expect(page.locator('[data-test="raw"]')).to_contain_text('"externalId": "cust-dead"')
    shot(page, "2-trace")

    dead.get_by_role("link", name="Replay this action…").click()
    expect(page.locator('[data-test="confirm-count"]')).to_contain_text("1 dead letter will go again")
    shot(page, "3-confirm")
    page.get_by_role("button", name="Yes, send 1 again").click()
    expect(page.locator('[data-test="running"]')).to_be_visible()
    drain(redis_conn)  # the workers send it (the bad field was fixed meanwhile: the fault was once)
    expect(page.locator('[data-test="finished"]')).to_be_visible(timeout=20_000)  # the page refreshed itself
    expect(page.locator('[data-test="replayed-status"]')).to_have_text("done")
    shot(page, "4-replayed")

    page.get_by_role("link", name="Simulator").click()
    event = status_changed("sim-9", "blocked", "active", "2025-01-08T09:00:00Z").decode()
    page.get_by_label("Event (JSON)").fill(event)
    page.get_by_role("button", name="Simulate").click()
    matched = page.locator('[data-test="simulated"]').filter(has_text="MATCHED · status-to-salesforce")
    expect(matched).to_contain_text('"external_id": "sim-9"')
    expect(page.locator('[data-test="simulated"]').filter(has_text="no · kyc-to-salesforce")).to_be_visible()
    shot(page, "5-simulator")

    page.get_by_role("link", name="Audit").click()
    expect(page.locator('[data-test="audit"]')).to_contain_text("replay")
    shot(page, "6-audit")

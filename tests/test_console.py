"""The web console through Flask's test client: every page, each role, and every refusal (signed out,
wrong role, a missing CSRF token, a locked account, a proxy header from the wrong address), on real
data made by the real receiver and workers against the emulators.

Long because a console is pages times roles times refusals, and each page's test reads best next to
the others'.
"""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from rq import Queue
from rq.serializers import JSONSerializer

from app import create_app
from gu1sync.cli import cli
from gu1sync.core.timeutil import utcnow
from gu1sync.storage import Database, Store
from gu1sync.storage.console import ConsoleStore
from gu1sync.storage.migrations import MIGRATIONS
from gu1sync.storage.retention import purge_older_than
from gu1sync.worker import Gu1Worker
from tests.support.console import PASSWORD, csrf, world  # noqa: F401 - world is a fixture
from tests.support.delivery import ENV, drain, post, setup, status_changed  # noqa: F401 - setup is a fixture
from tests.support.emulators.salesforce import malformed
from tests.support.helpers import ROOT, SECRETS, FakeClock, gu1_headers

pytestmark = [pytest.mark.real_redis, pytest.mark.storage]

PAGES = ["/", "/events", "/failures", "/rules", "/rules/simulate", "/audit"]


def sign_in(client, name: str, password: str = PASSWORD):
    token = csrf(client.get("/sign-in").get_data(as_text=True))
    return client.post("/sign-in", data={"name": name, "password": password, "csrf_token": token, "next": "/"})


def signed_in(console, name: str):
    client = console.test_client()
    assert sign_in(client, name).status_code == 302
    return client


def audit_actions(ctx) -> list[tuple[str, str]]:
    return [(row["user"], row["action"]) for row in reversed(ConsoleStore(ctx.store).audit_log())]


def test_signed_out_every_page_sends_to_sign_in(world):
    config, app, ctx, console = world()
    client = console.test_client()
    for page in [*PAGES, "/events/ev_x", "/failures/confirm?scope=action&id=x", "/replays/1"]:
        answer = client.get(page)
        assert answer.status_code == 302 and answer.location.startswith("/sign-in?next="), page
    assert client.post("/failures/replay", data={}).status_code in (302, 400)
    assert client.get("/static/console.css").status_code == 200


def test_every_page_answers_a_viewer_with_its_security_headers(world):
    config, app, ctx, console = world()
    client = signed_in(console, "vera")
    for page in PAGES:
        answer = client.get(page)
        assert answer.status_code == 200, page
        headers = answer.headers
        assert "script-src" not in headers["Content-Security-Policy"]  # no script at all: default-src 'none'
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        html = answer.get_data(as_text=True)
        assert "<script" not in html and " on" + "click=" not in html  # no inline script
        title = re.search(r"<title>(.*?)</title>", html).group(1)
        assert re.fullmatch(r"[A-Za-z ]+ · gu1-sync console", title), title  # nothing personal in a title
    cookie = client.get_cookie("gu1sync_console")
    assert cookie.http_only and cookie.same_site == "Lax"


def test_the_overview_counts_the_day(world):
    config, app, ctx, console = world()
    html = signed_in(console, "vera").get("/").get_data(as_text=True)
    assert 'data-test="dead">1<' in html
    assert 'http-equiv="refresh"' in html  # it refreshes itself
    assert "entity.status_changed" in html and "salesforce" in html and "slack" in html
    assert config.digest in html


def test_events_filter_page_and_find_by_external_id_in_a_form_body(world, org, redis_conn):
    config, app, ctx, console = world()
    for n in range(60):  # more than a page
        post(app, status_changed(f"bulk-{n}", "under_review", "active", f"2025-01-09T09:{n // 60:02d}:{n % 60:02d}Z"))
    client = signed_in(console, "vera")
    first = client.get("/events").get_data(as_text=True)
    assert first.count('href="/events/ev_') == 50 and 'rel="next"' in first
    older = re.search(r'href="(/events\?after=[^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get(older).get_data(as_text=True)
    assert second.count('href="/events/ev_') == 13 and 'rel="next"' not in second
    only_done = client.get("/events?status=done").get_data(as_text=True)
    assert only_done.count('href="/events/ev_') == 3
    # An external id is personal data: it goes in a POST body, never in an address.
    found = client.post("/events/search", data={"term": "cust-dead", "csrf_token": csrf(first)})
    page = found.get_data(as_text=True)
    assert page.count('href="/events/ev_') == 1 and "cust-dead" in page
    assert "cust-dead" not in found.request.url
    by_entity = client.post("/events/search", data={"term": "id-cust-ok", "csrf_token": csrf(first)})
    assert by_entity.get_data(as_text=True).count('href="/events/ev_') == 1
    none = client.post("/events/search", data={"term": "nobody", "csrf_token": csrf(first)}).get_data(as_text=True)
    assert "No event carries that id" in none


def test_one_event_shows_its_whole_trace(world):
    config, app, ctx, console = world()
    [event_id] = ConsoleStore(ctx.store).find("cust-dead")
    html = signed_in(console, "vera").get(f"/events/{event_id}").get_data(as_text=True)
    assert "status-to-salesforce" in html and "alert-blocked" in html and "kyc-to-salesforce" in html
    assert "on: event &#39;entity.status_changed&#39; is not kyc.validation_approved" in html  # why not
    assert "No such column" in html and "INVALID_FIELD" in html  # the dead action's error
    assert (
        "<details><summary>Show the raw body</summary>" in html and "&#34;externalId&#34;: &#34;cust-dead&#34;" in html
    )
    assert "Replay this action" not in html  # a viewer may not
    assert signed_in(console, "vera").get("/events/ev_nope").status_code == 404


def test_a_viewer_may_not_replay(world):
    config, app, ctx, console = world()
    client = signed_in(console, "vera")
    page = client.get("/failures").get_data(as_text=True)
    assert "INVALID_FIELD" in page and "Replay all" not in page
    assert client.get("/failures/confirm?scope=group&rule=status-to-salesforce&code=INVALID_FIELD").status_code == 403
    answer = client.post(
        "/failures/replay",
        data={"scope": "group", "rule": "status-to-salesforce", "code": "INVALID_FIELD", "csrf_token": csrf(page)},
    )
    assert answer.status_code == 403


def test_an_operator_replays_a_group_after_its_confirmation_and_watches_it(world, org, redis_conn):
    config, app, ctx, console = world()
    client = signed_in(console, "otto")
    failures = client.get("/failures").get_data(as_text=True)
    confirm_url = re.search(r'href="(/failures/confirm\?[^"]+)"', failures).group(1).replace("&amp;", "&")
    confirm = client.get(confirm_url).get_data(as_text=True)
    assert "1 dead letter will go again" in confirm
    values = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))
    # Without its CSRF token the replay is refused, and nothing goes again.
    refused = client.post("/failures/replay", data={k: v for k, v in values.items() if k != "csrf_token"})
    assert refused.status_code == 400 and "security token" in refused.get_data(as_text=True)
    replayed = client.post("/failures/replay", data=values)
    assert replayed.status_code == 302 and replayed.location.startswith("/replays/")
    progress = client.get(replayed.location).get_data(as_text=True)
    assert "Still going" in progress and 'http-equiv="refresh"' in progress
    drain(redis_conn)  # the workers send it; the field was fixed in the meantime (the fault was once)
    done = client.get(replayed.location).get_data(as_text=True)
    assert "Finished." in done and 'data-test="replayed-status">done<' in done
    assert ("otto", "replay") in audit_actions(ctx)
    entry = ConsoleStore(ctx.store).audit_log()[0]
    assert entry["target"] == "group: status-to-salesforce / INVALID_FIELD" and len(entry["detail"]["actions"]) == 1
    audit_page = client.get("/audit").get_data(as_text=True)
    assert "otto" in audit_page and "replay" in audit_page and "1 action(s)" in audit_page


def test_wrong_passwords_lock_the_account_even_to_the_right_one_until_unlocked(world):
    config, app, ctx, console = world()
    client = console.test_client()
    for _ in range(4):
        answer = sign_in(client, "vera", "wrong password!!")
        assert answer.status_code == 401 and "Wrong name or password." in answer.get_data(as_text=True)
    locking = sign_in(client, "vera", "wrong password!!")
    assert "locked for a while" in locking.get_data(as_text=True)
    refused = sign_in(client, "vera")
    assert refused.status_code == 403 and "This account is locked until" in refused.get_data(as_text=True)
    assert sign_in(client, "nobody").status_code == 401  # an unknown name is answered as a wrong password
    actions = audit_actions(ctx)
    assert actions.count(("vera", "sign_in_failed")) == 5 and ("vera", "sign_in_refused") in actions
    unlocked = CliRunner().invoke(cli, ["--config", config.file, "console-user", "unlock", "vera"], env=ENV)
    assert unlocked.exit_code == 0, unlocked.output
    assert sign_in(client, "vera").status_code == 302
    assert ("vera", "sign_in") in audit_actions(ctx)


def test_the_sign_in_form_needs_its_csrf_token(world):
    config, app, ctx, console = world()
    answer = console.test_client().post("/sign-in", data={"name": "vera", "password": PASSWORD})
    assert answer.status_code == 400


def test_sign_out_ends_the_session_and_a_removed_account_is_signed_out(world):
    config, app, ctx, console = world()
    client = signed_in(console, "vera")
    token = csrf(client.get("/").get_data(as_text=True))
    assert client.post("/sign-out", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302
    other = signed_in(console, "otto")
    assert ConsoleStore(ctx.store).remove_user("otto")
    assert other.get("/").status_code == 302  # its next page asks to sign in


def test_a_proxy_header_is_trusted_only_from_the_proxy(world):
    config, app, ctx, console = world(
        extra="console:\n  proxy: {header: X-Forwarded-User, addresses: [10.9.0.0/16], role: viewer}\n"
    )
    from_proxy = console.test_client()
    answer = from_proxy.get("/", headers={"X-Forwarded-User": "otto"}, environ_base={"REMOTE_ADDR": "10.9.1.2"})
    assert answer.status_code == 200 and 'data-test="user">otto<' in answer.get_data(as_text=True)
    assert ">operator<" in answer.get_data(as_text=True)  # an account's own role wins
    stranger = from_proxy.get("/", headers={"X-Forwarded-User": "pat"}, environ_base={"REMOTE_ADDR": "10.9.1.2"})
    assert ">viewer<" in stranger.get_data(as_text=True)
    forged = console.test_client().get(
        "/", headers={"X-Forwarded-User": "otto"}, environ_base={"REMOTE_ADDR": "203.0.113.5"}
    )
    assert forged.status_code == 302  # from anywhere else the header means nothing
    assert ("otto", "sign_in") in audit_actions(ctx)


def test_rules_page_shows_each_rule_as_written_and_how_often_it_matched(world):
    config, app, ctx, console = world()
    html = signed_in(console, "vera").get("/rules").get_data(as_text=True)
    assert "- name: status-to-salesforce" in html and "external_id_field: Gu1_External_Id__c" in html
    assert "Matched 3 event(s) in the last 24 hours" in html  # status-to-salesforce, for each of the three


def test_the_simulator_runs_a_pasted_event_and_an_example(world):
    config, app, ctx, console = world()
    client = signed_in(console, "vera")
    page = client.get("/rules/simulate").get_data(as_text=True)
    event = status_changed("sim-1", "blocked", "active", "2025-01-08T09:00:00Z").decode()
    result = client.post("/rules/simulate", data={"event": event, "csrf_token": csrf(page)}).get_data(as_text=True)
    assert "MATCHED · status-to-salesforce" in result and "MATCHED · alert-blocked" in result
    assert "no · kyc-to-salesforce" in result and "is not kyc.validation_approved" in result
    assert "&#34;external_id&#34;: &#34;sim-1&#34;" in result
    broken = client.post("/rules/simulate", data={"event": "{not json", "csrf_token": csrf(page)})
    assert "Not JSON" in broken.get_data(as_text=True)


def test_console_user_commands(world):
    config, app, ctx, console = world()
    run = CliRunner()
    base = ["--config", config.file, "console-user"]
    added = run.invoke(
        cli, [*base, "add", "ana", "--role", "operator", "--password-stdin"], input=PASSWORD + "\n", env=ENV
    )
    assert added.exit_code == 0 and "added ana (operator)" in added.output
    assert sign_in(console.test_client(), "ana").status_code == 302
    again = run.invoke(
        cli, [*base, "add", "ana", "--role", "viewer", "--password-stdin"], input=PASSWORD + "\n", env=ENV
    )
    assert again.exit_code == 1 and "already an account named 'ana'" in again.output
    short = run.invoke(cli, [*base, "add", "bo", "--role", "viewer", "--password-stdin"], input="short\n", env=ENV)
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    prompted = run.invoke(cli, [*base, "add", "cy", "--role", "viewer"], input=f"{PASSWORD}\n{PASSWORD}\n", env=ENV)
    assert prompted.exit_code == 0, prompted.output
    listed = run.invoke(cli, [*base, "list"], env=ENV).output
    assert "ana  operator" in listed and "cy  viewer  last sign-in never" in listed
    assert PASSWORD not in listed and "scrypt" not in listed
    assert run.invoke(cli, [*base, "remove", "cy"], env=ENV).exit_code == 0
    assert run.invoke(cli, [*base, "remove", "cy"], env=ENV).exit_code == 1
    changed = run.invoke(cli, [*base, "password", "ana", "--password-stdin"], input="another long password\n", env=ENV)
    assert changed.exit_code == 0
    assert sign_in(console.test_client(), "ana").status_code == 401
    assert sign_in(console.test_client(), "ana", "another long password").status_code == 302


def test_a_purged_event_can_no_longer_be_found_and_shows_no_body(world):
    config, app, ctx, console = world()
    [event_id] = ConsoleStore(ctx.store).find("cust-ok")
    purge_older_than(ctx.store, utcnow() + timedelta(seconds=1), now=utcnow())
    assert ConsoleStore(ctx.store).find("cust-ok") == []
    html = signed_in(console, "vera").get(f"/events/{event_id}").get_data(as_text=True)
    assert "its personal data is gone (retention)" in html and "cust-ok" not in html


def test_events_stored_before_the_console_can_be_found(tmp_path):
    """The upgrade that brought the console indexes the ids of the events already stored."""
    database = Database(str(tmp_path / "old.db"))
    for migration in MIGRATIONS[:7]:
        migration(database.db)
    body = b'{"event": "entity.updated", "payload": {"entity": {"id": "e-77", "externalId": "cust-77"}}}'
    database.db.execute(
        "INSERT INTO events (id, dedupe_key, source, kind, environment, received_at, raw, status, subject) "
        "VALUES ('ev_old', 'k', 's', 'gu1', 'production', '2025-01-01T00:00:00Z', ?, 'done', 'e-77')",
        (body,),
    )
    database.db.execute("PRAGMA user_version=7")
    database.migrate()
    consoles = ConsoleStore(Store(database))
    assert consoles.find("cust-77") == ["ev_old"] and consoles.find("e-77") == ["ev_old"]


def test_the_simulator_takes_an_example_from_examples_events(world):
    config, app, ctx, console = world()
    examples = Path(config.base_dir) / "examples" / "events"
    examples.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "events" / "kyc.validation_approved.json", examples)
    client = signed_in(console, "vera")
    page = client.get("/rules/simulate").get_data(as_text=True)
    assert "kyc.validation_approved.json</option>" in page
    result = client.post(
        "/rules/simulate", data={"example": "kyc.validation_approved.json", "csrf_token": csrf(page)}
    ).get_data(as_text=True)
    assert "MATCHED · kyc-to-salesforce" in result and "no · status-to-salesforce" in result
    unknown = client.post("/rules/simulate", data={"example": "../../config.yaml", "csrf_token": csrf(page)})
    assert unknown.status_code == 404  # only the files listed


def listed(page: str) -> list[str]:
    """The ids of the events an events page lists, in its order."""
    return re.findall(r'href="/events/(ev_[^"]+)"', page)


def figure(page: str, label: str) -> str:
    """The figure of an overview tile, by the words after it."""
    match = re.search(rf'<span class="figure">([^<]*)</span> {label}', page)
    assert match, f"no tile '{label}'"
    return match.group(1)


def test_an_operator_replays_one_whole_event_after_its_confirmation(world, org, workspace, redis_conn):
    config, app, ctx, console = world()
    workspace.archived.add("compliance-alerts")  # its alert dies too: two dead letters in one event
    org.fail_record("cust-two", malformed("No such column 'Status__c' on entity 'Contact'", "INVALID_FIELD"))
    event_id = post(app, status_changed("cust-two", "blocked", "active", "2025-01-08T09:00:05Z"))["id"]
    drain(redis_conn)
    workspace.archived.clear()  # both causes fixed
    assert {a["status"] for a in ctx.store.actions(event_id)} == {"dead"}
    client = signed_in(console, "otto")
    confirm = client.get(f"/failures/confirm?scope=event&id={event_id}").get_data(as_text=True)
    assert "2 dead letters will go again (event " + event_id + ")" in confirm
    assert sorted(re.findall(r"<tr><td><code>([^<]+)</code>", confirm)) == sorted(
        a["id"] for a in ctx.store.actions(event_id)
    )
    values = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))
    assert values["scope"] == "event" and values["id"] == event_id
    replayed = client.post("/failures/replay", data=values)
    assert replayed.status_code == 302 and replayed.location.startswith("/replays/")
    drain(redis_conn)
    done = client.get(replayed.location).get_data(as_text=True)
    assert "Finished." in done and done.count('data-test="replayed-status">done<') == 2
    statuses = {a["rule"]: a["status"] for a in ctx.store.actions(event_id)}
    assert statuses == {"status-to-salesforce": "done", "alert-blocked": "done"}
    assert org.upserts_landed("Contact", "Gu1_External_Id__c").get("cust-two") == 1
    [other] = ConsoleStore(ctx.store).find("cust-dead")
    assert [a["status"] for a in ctx.store.actions(other) if a["rule"] == "status-to-salesforce"] == ["dead"]
    entry = ConsoleStore(ctx.store).audit_log()[0]
    assert (entry["user"], entry["action"], entry["target"]) == ("otto", "replay", f"event: {event_id}")
    assert sorted(entry["detail"]["actions"]) == sorted(a["id"] for a in ctx.store.actions(event_id))
    audit_page = client.get("/audit").get_data(as_text=True)
    row = re.search(r"<tr>\s*<td>[^<]*</td><td>otto</td><td>replay</td>.*?</tr>", audit_page, re.S).group(0)
    assert f"event: {event_id}" in row and "2 action(s)" in row


def test_an_operator_is_offered_to_replay_a_whole_event(world):
    config, app, ctx, console = world()
    [event_id] = ConsoleStore(ctx.store).find("cust-dead")
    client = signed_in(console, "otto")
    link = f'href="/failures/confirm?scope=event&amp;id={event_id}"'
    pages = [client.get("/failures").get_data(as_text=True), client.get(f"/events/{event_id}").get_data(as_text=True)]
    assert any(link in page for page in pages)


def test_events_filter_by_type_source_and_time(world, org, redis_conn):
    config, app, ctx, console = world()
    consoles = ConsoleStore(ctx.store)
    world_ids = {found for external in ("cust-ok", "cust-dead", "cust-other") for found in consoles.find(external)}
    assert len(world_ids) == 3
    kyc = (ROOT / "examples" / "events" / "kyc.validation_approved.json").read_bytes()
    kyc_id = post(app, kyc)["id"]
    body = status_changed("cust-sandbox", "blocked", "active", "2025-01-08T09:00:06Z")
    answer = app.test_client().post(
        "/webhooks/gu1-sandbox", data=body, headers=gu1_headers(body, SECRETS["GU1_SANDBOX_SECRET"])
    )
    assert answer.status_code in (200, 202), answer.json
    sandbox_id = answer.json["id"]
    received = utcnow().replace(microsecond=0) - timedelta(days=3)
    late = create_app(config, clock=FakeClock(received))  # received three days ago
    old_id = post(late, status_changed("cust-old", "blocked", "active", "2025-01-05T09:00:00Z"))["id"]
    drain(redis_conn)
    client = signed_in(console, "vera")

    def shown(query: str) -> set[str]:
        page = client.get(f"/events?{query}")
        assert page.status_code == 200
        return set(listed(page.get_data(as_text=True)))

    assert shown("type=kyc.validation_approved") == {kyc_id}
    assert shown("type=entity.status_changed") == world_ids | {sandbox_id, old_id}
    assert shown("source=gu1-sandbox") == {sandbox_id}
    assert shown("source=gu1-prod") == world_ids | {kyc_id, old_id}
    assert shown("source=gu1-prod&type=kyc.validation_approved") == {kyc_id}
    yesterday, two_days_ago = (utcnow() - timedelta(days=1)).date(), (utcnow() - timedelta(days=2)).date()
    assert shown(f"since={yesterday}") == world_ids | {kyc_id, sandbox_id}
    assert shown(f"until={two_days_ago}") == {old_id}
    # As the form sends a date and a time: a minute either side of the old event.
    since, until = (received - timedelta(minutes=1)), (received + timedelta(minutes=1))
    assert shown(f"since={since:%Y-%m-%d %H:%M}&until={until:%Y-%m-%d %H:%M}") == {old_id}
    assert shown(f"since={until:%Y-%m-%d %H:%M}&until={yesterday}") == set()


def test_events_found_by_validation_id_and_by_event_id_in_a_form_body(world):
    config, app, ctx, console = world()
    kyc = (ROOT / "examples" / "events" / "kyc.validation_approved.json").read_bytes()
    kyc_id = post(app, kyc)["id"]
    [ok_id] = ConsoleStore(ctx.store).find("cust-ok")
    client = signed_in(console, "vera")
    token = csrf(client.get("/events").get_data(as_text=True))
    validation = "9b2f6c1e-4d3a-4f5b-8c7d-0e1f2a3b4c5d"  # the example's payload.id
    by_validation = client.post("/events/search", data={"term": validation, "csrf_token": token})
    assert listed(by_validation.get_data(as_text=True)) == [kyc_id]
    assert validation not in by_validation.request.url
    by_event = client.post("/events/search", data={"term": ok_id, "csrf_token": token})
    assert listed(by_event.get_data(as_text=True)) == [ok_id]
    assert ok_id not in by_event.request.url and by_event.request.method == "POST"
    # The filters the search form carries along still apply.
    filtered = client.post(
        "/events/search", data={"term": ok_id, "type": "kyc.validation_approved", "csrf_token": token}
    ).get_data(as_text=True)
    assert listed(filtered) == [] and "No event carries that id" in filtered
    assert client.get(f"/events/search?term={ok_id}").status_code == 404  # no search from an address


def test_rules_page_marks_shadow_and_disabled_rules(world):
    extra = (
        "\n  - name: shadow-alert\n    mode: shadow\n    on: entity.status_changed\n    actions:\n"
        "      - slack.post: {channel: '#onboarding', text: trial}\n"
        "  - name: resting-alert\n    enabled: false\n    on: entity.status_changed\n    actions:\n"
        "      - slack.post: {channel: '#onboarding', text: resting}\n"
    )
    config, app, ctx, console = world(extra=extra)
    html = signed_in(console, "vera").get("/rules").get_data(as_text=True)
    # Each rule's part of the page, by its name.
    articles = {re.search(r"<h2>(\S+)", part).group(1): part for part in html.split("<article")[1:]}
    assert set(articles) == {
        "status-to-salesforce",
        "alert-blocked",
        "kyc-to-salesforce",
        "shadow-alert",
        "resting-alert",
    }
    shadow, resting = articles["shadow-alert"], articles["resting-alert"]
    assert '<span class="status shadow">shadow</span>' in shadow and "disabled</span>" not in shadow
    assert '<span class="status disabled">disabled</span>' in resting and "shadow</span>" not in resting
    assert 'class="rule off"' in resting and 'class="rule off"' not in shadow
    for name in ("status-to-salesforce", "alert-blocked", "kyc-to-salesforce"):
        assert "shadow</span>" not in articles[name] and "disabled</span>" not in articles[name], name
    assert "Matched 3 event(s) in the last 24 hours" in shadow  # shadow rules match; they only never send
    assert "Matched 0 event(s) in the last 24 hours" in resting
    assert "mode: shadow" in shadow and "enabled: false" in resting  # as written


def test_the_overview_counts_retries_waiting_the_oldest_event_and_the_queue(world, workspace, redis_conn):
    config, app, ctx, console = world()
    workspace.fail(r"chat\.postMessage", 503, b"", during=30)
    post(app, status_changed("cust-retry", "blocked", "active", "2025-01-08T09:00:07Z"))
    queue = Queue("test", connection=redis_conn, serializer=JSONSerializer)
    Gu1Worker([queue], connection=redis_conn, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False, logging_level="WARNING"
    )  # one pass, no scheduler: the alert's retry waits
    received = utcnow().replace(microsecond=0) - timedelta(seconds=600)
    late = create_app(config, clock=FakeClock(received))
    post(late, status_changed("cust-late", "blocked", "active", "2025-01-08T09:00:08Z"))  # nobody takes it yet
    post(late, status_changed("cust-later", "blocked", "active", "2025-01-08T09:00:09Z"))
    older = create_app(config, clock=FakeClock(received - timedelta(seconds=300)))
    failed = post(older, status_changed("cust-failed", "blocked", "active", "2025-01-08T09:00:10Z"))["id"]
    ctx.store.claim(failed)
    assert ctx.store.release(failed, "KeyError: 'x'", max_attempts=1) == "failed"  # not counted as waiting
    html = signed_in(console, "vera").get("/").get_data(as_text=True)
    assert figure(html, "retries waiting") == "1"
    assert figure(html, "events failed to process") == "1"
    assert figure(html, "jobs queued") == "3"
    oldest = figure(html, "oldest event waiting")
    assert oldest.endswith(" s") and 600 <= int(oldest[:-2]) < 630, oldest
    assert 'data-test="dead">1<' in html


def test_an_operator_replays_an_event_that_failed_to_process(world, redis_conn):
    config, app, ctx, console = world()
    event_id = post(app, status_changed("cust-failed", "blocked", "active", "2025-01-08T09:00:10Z"))["id"]
    ctx.store.claim(event_id)
    assert ctx.store.release(event_id, "KeyError: 'x'", max_attempts=1) == "failed"
    drain(redis_conn)  # its job finds it failed, and leaves it
    client = signed_in(console, "otto")
    confirm = client.get(f"/failures/confirm?scope=event&id={event_id}").get_data(as_text=True)
    assert "nothing to send again" not in confirm
    values = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))
    replayed = client.post("/failures/replay", data=values)
    assert replayed.status_code == 302
    drain(redis_conn)
    assert ctx.store.event(event_id).status == "done"
    assert {a["status"] for a in ctx.store.actions(event_id)} == {"done"}


def test_the_console_logs_nothing_personal(world, caplog):
    """Pages show names because staff need them; the console's log never does: not the pages served, a
    search, a pasted event in the simulator, a replay, nor a refused form."""
    config, app, ctx, console = world()
    [event_id] = ConsoleStore(ctx.store).find("cust-dead")
    client = signed_in(console, "otto")
    with caplog.at_level("DEBUG"):
        for path in [*PAGES, f"/events/{event_id}", f"/events/{event_id}/raw"]:
            client.get(path)
        page = client.get("/events").get_data(as_text=True)
        client.post("/events/search", data={"term": "cust-dead", "csrf_token": csrf(page)})
        simulator = client.get("/rules/simulate").get_data(as_text=True)
        pasted = status_changed("sim-2", "blocked", "active", "2025-01-08T09:00:00Z").decode()
        shown = client.post("/rules/simulate", data={"event": pasted, "csrf_token": csrf(simulator)})
        assert "Zoë" in shown.get_data(as_text=True)  # the page shows it: the staff need it
        client.post("/rules/simulate", data={"event": pasted})  # refused: no CSRF token
        confirm = client.get(f"/failures/confirm?scope=event&id={event_id}").get_data(as_text=True)
        values = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm))
        assert client.post("/failures/replay", data=values).status_code == 302
    assert caplog.records, "the console logged nothing at all: this test would prove nothing"
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for personal in ("Zoë", "Doe", "<!channel>"):
        assert personal not in logged


def test_a_connector_s_last_failure_shows_even_when_a_retry_made_it_good(world, workspace, redis_conn):
    config, app, ctx, console = world()
    consoles = ConsoleStore(ctx.store)
    since = utcnow() - timedelta(hours=24)
    assert {c["name"]: c["last_failure"] for c in consoles.connectors(since)}["slack"] is None
    workspace.fail(r"chat\.postMessage", 503, b"")  # once: the retry posts it
    event_id = post(app, status_changed("cust-blip", "blocked", "active", "2025-01-08T09:00:11Z"))["id"]
    drain(redis_conn)
    [alert] = [a for a in ctx.store.actions(event_id) if a["type"] == "slack.post"]
    assert (alert["status"], alert["attempts"]) == ("done", 2)
    slack = {c["name"]: c for c in consoles.connectors(since)}["slack"]
    assert slack["last_failure"] is not None and slack["last_failure"] <= slack["last_success"]
    page = signed_in(console, "vera").get("/").get_data(as_text=True)
    assert slack["last_failure"][:19] in page  # the overview shows it


def test_what_an_event_or_a_visitor_may_hold_never_fails_a_page(world):
    """Half an emoji in an event (a lone surrogate, which the receiver accepts), a pasted event nested
    past any limit, ids past SQLite's integers, and a config file changed since it was loaded: each
    page still answers, never a 500."""
    config, app, ctx, console = world()
    half = b'{"event": "entity.status_changed", "timestamp": "2025-01-08T09:00:12Z", "payload": {"status": "blocked",'
    half += (
        b' "previousStatus": "active", "entity": {"id": "id-half", "externalId": "cust-half", "name": "Ana \\ud83d"}}}'
    )
    event_id = post(app, half)["id"]
    client = signed_in(console, "otto")
    page = client.get(f"/events/{event_id}")
    assert page.status_code == 200 and "Ana" in page.get_data(as_text=True)
    simulator = client.get("/rules/simulate").get_data(as_text=True)
    deep = client.post("/rules/simulate", data={"event": "[" * 50_000, "csrf_token": csrf(simulator)})
    assert deep.status_code == 200 and "Not JSON" in deep.get_data(as_text=True)
    assert client.get("/audit?before=99999999999999999999999").status_code == 200
    assert client.get("/replays/99999999999999999999999").status_code == 404
    Path(config.file).write_text("version: 1\n")  # edited since: the page shows the rules in force, as written
    rules = client.get("/rules")
    assert rules.status_code == 200 and "name: status-to-salesforce" in rules.get_data(as_text=True)


def test_a_name_given_with_spaces_around_it_can_sign_in(world):
    config, app, ctx, console = world()
    added = CliRunner().invoke(
        cli,
        ["--config", config.file, "console-user", "add", " bea ", "--role", "viewer", "--password-stdin"],
        input=PASSWORD + "\n",
        env=ENV,
    )
    assert added.exit_code == 0 and "added bea (viewer)" in added.output
    assert sign_in(console.test_client(), "bea").status_code == 302

"""The console's pages: the last 24 hours, events (filtered, or found by an id they carry), one event's
whole trace, failures and replays, rules with the simulator, and the audit log. Viewers read; operators
also replay, after a page that says what will go again."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from redis.exceptions import RedisError

from ..core.body import parse_json
from ..core.status import FINAL_ACTION_STATUSES, ActionStatus, EventStatus
from ..core.timeutil import iso, parse_iso, utcnow
from ..delivery import replay
from ..kinds.gu1 import EVENT_TYPES
from ..simulate import SimulationError, default_source, simulate
from ..storage.console import PAGE
from ..storage.ops import OpsLog
from ..storage.reports import trace
from .app import audit, consoles_of, require, runtime_of

bp = Blueprint("pages", __name__)

SHOWN = 200  # rows of a search, or of a confirmation, shown at most
STATUSES = [status.value for status in EventStatus]


# The overview's tallies of the day read every event and action of it (about 0.2 s on 100,000 events):
# kept for a few seconds, so that many people watching it (it refreshes itself) cost what one does.
TALLY_FOR = 10.0
_tallies_lock = threading.Lock()


def _tally(consoles: Any) -> tuple[dict, list[dict]]:
    kept = current_app.extensions.setdefault("gu1sync_tally", {})  # this app's
    with _tallies_lock:
        if kept and time.monotonic() - kept["at"] < TALLY_FOR:
            return kept["day"], kept["connectors"]
        since = utcnow() - timedelta(hours=24)
        kept.update(at=time.monotonic(), day=consoles.overview(since))
        kept["connectors"] = consoles.connectors(since)
        return kept["day"], kept["connectors"]


@bp.get("/")
@require()
def overview() -> str:
    runtime = runtime_of()
    ops = OpsLog(runtime.store)
    now = utcnow()
    day, connectors = _tally(consoles_of())
    try:
        depth: int | None = runtime.queue.queue.count
    except RedisError:
        depth = None
    oldest = parse_iso(ops.oldest_unfinished() or "")
    return render_template(
        "overview.html",
        day=day,
        dead=ops.count_actions(ActionStatus.DEAD),
        retrying=ops.count_actions(ActionStatus.RETRYING),
        failed_events=ops.failed_events(),
        oldest_age=(now - oldest).total_seconds() if oldest else None,
        depth=depth,
        connectors=connectors,
        api=ops.api_usage(),
        health=ops.health(),
        now=iso(now),
    )


def _filters() -> dict[str, str]:
    return {key: (request.values.get(key) or "").strip() for key in ("type", "source", "status", "since", "until")}


def _time(value: str) -> str | None:
    """A time filter as stored (ISO, UTC), from what a form sends (a date, or a date and time)."""
    if not value:
        return None
    moment = parse_iso(value if "T" in value or len(value) > 10 else value + "T00:00:00Z")
    if moment is None:
        moment = parse_iso(value.replace(" ", "T") + ("" if value.endswith("Z") else "Z"))
    return iso(moment) if moment else None


def _events_page(filters: dict[str, str], *, term: str = "", page: int = PAGE, **query: Any) -> str:
    """The events page: the events the filters (and `query`: a cursor, ids) select, a page of them."""
    rows, more = consoles_of().events(
        type_=filters["type"] or None,
        source=filters["source"] or None,
        status=filters["status"] or None,
        since=_time(filters["since"]),
        until=_time(filters["until"]),
        limit=page,
        **query,
    )
    next_page = None
    if more is not None and "after" in query:  # the listing pages on; a search shows what it found
        next_page = url_for(".events", **{k: v for k, v in filters.items() if v}, after=f"{more[0]}|{more[1]}")
    return render_template(
        "events.html",
        rows=rows,
        filters=filters,
        term=term,
        next_page=next_page,
        sources=list(runtime_of().config.sources),
        types=EVENT_TYPES,
        statuses=STATUSES,
        page=page,
    )


@bp.get("/events")
@require()
def events() -> str:
    after = request.args.get("after")
    cursor = tuple(after.split("|", 1)) if after and "|" in after else None
    return _events_page(_filters(), after=cursor)


@bp.post("/events/search")
@require()
def search() -> str:
    """Events that carry an id (in the form's body: ids may be personal, so never in an address)."""
    term = (request.form.get("term") or "").strip()
    ids = consoles_of().find(term)[:SHOWN] if term else None
    return _events_page(_filters(), term=term, page=SHOWN, ids=ids)


@bp.get("/events/<event_id>")
@require()
def event(event_id: str) -> str:
    runtime = runtime_of()
    data = trace(runtime.store, runtime.actions, event_id)
    if data is None:
        abort(404)
    raw = consoles_of().raw_body(event_id)
    body = None
    if raw:
        try:
            body = json.dumps(parse_json(raw), indent=2, ensure_ascii=False)
        except ValueError:  # not JSON (an invalid event)
            body = raw.decode("utf-8", "replace")
    return render_template("event.html", data=data, body=body, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# -- failures and replays ------------------------------------------------------------------------------


@bp.get("/failures")
@require()
def failures() -> str:
    return render_template("failures.html", groups=consoles_of().dead_groups())


def _reprocessed(scope: str, target: str) -> bool:
    """Whether a replay of this scope processes its event again as a whole: one that failed to be
    processed (it has no dead letters of its own; `gu1-sync replay EVENT_ID` queues it again too)."""
    if scope != "event":
        return False
    event = runtime_of().store.event(target)
    return event is not None and event.status == EventStatus.FAILED


def _chosen() -> tuple[str, str, list[dict]]:
    """(scope, what it names, the dead letters it takes) from a confirmation's or a replay's values."""
    scope = request.values.get("scope", "")
    consoles = consoles_of()
    if scope == "action":
        action_id = request.values.get("id", "")
        action = runtime_of().actions.get(action_id)
        dead = [] if action is None or action.status != ActionStatus.DEAD else [vars(action)]
        return scope, action_id, dead
    if scope == "event":
        event_id = request.values.get("id", "")
        return scope, event_id, consoles.dead_of_event(event_id)
    if scope == "group":
        rule, code = request.values.get("rule", ""), request.values.get("code", "")
        return scope, f"{rule} / {code}", consoles.dead_in_group(rule, code)
    abort(404)


@bp.get("/failures/confirm")
@require("operator")
def confirm() -> str:
    scope, target, dead = _chosen()
    return render_template(
        "confirm.html",
        scope=scope,
        target=target,
        dead=dead[:SHOWN],
        count=len(dead),
        reprocess=_reprocessed(scope, target),
        values=request.args,
    )


@bp.post("/failures/replay")
@require("operator")
def replay_now() -> Any:
    scope, target, dead = _chosen()
    if not dead and not _reprocessed(scope, target):
        return render_template(
            "error.html", title="Nothing to replay", message="None of these is a dead letter any more."
        ), 409
    runtime = runtime_of()
    ids = [row["id"] for row in dead]
    if scope == "event":
        lines = replay(runtime, event_id=target)
    else:
        lines = [line for action_id in ids for line in replay(runtime, action_id=action_id)]
    entry = audit(
        "replay", target=f"{scope}: {target}", detail={"scope": scope, "actions": ids, "lines": lines[:SHOWN]}
    )
    return redirect(url_for(".replay_progress", entry=entry))


@bp.get("/replays/<int(max=9223372036854775807):entry>")
@require()
def replay_progress(entry: int) -> str:
    found = consoles_of().audit_entry(entry)
    if found is None or found["action"] != "replay":
        abort(404)
    ids = (found["detail"] or {}).get("actions", [])
    statuses = consoles_of().action_statuses(ids)
    counts: dict[str, int] = {}
    for row in statuses:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    running = any(ActionStatus(row["status"]) not in FINAL_ACTION_STATUSES for row in statuses)
    return render_template("replay.html", entry=found, statuses=statuses, counts=counts, running=running)


# -- rules and the simulator ---------------------------------------------------------------------------


def _rule_source(index: int) -> str:
    """The rule as written in the config in force: its lines, comments and all (the text that config was
    read from, not the file as it may have changed since)."""
    config = runtime_of().config
    line, column = config.document.position(("rules", index))
    lines = config.document.text.splitlines()
    if line is None or column is None or not 0 < line <= len(lines):
        return ""
    out = [lines[line - 1]]
    for text in lines[line:]:
        if text.strip() and len(text) - len(text.lstrip()) < column - 1:
            break
        out.append(text)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


@bp.get("/rules")
@require()
def rules() -> str:
    runtime = runtime_of()
    now = utcnow()
    day = consoles_of().matches_since(now - timedelta(days=1))
    week = consoles_of().matches_since(now - timedelta(days=7))
    shown = [
        {"rule": rule, "source": _rule_source(n), "day": day.get(rule.name, 0), "week": week.get(rule.name, 0)}
        for n, rule in enumerate(runtime.config.rules)
    ]
    return render_template("rules.html", rules=shown)


def _examples() -> dict[str, Path]:
    folder = Path(runtime_of().config.base_dir) / "examples" / "events"
    return {path.name: path for path in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


@bp.route("/rules/simulate", methods=["GET", "POST"])
@require()
def simulator() -> Any:
    config = runtime_of().config
    examples = _examples()
    source = request.form.get("source") or default_source(config)
    text = request.form.get("event") or ""
    example = request.form.get("example") or ""
    results, error, event = None, None, None
    if request.method == "POST":
        if example and not text.strip():
            if example not in examples:
                abort(404)
            text = examples[example].read_text(encoding="utf-8")
        try:
            document = parse_json(text.encode("utf-8", "surrogatepass"))
            event, results = simulate(config, document, source)
        except ValueError as exc:
            error = f"Not JSON: {exc}"
        except SimulationError as exc:
            error = str(exc)
    return render_template(
        "simulate.html",
        sources=list(config.sources),
        source=source,
        examples=list(examples),
        example=example,
        text=text,
        results=results,
        event=event,
        error=error,
        dumps=_dumps,
    )


@bp.get("/audit")
@require()
def audit_log() -> str:
    before = request.args.get("before", type=int)
    if before is not None and not 0 < before < 2**62:
        before = None  # no such entry: the newest page
    rows = consoles_of().audit_log(before=before)
    older = url_for(".audit_log", before=rows[-1]["id"]) if len(rows) == 100 else None
    return render_template("audit.html", rows=rows, older=older)

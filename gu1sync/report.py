"""How the operator commands show what they found: recent events, one event's whole trace, dead
letters, statistics, as text for the terminal or JSON (the data comes from gu1sync.storage)."""

from __future__ import annotations

import json
from typing import Any

from .core.status import ActionStatus


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain text table: (key, heading) columns, widths to fit."""
    if not rows:
        return "(none)"
    cells = [[str(row.get(key) if row.get(key) is not None else "-") for key, _ in columns] for row in rows]
    widths = [max(len(heading), *(len(c[i]) for c in cells)) for i, (_, heading) in enumerate(columns)]
    lines = ["  ".join(heading.ljust(w) for (_, heading), w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    return "\n".join(lines)


def format_events(rows: list[dict]) -> str:
    return _table(
        rows,
        [
            ("received_at", "RECEIVED"),
            ("id", "EVENT"),
            ("source", "SOURCE"),
            ("type", "TYPE"),
            ("status", "STATUS"),
            ("matched", "RULES"),
            ("actions", "ACTIONS"),
            ("deliveries", "DELIVERIES"),
        ],
    )


def format_trace(data: dict) -> str:
    event = data["event"]
    deliveries = data["deliveries"]
    duplicates = sum(d["duplicate"] for d in deliveries)
    lines = [
        f"event     {event['id']}",
        f"type      {event['type'] or '(unreadable: ' + str(event['error']) + ')'}",
        f"source    {event['source']} ({event['environment']}, kind {event['kind']})",
        f"occurred  {event['occurred_at'] or '-'}",
        f"received  {event['received_at']}, verified by the secret in ${event['secret']}",
        f"delivered {len(deliveries)} time(s)"
        + (f", {duplicates} of them duplicate(s) (answered 200, processed nowhere)" if duplicates else ""),
    ]
    for delivery in deliveries:
        flag = "duplicate" if delivery["duplicate"] else "first"
        lines.append(f"          {delivery['received_at']}  {flag:9}  secret ${delivery['secret']}")
    lines.append(
        f"status    {event['status']}"
        + (f", {event['outcome']}" if event["outcome"] else "")
        + (f", config version {event['config_version']}" if event["config_version"] else "")
        + (f" ({event['error']})" if event["error"] else "")
    )
    if event.get("purged_at"):
        lines.append(
            f"purged    {event['purged_at']}: its body, the rules' reasons, the action requests and the error "
            "texts were removed (retention)"
        )
    lines += ["", "rules"]
    for rule in data["rules"]:
        if rule["matched"]:
            mode = " (shadow)" if rule["mode"] == "shadow" else ""
            key = f", throttle key {rule['throttle_key']!r}" if rule["throttle_key"] else ""
            lines.append(f"  matched  {rule['rule']}{mode}{key}" + (f": {rule['error']}" if rule["error"] else ""))
        else:
            lines.append(f"  no       {rule['rule']}: {rule['reason'] or '-'}")
    if not data["rules"]:
        lines.append("  (not evaluated yet)")
    lines += ["", "actions"]
    for action in data["actions"]:
        lines.append(
            f"  {action['id']}  {action['rule']} #{action['action_index']} {action['type']}: {action['status']}"
            + (f", {action['attempts']} attempt(s)" if action["attempts"] else "")
        )
        if action["result"]:
            lines.append(f"      result   {action['result']}")
        if action["error"]:
            lines.append(f"      error    {action['error']}")
        if action["next_attempt_at"] and action["status"] == ActionStatus.RETRYING:
            lines.append(f"      next     {action['next_attempt_at']}")
        request = json.dumps(action["params"], ensure_ascii=False, indent=2, default=str).splitlines()
        lines.append("      request  " + request[0])
        lines += ["               " + line for line in request[1:]]
        for attempt in action["attempt_log"]:
            lines.append(
                f"      #{attempt['attempt']}  {attempt['started_at']}  {attempt['outcome']:11}"
                f" {attempt['status_code'] or '-':>4}  {attempt['duration_ms'] or 0:>7.0f} ms"
                + (f"  {attempt['error']}" if attempt["error"] else "")
                + (f"  (next at {attempt['retry_at']})" if attempt["retry_at"] else "")
            )
    if not data["actions"]:
        lines.append("  (none)")
    return "\n".join(lines)


def format_failed(rows: list[dict]) -> str:
    return _table(
        rows,
        [
            ("updated_at", "WHEN"),
            ("id", "ACTION"),
            ("event_id", "EVENT"),
            ("rule", "RULE"),
            ("type", "TYPE"),
            ("attempts", "ATTEMPTS"),
            ("error", "LAST ERROR"),
        ],
    )


def format_alerts(rows: list[dict]) -> str:
    return _table(
        rows,
        [
            ("created_at", "WHEN"),
            ("kind", "KIND"),
            ("key", "ABOUT"),
            ("state", "STATE"),
            ("delivery", "DELIVERY"),
            ("title", "WHAT"),
        ],
    )


def format_stats(stats: dict[str, list[dict]]) -> str:
    columns = [
        ("total", "TOTAL"),
        ("succeeded", "OK"),
        ("failed", "FAILED"),
        ("in_flight", "IN FLIGHT"),
        ("not_sent", "NOT SENT"),
        ("last_success", "LAST SUCCESS"),
        ("last_failure", "LAST FAILURE"),
    ]
    lines = [
        "by rule",
        _table(stats["rules"], [("name", "RULE"), *columns]),
        "",
        "by connector",
        _table(stats["connectors"], [("name", "CONNECTOR"), *columns]),
    ]
    if stats.get("api"):
        rows = [{**row, "usage": _usage(row)} for row in stats["api"]]
        lines += [
            "",
            "calls and API usage",
            _table(
                rows,
                [
                    ("connector", "CONNECTOR"),
                    ("calls", "CALLS"),
                    ("usage", "API USAGE (LAST ANSWER)"),
                    ("api_at", "AS OF"),
                ],
            ),
        ]
    return "\n".join(lines)


def _usage(row: dict) -> str:
    """`12,401 of 15,000 (83%) today`, or `-` when the service reports none."""
    used, limit = row.get("api_used"), row.get("api_limit")
    if used is None or not limit:
        return "-"
    return f"{used:,} of {limit:,} ({used / limit:.0%}) in the last 24 h"


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)

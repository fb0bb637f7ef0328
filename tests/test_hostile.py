"""Hostile input: whatever arrives, never a 5xx, never a traceback, always the documented answer.

- The receiver through Flask's test client: random methods, paths, headers, bodies, encodings, sizes and
  content types; above all bodies that are correctly signed but hostile, since unsigned garbage stops at
  the signature. Every answer is JSON in the documented shape with the documented status for its class of
  input, nothing goes wrong inside (no error logged, no body logged), and a 2xx is a stored event.
- The real server (gunicorn, as `serve` runs it) fed malformed HTTP over raw sockets: 4xx or a clean close.
- Templates: sandbox escapes and runaway templates are refused when the config loads or when rendering.
- YAML: alias and merge bombs, absurd nesting and oversized files are refused, naming the place.

No test here times itself: runaway work is bounded by the product's own counts (the sandbox's sizes and
loop items, the loader's values and depth), whose messages the tests assert. pytest-timeout (120 s a test,
pyproject.toml) only catches a hang, far above any honest run, which takes milliseconds.

The property tests run a fixed set of examples (derandomized, so CI is reproducible and quick);
GU1_SYNC_LONG=1 runs fifty times as many, random ones: `GU1_SYNC_LONG=1 .venv/bin/pytest tests/test_hostile.py`.

Long because each generator of hostile input sits next to the model of the README its answers are
checked against; apart, a reader could not tell which promise a test holds the receiver to.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import hmac
import http.client
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gu1sync import samples
from gu1sync.config import load_config, parse_config
from gu1sync.core.body import MAX_DEPTH as JSON_DEPTH
from gu1sync.core.status import EventStatus
from gu1sync.core.templates import Template, TemplateError
from gu1sync.core.yamlfile import MAX_BYTES, MAX_VALUES, ConfigError
from gu1sync.core.yamlfile import MAX_DEPTH as YAML_DEPTH
from gu1sync.simulate import load_config_tests, simulate
from tests.support.helpers import ROOT, SECRETS, config_text, dumps, free_port, gu1_headers, kyc_headers, std_headers

INVALID, RECEIVED = EventStatus.INVALID, EventStatus.RECEIVED

LONG = os.environ.get("GU1_SYNC_LONG") == "1"
if LONG:  # fifty times the examples take longer than the suite's two minutes per test
    pytestmark = pytest.mark.timeout(3600)
LIMIT = 1024 * 1024  # receiver.max_body_bytes of the test config


def fuzz(examples: int) -> settings:
    """A property test's settings: `examples` fixed examples in CI, fifty times as many random ones in a long run."""
    return settings(
        max_examples=examples * 50 if LONG else examples,
        derandomize=not LONG,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # one app per test, shared by its examples, on purpose
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        **({} if LONG else {"database": None}),
    )


# -- what the README documents --------------------------------------------------------------------------

REASONS = {
    # bad_request: a body that cannot be read (it ends before its Content-Length, or its chunks are broken).
    400: {"invalid_json", "not_an_object", "missing_event_type", "event_header_mismatch", "bad_request"},
    401: {
        "missing_signature",
        "malformed_signature",
        "signature_mismatch",
        "missing_timestamp",
        "malformed_timestamp",
        "timestamp_out_of_tolerance",
        "missing_id",
        "malformed_id",
    },
    404: {"unknown_source", "not_found"},
    405: {"method_not_allowed"},
    413: {"payload_too_large"},
}
KINDS = {"gu1-prod": "gu1", "kyc": "kyc-webhooks", "kyc-ts": "kyc-webhooks", "std": "standard"}
TYPE_FIELD = {"gu1": "event", "kyc-webhooks": "type", "standard": "type"}
PAYLOAD_FIELD = {"gu1": "payload", "kyc-webhooks": "data", "standard": "data"}
TOLERANCE = 300
GOOD = 'version: 1\nsources:\n  gu1-prod:\n    kind: gu1\n    environment: production\n    secrets: ["${GU1_SECRET}"]\n'
SENTINEL = "Zoë Sentinel-7Q4"  # in generated payloads: bodies are never logged, so no log line may show it


def post(client, source: str, body: bytes, headers):
    """POST exactly `body` (given as data, the test client would make its own form body for a form content type)."""
    environ = {"CONTENT_LENGTH": str(len(body))}
    return client.post(f"/webhooks/{source}", input_stream=io.BytesIO(body), headers=headers, environ_overrides=environ)


def std_signed(body: bytes, msg_id: str, timestamp: int) -> dict[str, str]:
    """Standard Webhooks headers: the reference library signs text only, other bytes the same way by hand."""
    try:
        return std_headers(body, msg_id, timestamp)
    except UnicodeDecodeError:
        key = base64.b64decode(SECRETS["STD_SECRET"].removeprefix("whsec_"))
        digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        signature = "v1," + base64.b64encode(digest).decode()
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def signed(source: str, body: bytes, now: int, msg_id: str = "msg_hostile") -> dict[str, str]:
    """The headers its sender would send with `body`, from the helpers (written from the senders' docs)."""
    if source == "gu1-prod":
        return gu1_headers(body)
    if source in ("kyc", "kyc-ts"):
        return kyc_headers(body, now, signed="ts" if source == "kyc-ts" else "body")
    return std_signed(body, msg_id, now)


def nesting(value: object) -> int:
    """How many lists and objects deep `value` goes."""
    depth, level = 0, [value]
    while any(isinstance(v, dict | list) for v in level):
        depth += 1
        level = [c for v in level if isinstance(v, dict) for c in v.values()] + [
            c for v in level if isinstance(v, list) for c in v
        ]
    return depth


def mended(text: str) -> str:
    """Text as the README says it is kept: a surrogate without its other half becomes U+FFFD."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def expected_answer(source: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
    """The README's answer to a correctly signed `body`: (413 | 400, reason), or (202, None) for "accepted"."""
    if len(body) > LIMIT:
        return 413, "payload_too_large"
    try:
        document = json.loads(body)  # Python's own reading of JSON: UTF-8, -16 or -32, a BOM allowed
    except (ValueError, RecursionError):
        return 400, "invalid_json"
    if nesting(document) > JSON_DEPTH:
        return 400, "invalid_json"
    if not isinstance(document, dict):
        return 400, "not_an_object"
    kind = KINDS[source]
    event = document.get(TYPE_FIELD[kind])
    if not isinstance(event, str) or not event.strip():
        return 400, "missing_event_type"
    announced = headers.get("X-Webhook-Event", "").strip()
    if kind == "gu1" and announced and announced != mended(event).strip():
        return 400, "event_header_mismatch"
    return 202, None


def answer_of(response) -> dict:
    """The JSON of an answer, after the checks every answer passes: no 5xx, no traceback, the documented shape."""
    assert response.status_code < 500, (response.status_code, response.get_data()[:300])
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert response.mimetype == "application/json", (response.status_code, response.mimetype, text[:200])
    answer = json.loads(text)
    if response.status_code >= 400:
        assert set(answer) - {"id"} == {"error", "message"}, answer
        assert answer["error"] in REASONS[response.status_code], answer
    return answer


def check_kept(services, response, body: bytes) -> dict:
    """A 2xx is an event stored and readable (and encodable: nothing unstorable got through); a 400 keeps the body."""
    answer = answer_of(response)
    if response.status_code in (200, 202):
        assert set(answer) == {"id", "duplicate"} and answer["duplicate"] is (response.status_code == 200)
        event = services.store.event(answer["id"])
        assert event is not None, "answered 2xx, but nothing is stored"
        if response.status_code == 202:
            assert (event.raw, event.status) == (body, RECEIVED)
        json.dumps(event.to_dict(), ensure_ascii=False).encode("utf-8")
    elif "id" in answer:
        assert response.status_code == 400
        kept = services.store.event(answer["id"])
        assert (kept.status, kept.error, kept.raw) == (INVALID, answer["error"], body)
    return answer


def assert_quiet(caplog) -> None:
    """Nothing went wrong inside: no error or traceback logged, and no body either."""
    bad = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert bad == []
    assert "Traceback" not in caplog.text
    assert SENTINEL not in caplog.text


# -- strategies -----------------------------------------------------------------------------------------

ODD_TEXT = [
    "",
    " ",
    "\t\r\n",
    "\x00",
    "\ud83d",  # half an emoji: escaped or raw, depending on how the body is encoded
    "x\udc00",
    "\ud83d\ude00",
    "😀",
    "\ufeff",
    "\u202eevil",
    "NaN",
    "null",
    "%s%n%x",
    "{{ 7 * 7 }}",
    "${HOME}",
    "é" * 300,
    "a" * 5000,
]
TEXT = st.text(max_size=12) | st.sampled_from(ODD_TEXT)
SCALARS = st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | TEXT  # NaN and ±Infinity too
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=10
)
EVENT_TYPES = samples.KNOWN_EVENTS + samples.FUTURE_EVENTS
LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")  # what HTTP can carry
HEADER_VALUES = st.text(LATIN1, max_size=40) | st.sampled_from(["", " ", "0" * 64, "sha256=", "v1,", "é" * 30])
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "application/json; charset=\xff",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "",
        ";;;",
    ]
) | st.text(LATIN1, max_size=30)
JUNK_HEADERS = st.dictionaries(
    st.sampled_from(["X-Forwarded-For", "Cookie", "Authorization", "Content-Encoding", "X-Webhook-ID", "Accept"]),
    HEADER_VALUES,
    max_size=3,
)
MSG_IDS = st.text(LATIN1, min_size=1, max_size=30).map(str.strip).filter(bool) | st.just("msg_2b4c")


def _utf16_be_with_bom(text: str) -> bytes:
    return codecs.BOM_UTF16_BE + text.encode("utf-16-be", "surrogatepass")


ENCODERS = [
    lambda text: text.encode("utf-8", "surrogatepass"),  # raw surrogates become CESU-8 bytes
    lambda text: text.encode("utf-8-sig", "surrogatepass"),
    lambda text: text.encode("utf-16", "surrogatepass"),  # with a BOM
    lambda text: text.encode("utf-16-le", "surrogatepass"),
    _utf16_be_with_bom,
    lambda text: text.encode("utf-16-be", "surrogatepass"),
    lambda text: text.encode("utf-32", "surrogatepass"),
    lambda text: text.encode("utf-32-be", "surrogatepass"),
]


@st.composite
def documents(draw, kind: str) -> object:
    """A JSON document for a source of `kind`: mostly envelope-shaped, with odd values anywhere."""
    shape = draw(st.sampled_from(["sample", "envelope", "anything"]))
    if shape == "anything":
        return draw(VALUES)
    type_field, payload_field = TYPE_FIELD[kind], PAYLOAD_FIELD[kind]
    envelope: dict = {}
    if shape == "sample":
        gu1 = samples.sample(
            draw(st.sampled_from(EVENT_TYPES)),
            generation=draw(st.sampled_from(samples.GENERATIONS)),
            seed=draw(st.integers(0, 10**6)),
        )
        gu1["payload"]["note"] = SENTINEL
        envelope = gu1 if kind == "gu1" else {"id": draw(TEXT), "type": gu1["event"], "data": gu1["payload"]}
    envelope.setdefault(type_field, draw(st.sampled_from(EVENT_TYPES) | TEXT))
    keys = st.sampled_from([type_field, payload_field, "timestamp", "created", "id", "organizationId"]) | TEXT
    envelope.update(draw(st.dictionaries(keys, VALUES | st.sampled_from(EVENT_TYPES), max_size=3)))
    return envelope


@st.composite
def encoded(draw, document: object) -> bytes:
    """`document` as JSON text (escaped or raw non-ASCII, any indentation) in UTF-8, -16 or -32."""
    text = json.dumps(document, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 2, "\t"])))
    return draw(st.sampled_from(ENCODERS))(text)


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"event":"entity.created","payload":' + b"[" * depth + inner + b"]" * depth + b"}"


def duplicate_keys(kind: str, first: str, second: str) -> bytes:
    field = TYPE_FIELD[kind]
    return f'{{"{field}": {json.dumps(first)}, "x": 1, "{field}": {json.dumps(second)}, "x": [2]}}'.encode()


def bodies(kind: str) -> st.SearchStrategy[bytes]:
    """Hostile bodies for a source of `kind`."""
    depths = st.sampled_from([JSON_DEPTH - 2, JSON_DEPTH - 1, JSON_DEPTH, JSON_DEPTH + 1, 990, 5000, 100_000])
    return st.one_of(
        documents(kind).flatmap(encoded),
        documents(kind).flatmap(encoded),
        st.binary(max_size=200),
        st.builds(nested, depths) | st.builds(nested, depths, st.just(b'"\\ud83d"')),
        st.builds(duplicate_keys, st.just(kind), st.sampled_from(EVENT_TYPES), TEXT),
        st.sampled_from(
            [
                b"",
                b"\xef\xbb\xbf",
                b"\xff\xfe",
                b"null",
                b"[]",
                b'"x"',
                b"NaN",
                b"-Infinity",
                b"1e999",
                b"{}",
                b'{"event": "x", "type": "x", "payload": {"n": ' + b"9" * 4301 + b"}}",
                b'{"event": "x", "type": "x", "created": 1e999, "timestamp": -1e999, "data": {"n": -0.0}}',
                b'{"event": "x", "type": "x", "created": NaN, "timestamp": "9999-99-99T99:99:99Z"}',
                b'{"event": "x", "type": "x", "created": 9999999999999999999, "timestamp": "0001-01-01T00:00+14:00"}',
                b'{"event": "x\xed\xa0\xbd", "type": "x\xed\xa0\xbd", "data": {"id": "\xed\xb0\x80"}}',
                b'{"event": "x", "type": "x"}' + b" " * 1000 + b"\x00",
                b'{"event": "x", "type": "x", "payload": "\\u0000\\ud800\\udbff\\udfff"}',
            ]
        ),
    )


# -- the receiver, through the test client --------------------------------------------------------------


@fuzz(1000)
@given(data=st.data())
def test_signed_hostile_bodies_get_the_documented_answer(client, services, clock, caplog, data):
    """The case that matters: authentic senders (or a stolen secret) sending anything at all."""
    caplog.set_level(logging.INFO)
    source = data.draw(st.sampled_from(sorted(KINDS)), label="source")
    body = data.draw(bodies(KINDS[source]), label="body")
    headers = signed(source, body, int(clock().timestamp()), data.draw(MSG_IDS, label="msg_id"))
    headers["Content-Type"] = data.draw(CONTENT_TYPES, label="content type")
    headers.update(data.draw(JUNK_HEADERS, label="other headers"))
    if source == "gu1-prod" and data.draw(st.booleans(), label="X-Webhook-Event"):
        headers["X-Webhook-Event"] = data.draw(st.sampled_from(EVENT_TYPES) | HEADER_VALUES)
    caplog.clear()
    response = post(client, source, body, headers)
    status, reason = expected_answer(source, body, headers)
    answer = check_kept(services, response, body)
    event(
        f"{response.status_code} {answer.get('error', '')}"
    )  # what the examples covered: --hypothesis-show-statistics
    if status == 202:
        assert response.status_code in (200, 202), answer
    else:
        assert (response.status_code, answer["error"]) == (status, reason)
    assert_quiet(caplog)


VERIFYING = {
    "gu1": ["X-Webhook-Signature"],
    "kyc-webhooks": ["X-Webhook-Signature", "X-Webhook-Timestamp"],
    "standard": ["webhook-id", "webhook-timestamp", "webhook-signature"],
}


def _signature_well_formed(kind: str, value: str) -> bool:
    if kind != "standard":
        return re.fullmatch(r"(?:sha256=)?[0-9a-f]{64}", value, re.IGNORECASE) is not None
    for entry in value.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and signature:
            try:
                base64.b64decode(signature, validate=True)
                return True
            except ValueError:
                continue
    return False


def _reason_is_true(kind: str, reason: str, sent: dict[str, str], now: int) -> bool:
    """Whether a 401's reason says something true of the headers as they arrived (whatever order they are checked in).

    A header given twice arrives as one, its values joined by a comma: WSGI has one value per name.
    """
    name = {"signature": VERIFYING[kind][-1 if kind == "standard" else 0], "id": "webhook-id"}
    name["timestamp"] = "webhook-timestamp" if kind == "standard" else "X-Webhook-Timestamp"
    problem, _, what = reason.partition("_")
    value = sent.get(name.get(what, ""), "").strip()
    if problem == "missing":
        return not value
    if problem == "malformed":
        if what == "signature":
            return not _signature_well_formed(kind, value)
        return what == "timestamp" and re.fullmatch(r"\d{1,15}", value) is None
    stamp = sent.get(name["timestamp"], "").strip()
    if reason == "timestamp_out_of_tolerance":
        return abs(int(stamp) - now) > TOLERANCE
    assert reason == "signature_mismatch"
    return _all_well_formed(kind, sent, now)


def _all_well_formed(kind: str, sent: dict[str, str], now: int) -> bool:
    """Every verifying header arrived, well formed, its timestamp within tolerance: only the signature can be wrong."""
    if not all(sent.get(header, "").strip() for header in VERIFYING[kind]):
        return False
    stamp = sent.get("webhook-timestamp" if kind == "standard" else "X-Webhook-Timestamp", "0").strip()
    in_time = kind == "gu1" or abs(int(stamp) - now) <= TOLERANCE
    return in_time and _signature_well_formed(kind, sent[VERIFYING[kind][-1 if kind == "standard" else 0]].strip())


@st.composite
def header_sets(draw, kind: str, good: dict[str, str], now: int) -> list[tuple[str, str]]:
    """The verifying headers of `kind`, each absent, right, repeated, garbled or out of tolerance."""
    headers = []
    for name in VERIFYING[kind]:
        variants = [[], [good[name]], [good[name], good[name]], [draw(HEADER_VALUES)], [good[name].upper()]]
        if "imestamp" in name:
            off = draw(st.sampled_from([TOLERANCE, TOLERANCE + 1, -TOLERANCE - 1, 10**9]))
            variants += [[str(now + off)], [f" {now} "], ["-1"], ["9" * 16], [f"{now}.5"], ["¹²³"]]
        if "ignature" in name:
            variants += [["sha256=" + "0" * 64], ["v1,AAAA v2,zz"], [good[name][:-2]], [" " + good[name]]]
        spelling = draw(st.sampled_from([name, name.lower(), name.upper()]))
        headers += [(spelling, value) for value in draw(st.sampled_from(variants))]
    return headers


@fuzz(500)
@given(data=st.data())
def test_forged_or_garbled_signature_headers_are_401_with_a_true_reason(client, services, clock, caplog, data):
    caplog.set_level(logging.INFO)
    source = data.draw(st.sampled_from(sorted(KINDS)), label="source")
    kind, now = KINDS[source], int(clock().timestamp())
    body = data.draw(documents(kind).flatmap(encoded) | st.binary(max_size=64), label="body")
    headers = data.draw(header_sets(kind, signed(source, body, now), now), label="headers")
    caplog.clear()
    response = post(client, source, body, headers)
    answer = check_kept(services, response, body)
    sent: dict[str, str] = {}
    for name, value in headers:
        canonical = next(h for h in VERIFYING[kind] if h.lower() == name.lower())
        sent[canonical] = f"{sent[canonical]}, {value}" if canonical in sent else value
    event(f"{response.status_code} {answer.get('error', '')}")
    if response.status_code == 401:
        assert _reason_is_true(kind, answer["error"], sent, now), (answer, sent)
    else:  # all arrived right (give or take case, spacing, or a second copy of a Standard Webhooks signature)
        assert _all_well_formed(kind, sent, now), sent
        assert response.status_code in (200, 202, 400), answer
    assert_quiet(caplog)


ROUTES = ["webhooks", "healthz", "gu1-prod", "std", "nope", "", "..", "%00", "%ff", "a%2Fb", "é", "x" * 300]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "BREW"]


def _expected_route(method: str, path: str) -> tuple[set[int], set[str]]:
    """The statuses and reasons the README allows for `method` on `path` (no signature, so a webhook is a 401)."""
    parts = path.split("/")[1:]
    if path == "/healthz":
        return ({200}, set()) if method in ("GET", "HEAD") else ({405}, {"method_not_allowed"})
    if "//" in path and method != "POST":  # werkzeug merges the slashes to tell a 405 from a 404; either is fine
        return {404, 405}, {"not_found", "method_not_allowed"}
    if len(parts) == 2 and parts[0] == "webhooks" and parts[1] and "%2F" not in parts[1]:
        if method != "POST":
            return {405}, {"method_not_allowed"}
        if parts[1] in KINDS:
            return {401}, {"missing_signature", "missing_timestamp", "missing_id"}
        return {404}, {"unknown_source", "not_found"}  # not_found: a name werkzeug decodes to something with a /
    return {404}, {"not_found"}


@fuzz(200)
@given(
    method=st.sampled_from(METHODS) | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12),
    parts=st.tuples(st.sampled_from([r for r in ROUTES if r]), st.lists(st.sampled_from(ROUTES), max_size=3)).map(
        lambda p: [p[0], *p[1]]
    ),
    body=st.binary(max_size=64),
)
def test_any_method_on_any_path_gets_json_with_the_documented_status(client, caplog, method, parts, body):
    caplog.set_level(logging.INFO)
    caplog.clear()
    path = "/" + "/".join(parts)
    response = client.open(path, method=method, data=body, headers={"Content-Type": "application/json"})
    statuses, reasons = _expected_route(method, path)
    assert response.status_code in statuses, (method, path, response.get_data()[:200])
    if method == "HEAD":  # no body, by definition
        assert response.get_data() == b""
    else:
        answer = answer_of(response)
        assert response.status_code == 200 or answer["error"] in reasons, (method, path, answer)
    assert_quiet(caplog)


@pytest.mark.parametrize("extra", [-1, 0, 1, 4096, 5 * LIMIT])
def test_signed_bodies_around_the_size_limit(client, services, extra):
    envelope = samples.sample("entity.created", seed=40 + extra % 7)
    size = LIMIT + extra
    body = dumps({**envelope, "padding": "p" * (size - len(dumps({**envelope, "padding": ""})))})
    assert len(body) == size
    response = post(client, "gu1-prod", body, gu1_headers(body))
    check_kept(services, response, body)
    assert response.status_code == (202 if size <= LIMIT else 413)


@pytest.mark.parametrize(
    ("length", "status", "reason"),
    [
        ("5", 401, "signature_mismatch"),  # less than the body: only what it announces is read, and it is not signed
        ("1000", 400, "bad_request"),  # more than the body: it ended early
        (str(LIMIT + 1), 413, "payload_too_large"),  # refused before a byte is read
        (str(10**30), 413, "payload_too_large"),
        ("-1", 401, "signature_mismatch"),  # unreadable lengths: no body
        ("abc", 401, "signature_mismatch"),
        ("0x1a", 401, "signature_mismatch"),
    ],
)
def test_content_length_lies(client, length, status, reason):
    body = dumps(samples.sample("entity.created", seed=50))
    headers = {k: v for k, v in gu1_headers(body).items() if k != "Content-Type"}
    response = client.post(
        "/webhooks/gu1-prod",
        input_stream=io.BytesIO(body),
        headers=headers,
        environ_overrides={"CONTENT_LENGTH": length},
    )
    assert (response.status_code, answer_of(response)["error"]) == (status, reason)


def test_a_prefix_signed_as_such_is_what_is_kept(client, services):
    """A Content-Length shorter than the bytes sent: the prefix is the body, and it is kept exactly if it is signed."""
    body = dumps(samples.sample("entity.created", seed=51))
    response = client.post(
        "/webhooks/gu1-prod",
        input_stream=io.BytesIO(body + b"trailing garbage"),
        headers={k: v for k, v in gu1_headers(body).items() if k != "Content-Type"},
        environ_overrides={"CONTENT_LENGTH": str(len(body))},
    )
    assert response.status_code == 202
    assert services.store.event(answer_of(response)["id"]).raw == body


# -- regressions: what the properties above found --------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "body"),
    [
        # Raw surrogate bytes (CESU-8) are read with "surrogatepass": they reached SQLite, and were a 500.
        ("kyc", b'{"id": "e1", "type": "kyc.session.completed", "data": {"session_id": "a\xed\xa0\xbd"}}'),
        ("kyc", b'{"id": "e2", "type": "kyc.session\xed\xa0\xbd", "data": {}}'),
        ("gu1-prod", b'{"event": "transaction.created\xed\xa0\xbd", "payload": {}}'),
        ("std", b'{"type": "invoice.paid\xed\xa0\xbd", "data": {"id": "\xed\xb0\x80"}}'),
        # An escaped half of an emoji in UTF-16: the check for escapes only looked at UTF-8 bytes.
        ("kyc", '{"id": "e3", "type": "kyc.session\\ud83d", "data": {}}'.encode("utf-16")),
        ("std", '{"type": "x", "data": {"id": "\\udc00"}}'.encode("utf-32-be")),
    ],
    ids=["kyc subject", "kyc type", "gu1 type", "standard type and id", "utf-16 escaped", "utf-32 escaped"],
)
def test_lone_surrogates_in_any_encoding_are_mended_and_stored(client, services, clock, source, body):
    response = post(client, source, body, signed(source, body, int(clock().timestamp())))
    assert response.status_code == 202, response.get_data()
    event = services.store.event(answer_of(response)["id"])
    assert event.raw == body
    assert "\ufffd" in json.dumps(event.to_dict(), ensure_ascii=False)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (nested(JSON_DEPTH - 1), 202),  # the envelope and its payload: JSON_DEPTH in all
        (nested(JSON_DEPTH), 400),
        (nested(600, b'"\\ud83d"'), 400),  # mending a lone surrogate this deep ran out of stack: a 500
        (nested(990), 400),  # accepted or not depending on the stack in use; now never
        (nested(200_000), 400),
    ],
    ids=["depth 100", "depth 101", "deep lone surrogate", "depth 991", "depth 200001"],
)
def test_nesting_has_one_fixed_limit(client, services, body, status):
    response = post(client, "gu1-prod", body, gu1_headers(body))
    assert response.status_code == status
    answer = check_kept(services, response, body)
    if status == 400:
        assert answer["error"] == "invalid_json"


def test_options_is_a_json_405_like_any_other_method(client):
    """Flask answered OPTIONS itself, with an empty HTML 200."""
    for path in ("/webhooks/gu1-prod", "/healthz", "/readyz"):
        response = client.options(path)
        assert (response.status_code, answer_of(response)["error"]) == (405, "method_not_allowed")


def test_a_doubled_slash_is_a_json_404_not_an_html_redirect(client):
    """werkzeug answered POST //webhooks/x with an HTML 308 to /webhooks/x."""
    body = dumps(samples.sample("entity.created", seed=61))
    for path in ("//webhooks/gu1-prod", "/webhooks//gu1-prod", "//healthz"):
        response = client.post(path, data=body, headers=gu1_headers(body))
        assert (response.status_code, answer_of(response)["error"]) == (404, "not_found")


# -- the real server: malformed HTTP over raw sockets ----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_choice):
    """The receiver under gunicorn as `serve` runs it (1 worker, 2 threads), with its log."""
    directory = tmp_path_factory.mktemp("hostile-served")
    config = directory / "config.yaml"
    config.write_text(config_text(redis_choice.url or "redis://127.0.0.1:1/0"))
    port, log_path = free_port(), directory / "server.log"
    with open(log_path, "w") as log:
        command = [sys.executable, "app.py", "--config", str(config), "serve", "--bind", f"127.0.0.1:{port}"]
        process = subprocess.Popen(
            [*command, "--workers", "1", "--threads", "2"],
            cwd=ROOT,
            env={**os.environ, **SECRETS},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not _healthy(port):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield {"port": port, "log": log_path}
    finally:
        process.terminate()
        process.wait(30)


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes (then close our side) while reading until the server closes. A server that hangs fails."""
    refused: list[OSError] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send() -> None:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:  # it answered and closed before taking everything (an early 413 or 431)
                refused.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            assert received, f"the connection was reset without an answer ({refused})"
        sender.join(timeout)
    return received


def status_of(raw: bytes) -> int | None:
    """The status of a raw HTTP answer; None when the server closed without one."""
    if not raw:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    assert match, raw[:200]
    return int(match.group(1))


def assert_server_log_clean(server, since: int = 0) -> None:
    """No traceback, no 5xx and no body in the server's log (from byte `since` on)."""
    with open(server["log"], "rb") as log:
        log.seek(since)
        text = log.read().decode("utf-8", "replace")
    assert "Traceback" not in text
    assert re.search(r'HTTP/1\.[01]" 5\d\d ', text) is None, [line for line in text.splitlines() if '" 5' in line]
    assert SENTINEL not in text


RAW_BODY = dumps({"event": "entity.created", "timestamp": "2025-01-15T10:00:00Z", "payload": {"name": SENTINEL}})
RAW_HEAD = (
    "POST /webhooks/gu1-prod HTTP/1.1\r\nHost: x\r\n"
    f"X-Webhook-Signature: {gu1_headers(RAW_BODY)['X-Webhook-Signature']}\r\n"
).encode()
CHUNKED = RAW_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
SIZE = f"{len(RAW_BODY):x}".encode()
LENGTH = f"Content-Length: {len(RAW_BODY)}\r\n".encode()
MALFORMED = {
    # name: (bytes, the statuses allowed; None: the server closed without answering)
    "bad chunk size": (CHUNKED + b"zz\r\n" + RAW_BODY + b"\r\n0\r\n\r\n", {400}),  # was a 500
    "chunk bigger than its data": (CHUNKED + b"400\r\n" + RAW_BODY + b"\r\n0\r\n\r\n", {400}),
    "no last chunk": (CHUNKED + SIZE + b"\r\n" + RAW_BODY + b"\r\n", {400}),
    "chunk without its CRLF": (CHUNKED + SIZE + b"\r\n" + RAW_BODY + b"XX0\r\n\r\n", {400}),
    "absurd chunk size": (CHUNKED + b"f" * 40 + b"\r\n" + RAW_BODY, {400, 413}),
    "huge chunk extension": (
        CHUNKED + SIZE + b";x=" + b"y" * 20_000 + b"\r\n" + RAW_BODY + b"\r\n0\r\n\r\n",
        {200, 202, 400},
    ),
    "chunked over the limit": (CHUNKED + (b"10000\r\n" + b"x" * 0x10000 + b"\r\n") * 17 + b"0\r\n\r\n", {413}),
    "truncated body": (RAW_HEAD + b"Content-Length: 5000\r\n\r\n" + RAW_BODY, {200, 202, 400}),
    "absurd Content-Length": (RAW_HEAD + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n" + RAW_BODY, {400, 413}),
    "negative Content-Length": (RAW_HEAD + b"Content-Length: -5\r\n\r\n" + RAW_BODY, {400}),
    "two Content-Lengths": (RAW_HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n" + RAW_BODY, {400}),
    "Content-Length and chunked": (
        RAW_HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    "transfer coding gzip": (RAW_HEAD + b"Transfer-Encoding: gzip\r\n\r\n" + RAW_BODY, {400, 501}),
    # RFC 9112 6.1: a transfer coding the server does not know is a 501 (gunicorn's answer, before the app).
    "transfer coding garbage": (RAW_HEAD + b"Transfer-Encoding: \xff\xfe\r\n\r\n" + RAW_BODY, {400, 501}),
    "header flood": (RAW_HEAD + b"".join(b"X-F%d: v\r\n" % i for i in range(300)) + b"\r\n", {400, 431}),
    "one huge header": (RAW_HEAD + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", {400, 431}),
    "header without a colon": (RAW_HEAD + b"NoColon\r\nContent-Length: 0\r\n\r\n", {400}),
    "NUL in a header": (RAW_HEAD + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", {400}),
    "folded header": (RAW_HEAD + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", {400}),
    "non-ASCII event header": (RAW_HEAD + b"X-Webhook-Event: \xc3\xa9\xff\r\n" + LENGTH + b"\r\n" + RAW_BODY, {400}),
    "request line too long": (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {400, 414}),
    "not HTTP at all": (bytes(range(256)) * 16, {400}),
    "HTTP/0.9": (b"GET /healthz\r\n\r\n", {400}),
    "HTTP/2.0 over text": (b"POST /webhooks/gu1-prod HTTP/2.0\r\nHost: x\r\n\r\n", {400, 505}),
    "bare LF": (b"POST /webhooks/gu1-prod HTTP/1.1\nHost: x\nContent-Length: 0\n\n", {400}),
    "method with odd bytes": (b"P\xffST /webhooks/gu1-prod HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
    "nothing": (b"", {None}),
    "headers never finished": (RAW_HEAD, {None, 400}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_http_gets_a_4xx_or_a_clean_close(server, name):
    data, allowed = MALFORMED[name]
    since = server["log"].stat().st_size
    raw = exchange(server["port"], data)
    status = status_of(raw)
    assert status in allowed, raw[:300]
    head, _, payload = raw.partition(b"\r\n\r\n")
    if b"application/json" in head:  # the app's own answers keep the documented shape
        answer = json.loads(payload)
        assert set(answer) == {"id", "duplicate"} if status in (200, 202) else answer["error"] in REASONS[status]
    assert _healthy(server["port"])
    assert_server_log_clean(server, since)


def test_a_bad_chunk_size_is_the_apps_json_400(server):
    raw = exchange(server["port"], MALFORMED["bad chunk size"][0])
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"] == "bad_request"


def test_a_stalled_body_does_not_stop_other_requests(server):
    """A sender that stops halfway holds one thread until it goes; the others keep answering."""
    since = server["log"].stat().st_size
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as stalled:
        stalled.sendall(RAW_HEAD + b"Content-Length: 5000\r\n\r\n" + RAW_BODY[:10])
        time.sleep(0.2)
        assert _healthy(server["port"])  # answered within its own 5 s socket timeout, while the other waits
    assert _healthy(server["port"])
    assert_server_log_clean(server, since)


def test_the_servers_whole_log_is_clean(server):
    """Last of the server's tests: nothing went wrong in it, even what was logged after an answer was sent."""
    time.sleep(0.2)
    assert _healthy(server["port"])
    assert_server_log_clean(server)


# -- templates: sandbox escapes and runaway templates ---------------------------------------------------

CTX = {
    "event": "kyc.validation_approved",
    "occurred_at": "2025-01-15T11:00:00.000Z",
    "payload": {"s": "abc", "n": 12500.5, "warnings": ["a", "b"], "nested": {"k": [1, 2]}},
    "entity": {"name": SENTINEL, "externalId": "c1"},
}

REFUSED_AT_LOAD = [
    ("{{ ''.__class__ }}", "'__class__': names starting with '_' are off limits"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "off limits"),
    ("{{ payload.__init__.__globals__['os'] }}", "off limits"),
    ("{{ payload.s.__len__() }}", "off limits"),
    ("{{ __builtins__ }}", "unknown name '__builtins__'"),
    ("{{ payload['__builtins__'] }}", "off limits"),
    ("{{ payload['__class__']['__mro__'] }}", "off limits"),
    ("{{ self }}", "templates cannot use 'self'"),
    ("{{ self._TemplateReference__context }}", "off limits"),
    ("{{ config.items() }}", "unknown name 'config'"),
    ("{{ request.environ }}", "unknown name 'request'"),
    ("{{ cycler('a', 'b').next() }}", "unknown name 'cycler'"),
    ("{% set j = joiner() %}{{ j() }}", "unknown name 'joiner'"),
    ("{% set ns = namespace(x=1) %}{{ ns.x }}", "unknown name 'namespace'"),
    ("{{ lipsum(10 ** 6) }}", "unknown name 'lipsum'"),
    ("{{ range(10 ** 9) | join }}", "unknown name 'range'"),
    ("{% for i in range(10 ** 9) %}x{% endfor %}", "unknown name 'range'"),
    ("{{ dict(a=1) }}", "unknown name 'dict'"),
    ("{{ payload | attr('__class__') }}", "unknown filter 'attr'"),
    ("{{ '%s' | format(payload) }}", "unknown filter 'format'"),
    ("{{ payload.warnings | map('upper') | list }}", "unknown filter"),
    ("{% import 'os' as os %}{{ os }}", "{% import %} is not available in templates"),
    ("{% from 'os' import system %}", "{% from ... import %} is not available"),
    ("{% include '/etc/passwd' %}", "{% include %} is not available"),
    ("{% extends 'base.html' %}", "{% extends %} is not available"),
    ("{% macro m(n) %}{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(1) }}", "{% macro %} is not available"),
    ("{% call payload.s.upper() %}x{% endcall %}", "{% call %} is not available"),
    ("{% for c in payload.s recursive %}{{ loop(c * 9999) }}{% endfor %}", "recursive loops"),
    ("{{ payload.s ", "template error on its line 1"),
]


def rule_config(template: str) -> tuple[str, int]:
    """A config with one rule whose Slack text is `template`, and the line that text is on."""
    text = (
        GOOD + "rules:\n  - name: hostile\n    on: '*'\n    actions:\n      - slack.post:\n          channel: '#c'\n"
        f"          text: {json.dumps(template)}\n"
    )
    return text, text.count("\n")


@pytest.mark.parametrize(("source", "message"), REFUSED_AT_LOAD)
def test_sandbox_escapes_are_refused_when_the_config_is_checked(source, message):
    with pytest.raises(ValueError) as err:
        Template(source)
    assert message in str(err.value)
    text, line = rule_config(source)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "config.yaml", environ=SECRETS)
    assert f"config.yaml:{line}:17: rules[0].actions[0].slack.post.text: " in str(err.value)
    assert message in str(err.value)


RUNAWAY = "payload.s * 30000"  # 90,000 characters: under the limit of what one operation may build
REFUSED_AT_RENDER = [
    ("{{ 'x' * 10 ** 9 }}", "the result would be too large"),
    ("{{ payload.warnings * 10 ** 9 }}", "the result would be too large"),
    ("{{ 10 ** 101 }}", "exponent too large"),
    ("{{ 2 ** 99 ** 99 }}", "the result would be too large"),
    ("{{ '%s' % payload }}", "text formatting with % is not available"),
    ("{{ '%(s)s%(s)999999999s' % payload }}", "text formatting with % is not available"),
    ("{{ '{0.__class__.__mro__}'.format(payload) }}", "unsafe"),
    ("{{ '{0.__init__.__globals__}'.format(payload) }}", "unsafe"),
    ("{{ '{s.__class__}'.format_map(payload) }}", "unsafe"),
    ("{{ '{:>999999999}'.format(1) }}", "a format width or precision is at most 100000"),
    ("{{ '{:.999999999f}'.format(payload.n) }}", "a format width or precision is at most 100000"),
    ("{{ '{0:{1}}'.format(1, 10 ** 9) }}", "never taken from an argument"),
    ("{{ '{s:>999999999}'.format_map(payload) }}", "a format width or precision is at most 100000"),
    ("{{ payload.s.center(10 ** 9) }}", "the result would be too large"),
    ("{{ payload.s.ljust(10 ** 9, '.') }}", "the result would be too large"),
    ("{{ payload.s.rjust(10 ** 9) }}", "the result would be too large"),
    ("{{ payload.s.zfill(10 ** 9) }}", "the result would be too large"),
    ("{{ '\\t'.expandtabs(10 ** 9) }}", "the result would be too large"),
    ("{{ '\\t'.expandtabs(tabsize=10 ** 9) }}", "the result would be too large"),
    ("{{ (1).to_bytes(length=10 ** 9, byteorder='big') }}", "the result would be too large"),
    ("{{ (1).to_bytes(10 ** 9, 'big') }}", "the result would be too large"),
    (f"{{{{ ({RUNAWAY}).replace('a', {RUNAWAY}) }}}}", "the result would be too large"),
    (f"{{{{ ({RUNAWAY}).replace('', '-') }}}}", "the result would be too large"),
    (f"{{{{ ({RUNAWAY}).join({RUNAWAY}) }}}}", "the result would be too large"),
    (f"{{{{ ({RUNAWAY}).translate({{97: {RUNAWAY}}}) }}}}", "the result would be too large"),
    (f"{{% for a in {RUNAWAY} %}}{{% for b in {RUNAWAY} %}}x{{% endfor %}}{{% endfor %}}", "more than 10000 items"),
    ("{% for a in payload.s * 3000 %}{% for b in payload.s * 3000 %}{% endfor %}{% endfor %}", "more than 10000"),
    (f"{{% for a in payload.s * 1000 %}}{{{{ {RUNAWAY} }}}}{{% endfor %}}", "longer than 1000000 characters"),
    (f"{{% set x %}}{{% for a in payload.s * 1000 %}}{{{{ {RUNAWAY} }}}}{{% endfor %}}{{% endset %}}x", "longer than"),
    (f"{{% set a = {RUNAWAY} %}}" + "{% set a = a ~ a %}" * 6 + "{{ a }}", "the result would be too large"),
    (f"{{% set a = {RUNAWAY} %}}" + "{% set a = a + a %}" * 6 + "{{ a }}", "the result would be too large"),
    ("{% set a = payload.warnings * 50000 %}" + "{% set a = a + a %}" * 6 + "{{ a }}", "the result would be too large"),
    ("{% set n = 9 ** 100 %}" + "{% set n = n * n %}" * 6 + "{{ n > 0 }}", "the result would be too large"),
    # Shared parts: cheap to build, huge once written out (str, tojson, join), like a YAML alias bomb.
    (
        f"{{% set a = [{RUNAWAY}] %}}{{% set b = [a, a, a, a, a, a, a, a, a, a, a, a] %}}{{{{ b | tojson }}}}",
        "too large",
    ),
    (f"{{% set a = {{'k': {RUNAWAY}}} %}}{{{{ (a, a, a, a, a, a, a, a, a, a, a, a) }}}}", "too large"),
    ("{{ [[''] * 99999] * 99999 }}", "the result would be too large"),
    ("{{ [[]] * 10 ** 9 }}", "the result would be too large"),
    (f"{{{{ ({RUNAWAY}).encode() * 99999 }}}}", "the result would be too large"),
    (f"{{{{ payload.fromkeys(payload.s * 3000, {RUNAWAY}) }}}}", "the result would be too large"),
    ("{{ payload['_' ~ '_class__'] }}", "unsafe"),
    ("{{ payload.warnings.append('x') }}", "refused by the sandbox"),
    ("{{ payload.nested.clear() }}", "refused by the sandbox"),
    ("{{ entity.name.encode('utf-8') }}", "the expression gives a bytes"),
    ("{{ payload.s.format }}", "the expression gives a function"),
]


@pytest.mark.parametrize(("source", "message"), REFUSED_AT_RENDER)
def test_runaway_templates_fail_cleanly_when_rendered(source, message):
    try:
        template = Template(source)
    except ValueError as exc:  # refused even earlier, which is as good
        assert message in str(exc)
        return
    before = json.dumps(CTX)
    with pytest.raises(TemplateError) as err:
        template.render(CTX)
    assert message in str(err.value)
    assert json.dumps(CTX) == before  # nothing was changed, nothing was run


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ 'x' * 10 ** 9 }}", "the result would be too large"),
        ("{{ '%s' % payload }}", "text formatting with % is not available"),
        ("{{ '{:>999999999}'.format(1) }}", "a format width or precision is at most 100000"),
        ("{{ 'ab'.center(10 ** 9) }}", "the result would be too large"),
        ("{% for a in 'abc' * 30000 %}{% for b in 'abc' * 30000 %}x{% endfor %}{% endfor %}", "more than 10000"),
        ("{% for a in 'abc' * 1000 %}{{ 'abc' * 30000 }}{% endfor %}", "longer than 1000000 characters"),
        ("{% set a = 'abc' * 30000 %}" + "{% set a = a ~ a %}" * 6 + "{{ a }}", "the result would be too large"),
        ("{{ payload['_' ~ '_class__'] }}", "unsafe"),
    ],
)
def test_runaway_templates_fail_as_the_rules_action_naming_it(source, message):
    text, _ = rule_config(source)
    config = parse_config(text, "config.yaml", environ=SECRETS)
    _, results = simulate(config, samples.sample("entity.created", seed=60))
    [action] = results[0].actions
    assert action.params is None
    assert action.error.startswith("rule 'hostile', action 0 (slack.post): text: ")
    assert message in action.error


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '{:,.2f}'.format(payload.n) }}", "12,500.50"),
        ("{{ '{0}-{1}'.format(payload.s, entity.externalId) }}", "abc-c1"),
        ("{{ ', '.join(payload.warnings) }}", "a, b"),
        ("{{ payload.s.replace('b', 'B').center(7, '*') }}", "**aBc**"),
        ("{{ payload.s ~ '-' ~ payload.n }}", "abc-12500.5"),
        ("{{ payload.warnings + ['c'] }}", ["a", "b", "c"]),
        ("{% for w in payload.warnings %}{{ loop.index }}{{ w }}{% endfor %}", "1a2b"),
        ("{% set x %}{{ payload.s }}{% endset %}{{ x | upper }}", "ABC"),
        ("{{ (payload.s * 30000) | truncate(3, True, '') }}", "abc"),
    ],
)
def test_what_stays_allowed(source, expected):
    assert Template(source).render(CTX) == expected


FRAGMENTS = [
    "payload", "entity", "event", ".", "s", "warnings", "n", "__class__", "__globals__", "mro", "format",
    "format_map", "center", "replace", "join", "expandtabs", "to_bytes", "(", ")", "[", "]", "{", "}", "'x'",
    "'{:>99999999}'", "'{0.__class__}'", "'\\t'", "*", "**", "~", "+", "%", ",", ":", "99999", "10", "9", "0",
    " if ", " else ", " in ", "|upper", "|join", "|tojson(8)", "|truncate(5)", "|date", "|d(payload)", "range",
    "self", "cycler", "lipsum", "loop", "config",
]  # fmt: skip
EXPRESSIONS = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=14).map("".join)
TEMPLATES = st.one_of(
    EXPRESSIONS.map(lambda e: "{{ " + e + " }}"),
    st.tuples(EXPRESSIONS, EXPRESSIONS).map(lambda p: "{% for a in " + p[0] + " %}{{ " + p[1] + " }}{% endfor %}"),
    st.tuples(EXPRESSIONS, EXPRESSIONS).map(lambda p: "{% set a = " + p[0] + " %}{{ a ~ a ~ " + p[1] + " }}"),
    st.lists(st.sampled_from(["{{", "}}", "{%", "%}", "{#", "#}", " for a in ", " endfor ", " set ", " macro "])).map(
        "".join
    ),
)


@fuzz(1000)
@given(source=TEMPLATES)
def test_any_template_is_refused_or_renders_small_and_quickly(source):
    before = json.dumps(CTX)
    try:
        template = Template(source)
    except ValueError as exc:
        assert str(exc)
    else:
        try:
            value = template.render(CTX)
        except TemplateError as exc:
            assert str(exc)
        else:
            assert (
                len(value) <= 1_000_000 if isinstance(value, str | list) else value is None or len(str(value)) < 10**5
            )
    assert json.dumps(CTX) == before


# -- YAML: bombs, nesting and size ----------------------------------------------------------------------


def refused(text: str, file: str = "config.yaml") -> str:
    """The problems parse_config finds in `text` (bounded by the loader's count of values, not by a clock)."""
    with pytest.raises(ConfigError) as err:
        parse_config(text, file, environ=SECRETS)
    return str(err.value)


BOMBS = {
    "lists": "b0: &b0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]\n" for i in range(1, 9)),
    "mappings": "b0: &b0 {a: x, b: x, c: x, d: x, e: x, f: x, g: x, h: x, i: x, j: x}\n"
    + "".join(f"b{i}: &b{i} {{{', '.join(f'k{n}: *b{i - 1}' for n in range(10))}}}\n" for i in range(1, 9)),
    # Merges of merges: the keys collapse into one mapping, so no count of the data ever saw these.
    "merge keys": "b0: &b0 {a: x, b: x, c: x, d: x, e: x, f: x, g: x, h: x, i: x, j: x}\n"
    + "".join(f"b{i}: &b{i} {{<<: [{', '.join([f'*b{i - 1}'] * 10)}]}}\n" for i in range(1, 12)),
    "in a rule": GOOD
    + "rules:\n  - name: r\n    on: '*'\n    actions:\n      - slack.post:\n          channel: '#c'\n"
    + "          blocks: [&b0 [x, x, x, x, x, x, x, x, x, x], "
    + ", ".join(f"&b{i} [{', '.join([f'*b{i - 1}'] * 10)}]" for i in range(1, 8))
    + "]\n",
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_alias_bombs_are_refused_quickly_naming_the_place(name):
    message = refused(BOMBS[name])
    match = re.match(r"config\.yaml:(\d+):\d+: this stands for more than 1000000 values once its aliases", message)
    assert match, message
    assert 1 <= int(match.group(1)) <= BOMBS[name].count("\n")


def _levels(width: int, levels: int) -> str:
    if levels == 1:
        return "&a0 [" + ", ".join(["v"] * width) + "]"
    return f"&a{levels - 1} [{_levels(width, levels - 1)}, " + ", ".join([f"*a{levels - 2}"] * (width - 1)) + "]"


def test_aliases_just_under_the_limit_load_quickly():
    text = GOOD + "rules:\n  - name: r\n    on: '*'\n    actions:\n      - slack.post:\n          channel: '#c'\n"
    config = parse_config(text + f"          blocks: [{{fields: {_levels(9, 6)}}}]\n", "config.yaml", environ=SECRETS)
    assert len(config.rules[0].params[0].blocks[0]["fields"]) == 9
    assert MAX_VALUES / 2 < 9**6 < MAX_VALUES
    assert "more than 1000000 values" in refused(text + f"          blocks: [{{fields: {_levels(10, 6)}}}]\n")


def test_small_aliases_and_merges_still_work():
    text = GOOD + (
        "rules:\n"
        "  - {name: a, on: kyc.validation_approved, actions: [{slack.post: &post {channel: '#c', text: KYC}}]}\n"
        "  - {name: b, on: kyc.validation_rejected, actions: [{slack.post: {<<: *post, channel: '#d'}}]}\n"
    )
    config = parse_config(text, "config.yaml", environ=SECRETS)
    assert [(rule.params[0].channel, rule.params[0].text) for rule in config.rules] == [("#c", "KYC"), ("#d", "KYC")]


@pytest.mark.parametrize(
    "text",
    [
        "deep: " + "[" * YAML_DEPTH + "]" * YAML_DEPTH + "\n",
        "deep: " + "{a: " * 100_000 + "\n",  # a RecursionError, with its traceback, before
        "deep:\n" + "".join("  " * n + "  -\n" for n in range(200)),
        "b0: &b0 [1]\n" + "".join(f"b{n}: &b{n} [*b{n - 1}]\n" for n in range(1, 200)),  # deep through aliases
    ],
)
def test_absurd_nesting_is_refused_quickly_naming_the_line(text):
    message = refused(GOOD + text)
    match = re.match(r"config\.yaml:(\d+):\d+: the document nests more than 64 levels deep", message)
    assert match, message
    assert GOOD.count("\n") < int(match.group(1)) <= (GOOD + text).count("\n")


def test_nesting_up_to_the_limit_is_fine():
    text = GOOD + "deep: " + "[" * (YAML_DEPTH - 1) + "]" * (YAML_DEPTH - 1) + "\n"  # and the root mapping: 64
    assert refused(text) == 'config.yaml:7:1: deep: unknown key "deep"'


def test_a_config_over_the_size_limit_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD + "# " + "x" * (MAX_BYTES - len(GOOD) - 3) + "\n")
    assert path.stat().st_size == MAX_BYTES
    assert load_config(str(path), environ=SECRETS).sources["gu1-prod"].kind == "gu1"
    path.write_text(GOOD + "# " + "x" * (MAX_BYTES - len(GOOD) - 2) + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path), environ=SECRETS)
    assert str(err.value) == f"{path}: the file is larger than 2 MiB; a config is a few kilobytes"
    path.write_text(GOOD + "# " + "é" * (MAX_BYTES // 2) + "\n")  # fewer characters than bytes
    with pytest.raises(ConfigError) as err:
        load_config(str(path), environ=SECRETS)
    assert "larger than 2 MiB" in str(err.value)


def test_an_oversized_config_tests_file_is_refused_naming_it(tmp_path):
    tests = tmp_path / "config.tests.yaml"
    tests.write_text("# " + "x" * MAX_BYTES + "\n")
    path = tmp_path / "config.yaml"
    path.write_text(GOOD + "tests: config.tests.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config_tests(load_config(str(path), environ=SECRETS))
    assert f"{tests}: the file is larger than 2 MiB" in str(err.value)


YAML_FRAGMENTS = [
    "a", "b", ": ", "- ", "\n", "  ", "&x ", "*x", "&y ", "*y", "<<: ", "[", "]", "{", "}", ", ", "? ", "!!str ",
    "!!python/object:os.system ", "'", '"', "|", ">", "#", "---\n", "...\n", "${GU1_SECRET}", "${NOPE}", "%YAML 1.1\n",
    "version", "sources", "rules", "\t", "\x00", "\ufeff", "é", "1", "0x1F", "1e999", "null", "true", "on",
]  # fmt: skip


@fuzz(600)
@given(parts=st.lists(st.sampled_from(YAML_FRAGMENTS), max_size=40))
def test_any_yaml_is_a_config_error_never_a_traceback(parts):
    text = GOOD + "".join(parts)
    try:
        parse_config(text, "config.yaml", environ=SECRETS)
    except ConfigError as exc:
        assert all(str(problem).startswith("config.yaml") for problem in exc.problems), str(exc)

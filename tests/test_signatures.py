"""Each kind's verifier on its own: known answers, raw bytes, malformed headers, rotation, tolerance."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from werkzeug.datastructures import Headers

from gu1sync.config import parse_config
from gu1sync.core.errors import NotAuthentic
from gu1sync.kinds import kind_for
from tests.support.helpers import SECRETS, gu1_headers, kyc_headers, std_headers

NOW = datetime(2025, 1, 15, 11, 0, 0, tzinfo=UTC)
T = int(NOW.timestamp())


def make_kind(yaml_source: str, environ: dict[str, str] | None = None):
    config = parse_config(
        f"version: 1\nsources:\n  s:\n{yaml_source}", "config.yaml", environ={**SECRETS, **(environ or {})}
    )
    return kind_for(config.sources["s"])


GU1 = "    kind: gu1\n    environment: production\n    secrets: ['${GU1_SECRET}', '${GU1_SECRET_NEXT}']\n"
KYC = "    kind: kyc-webhooks\n    environment: production\n    secrets: ['${KYC_SECRET}']\n"
KYC_TS = KYC + "    signed_payload: timestamp.body\n"
STD = "    kind: standard\n    environment: production\n    secrets: ['${STD_SECRET}']\n"


# -- known-answer vectors (computed with `openssl dgst -sha256 -hmac`, not with this code) ---------

GU1_VECTOR_BODY = (
    b'{"event":"kyc.validation_approved","timestamp":"2025-01-15T11:00:00Z","payload":'
    b'{"validationId":"550e8400-e29b-41d4-a716-446655440000","status":"approved"}}'
)
KYC_VECTOR_BODY = (
    b'{"id":"evt_abc123","type":"kyc.session.processed","created":1736938800,"data":{"session_id":"ses_1"}}'
)


def test_gu1_known_answer():
    kind = make_kind(GU1, {"GU1_SECRET": "whsec_gu1_test_vector"})
    headers = Headers({"X-Webhook-Signature": "0e9cd817a5afb6c79fcb65903310b2dc06dde871cae5ae037285f5b41ea6e7dd"})
    assert kind.verify(headers, GU1_VECTOR_BODY, NOW) == "GU1_SECRET"
    headers = Headers({"X-Webhook-Signature": "0e9cd817a5afb6c79fcb65903310b2dc06dde871cae5ae037285f5b41ea6e7de"})
    with pytest.raises(NotAuthentic) as err:
        kind.verify(headers, GU1_VECTOR_BODY, NOW)
    assert err.value.reason == "signature_mismatch"


@pytest.mark.parametrize(
    ("mode", "signature"),
    [
        ("body", "616287b3ac98a0a5cc9c24fbc8287af8c27b4a19fb142da244b94ce5ba15dd73"),
        ("timestamp.body", "318f4079d77a49ceb7de0ccd406591529b90af63c00bdaf6f43d30940292a017"),
    ],
)
def test_kyc_webhooks_known_answer(mode, signature):
    kind = make_kind(KYC + f"    signed_payload: {mode}\n", {"KYC_SECRET": "kyc_test_secret"})
    created = datetime.fromtimestamp(1736938800, UTC)
    headers = Headers({"X-Webhook-Signature": f"sha256={signature}", "X-Webhook-Timestamp": "1736938800"})
    assert kind.verify(headers, KYC_VECTOR_BODY, created) == "KYC_SECRET"


def test_standard_known_answer_from_the_spec():
    # The Standard Webhooks spec's own test vector.
    kind = make_kind(STD, {"STD_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    headers = Headers(
        {
            "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "webhook-timestamp": "1614265330",
            "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        }
    )
    assert kind.verify(headers, b'{"test": 2432232314}', datetime.fromtimestamp(1614265330, UTC)) == "STD_SECRET"


# -- the raw bytes are what is signed -----------------------------------------------------------------

ODD_BODIES = [
    '{"event": "entity.updated",  "timestamp":"2025-01-07T10:05:00.000Z", '
    '"payload": {"entity": {"name": "José Müller-Ñúñez 李"}}}',
    '{\n  "event" : "entity.created",\n\t"payload" : {"entity":{"name":"Zoë"}} ,'
    '"timestamp":"2025-01-07T10:00:00Z"\n}\n',
    '{"event":"rule.triggered","payload":{"name":"\\u00e9t\\u00e9 \u00e9t\u00e9"},"timestamp":"2025-01-07T10:00:00Z"}',
]


@pytest.mark.parametrize("text", ODD_BODIES)
def test_gu1_verifies_raw_bytes_not_reserialised_json(text):
    import json

    kind = make_kind(GU1)
    body = text.encode("utf-8")
    assert kind.verify(Headers(gu1_headers(body)), body, NOW) == "GU1_SECRET"
    # The same document serialised again is different bytes, and must not verify with the first signature.
    again = json.dumps(json.loads(body)).encode()
    assert again != body
    with pytest.raises(NotAuthentic):
        kind.verify(Headers(gu1_headers(body)), again, NOW)


@pytest.mark.parametrize("text", ODD_BODIES)
def test_standard_and_kyc_verify_raw_bytes(text):
    body = text.encode("utf-8")
    assert make_kind(STD).verify(Headers(std_headers(body, "msg_1", T)), body, NOW) == "STD_SECRET"
    assert make_kind(KYC_TS).verify(Headers(kyc_headers(body, T, signed="ts")), body, NOW) == "KYC_SECRET"


def test_gu1_accepts_uppercase_hex_and_sha256_prefix():
    kind = make_kind(GU1)
    body = b'{"event":"entity.created"}'
    digest = gu1_headers(body)["X-Webhook-Signature"]
    for value in (digest.upper(), f"sha256={digest}", f"  {digest} "):
        assert kind.verify(Headers({"X-Webhook-Signature": value}), body, NOW) == "GU1_SECRET"


# -- rotation -----------------------------------------------------------------------------------------


def test_any_configured_secret_verifies_and_is_named():
    kind = make_kind(GU1)
    body = b'{"event":"entity.created"}'
    assert kind.verify(Headers(gu1_headers(body, SECRETS["GU1_SECRET"])), body, NOW) == "GU1_SECRET"
    assert kind.verify(Headers(gu1_headers(body, SECRETS["GU1_SECRET_NEXT"])), body, NOW) == "GU1_SECRET_NEXT"
    with pytest.raises(NotAuthentic):
        kind.verify(Headers(gu1_headers(body, "an-old-secret")), body, NOW)


def test_standard_rotation_with_several_signatures_in_one_header():
    kind = make_kind(
        "    kind: standard\n    environment: production\n    secrets: ['${OLD}', '${NEW}']\n",
        {"OLD": "whsec_" + base64.b64encode(b"old-key").decode(), "NEW": "whsec_" + base64.b64encode(b"new").decode()},
    )
    body = b'{"type":"x"}'
    signed_new = std_headers(body, "msg_2", T, "whsec_" + base64.b64encode(b"new").decode())
    bogus = "v1," + base64.b64encode(b"x" * 32).decode()
    signed_new["webhook-signature"] = f"v1a,ignored {bogus} {signed_new['webhook-signature']}"
    assert kind.verify(Headers(signed_new), body, NOW) == "NEW"


# -- every malformed header is a 401 with a reason, never an exception ------------------------------

BODY = b'{"event":"entity.created","timestamp":"2025-01-15T11:00:00Z","payload":{}}'
GOOD_HEX = hmac.new(SECRETS["GU1_SECRET"].encode(), BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_signature"),
        ({"X-Webhook-Signature": ""}, "missing_signature"),
        ({"X-Webhook-Signature": "   "}, "missing_signature"),
        ({"X-Webhook-Signature": "abc"}, "malformed_signature"),
        ({"X-Webhook-Signature": "zz" * 32}, "malformed_signature"),
        ({"X-Webhook-Signature": GOOD_HEX + "00"}, "malformed_signature"),
        ({"X-Webhook-Signature": GOOD_HEX[:-1]}, "malformed_signature"),
        ({"X-Webhook-Signature": "sha1=" + GOOD_HEX}, "malformed_signature"),
        ({"X-Webhook-Signature": "v1," + GOOD_HEX}, "malformed_signature"),
        ({"X-Webhook-Signature": "é" * 64}, "malformed_signature"),
        ({"X-Webhook-Signature": "\x00" * 64}, "malformed_signature"),
        ([("X-Webhook-Signature", GOOD_HEX), ("X-Webhook-Signature", GOOD_HEX)], "malformed_signature"),
        ({"X-Webhook-Signature": "0" * 64}, "signature_mismatch"),
    ],
)
def test_gu1_malformed_headers(headers, reason):
    with pytest.raises(NotAuthentic) as err:
        make_kind(GU1).verify(Headers(headers), BODY, NOW)
    assert err.value.reason == reason
    assert err.value.status == 401


def changed(headers: dict[str, str], change: dict[str, str | None]) -> dict[str, str]:
    """`headers` with some replaced, and those set to None left out."""
    headers = {**headers, **{k: v for k, v in change.items() if v is not None}}
    return {k: v for k, v in headers.items() if change.get(k, "") is not None}


def _kyc_good() -> dict[str, str]:
    return kyc_headers(BODY, T)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"X-Webhook-Signature": None}, "missing_signature"),
        ({"X-Webhook-Signature": "sha256="}, "malformed_signature"),
        ({"X-Webhook-Signature": "sha256=xyz"}, "malformed_signature"),
        ({"X-Webhook-Signature": "md5=" + "0" * 64}, "malformed_signature"),
        ({"X-Webhook-Timestamp": None}, "missing_timestamp"),
        ({"X-Webhook-Timestamp": "yesterday"}, "malformed_timestamp"),
        ({"X-Webhook-Timestamp": "2025-01-15T11:00:00Z"}, "malformed_timestamp"),
        ({"X-Webhook-Timestamp": "-5"}, "malformed_timestamp"),
        ({"X-Webhook-Timestamp": "1e9"}, "malformed_timestamp"),
        ({"X-Webhook-Timestamp": "9" * 40}, "malformed_timestamp"),
        ({"X-Webhook-Timestamp": "nan"}, "malformed_timestamp"),
        ({"X-Webhook-Signature": "sha256=" + "0" * 64}, "signature_mismatch"),
    ],
)
def test_kyc_malformed_headers(change, reason):
    with pytest.raises(NotAuthentic) as err:
        make_kind(KYC).verify(Headers(changed(_kyc_good(), change)), BODY, NOW)
    assert err.value.reason == reason


def _std_good() -> dict[str, str]:
    return std_headers(BODY, "msg_abc", T)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-id": None}, "missing_id"),
        ({"webhook-timestamp": None}, "missing_timestamp"),
        ({"webhook-signature": None}, "missing_signature"),
        ({"webhook-timestamp": "soon"}, "malformed_timestamp"),
        ({"webhook-timestamp": "1614265330.5"}, "malformed_timestamp"),
        ({"webhook-signature": "v1"}, "malformed_signature"),
        ({"webhook-signature": "v1,"}, "malformed_signature"),
        ({"webhook-signature": "v1,!!!not-base64!!!"}, "malformed_signature"),
        ({"webhook-signature": "v1,abc"}, "malformed_signature"),  # bad padding
        ({"webhook-signature": "v2,AAAA"}, "malformed_signature"),
        ({"webhook-signature": ",,, v1"}, "malformed_signature"),
        ({"webhook-signature": "v1," + base64.b64encode(b"\x00" * 32).decode()}, "signature_mismatch"),
        ({"webhook-id": "msg_other"}, "signature_mismatch"),
    ],
)
def test_standard_malformed_headers(change, reason):
    with pytest.raises(NotAuthentic) as err:
        make_kind(STD).verify(Headers(changed(_std_good(), change)), BODY, NOW)
    assert err.value.reason == reason


def test_standard_reference_library_raises_where_we_reject():
    """The reason for the wrapper: the reference library lets malformed headers escape as other errors."""
    import time

    from standardwebhooks.webhooks import Webhook

    headers = {**std_headers(BODY, "msg_abc", int(time.time())), "webhook-signature": "v1"}
    with pytest.raises(ValueError):
        Webhook(SECRETS["STD_SECRET"]).verify(BODY, headers)


# -- timestamp tolerance, both directions, at the edge -----------------------------------------------


@pytest.mark.parametrize(
    ("skew", "ok"),
    [(0, True), (300, True), (-300, True), (301, False), (-301, False), (86400, False), (-86400, False)],
)
def test_kyc_tolerance_edges(skew, ok):
    kind = make_kind(KYC)
    headers = Headers(kyc_headers(BODY, T))
    now = NOW + timedelta(seconds=skew)
    if ok:
        assert kind.verify(headers, BODY, now) == "KYC_SECRET"
    else:
        with pytest.raises(NotAuthentic) as err:
            kind.verify(headers, BODY, now)
        assert err.value.reason == "timestamp_out_of_tolerance"


@pytest.mark.parametrize(("skew", "ok"), [(300, True), (-300, True), (301, False), (-301, False)])
def test_standard_tolerance_edges(skew, ok):
    kind = make_kind(STD)
    headers = Headers(std_headers(BODY, "msg_t", T))
    now = NOW + timedelta(seconds=skew)
    if ok:
        assert kind.verify(headers, BODY, now) == "STD_SECRET"
    else:
        with pytest.raises(NotAuthentic) as err:
            kind.verify(headers, BODY, now)
        assert err.value.reason == "timestamp_out_of_tolerance"


def test_tolerance_is_a_setting():
    kind = make_kind(KYC + "    tolerance: 10s\n")
    headers = Headers(kyc_headers(BODY, T))
    assert kind.verify(headers, BODY, NOW + timedelta(seconds=10)) == "KYC_SECRET"
    with pytest.raises(NotAuthentic):
        kind.verify(headers, BODY, NOW + timedelta(seconds=11))


def test_kyc_signed_payload_setting_is_enforced():
    body_signed = Headers(kyc_headers(BODY, T, signed="body"))
    ts_signed = Headers(kyc_headers(BODY, T, signed="ts"))
    assert make_kind(KYC).verify(body_signed, BODY, NOW) == "KYC_SECRET"
    assert make_kind(KYC_TS).verify(ts_signed, BODY, NOW) == "KYC_SECRET"
    with pytest.raises(NotAuthentic):
        make_kind(KYC).verify(ts_signed, BODY, NOW)
    with pytest.raises(NotAuthentic):
        make_kind(KYC_TS).verify(body_signed, BODY, NOW)


def test_kyc_timestamp_signing_binds_the_timestamp():
    """With {timestamp}.{body} signing, moving the timestamp header breaks the signature."""
    headers = kyc_headers(BODY, T, signed="ts")
    headers["X-Webhook-Timestamp"] = str(T + 1)
    with pytest.raises(NotAuthentic) as err:
        make_kind(KYC_TS).verify(Headers(headers), BODY, NOW)
    assert err.value.reason == "signature_mismatch"

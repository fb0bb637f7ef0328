"""A Salesforce org on localhost, over HTTPS with a throwaway CA, speaking the REST wire format that
simple-salesforce expects: sobjects upsert/update/create, SOQL query, limits, the OAuth token endpoint
and the SOAP login, with the error bodies Salesforce sends, and the org's daily API usage in the
Sforce-Limit-Info header of every REST answer.

`client_session()` gives a requests session that trusts the CA and sends *.salesforce.com (the
login host simple-salesforce always uses) to this server: a hosts-file entry, in code.

sObject Collections and Composite are emulated too: a row per record with its own errors inside a
200, the 200-record cap, subrequests that read earlier results through @{reference}.

Long because an org is one state (its records, sessions and API usage) that every endpoint reads
and writes: split, each part would have to reach into the others.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import ssl
import tempfile
import threading
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse, urlsplit

import jwt
import trustme
from requests.adapters import HTTPAdapter

from connectors.salesforce import TimeoutSession

from .base import Emulator, Request, Response

LOGIN_HOSTS = ("login.salesforce.com", "test.salesforce.com", "acme.my.salesforce.com")
PREFIXES = {"Contact": "003", "Account": "001", "Case": "500", "Task": "00T", "Lead": "00Q"}
API = r"/services/data/v(?P<version>\d+\.\d)"

INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
LOCKED = [
    {"message": "unable to obtain exclusive access to this record", "errorCode": "UNABLE_TO_LOCK_ROW", "fields": []}
]
LIMIT = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
UNAVAILABLE = [{"message": "Service temporarily unavailable, try again later", "errorCode": "SERVER_UNAVAILABLE"}]
UNKNOWN = [{"errorCode": "UNKNOWN_EXCEPTION", "message": "An unexpected error occurred. Please include this ErrorId"}]


def malformed(message: str, code: str = "INVALID_FIELD", fields: list[str] | None = None) -> list[dict]:
    return [{"message": message, "errorCode": code, "fields": fields or []}]


SOAP_OK = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com">
<soapenv:Body><loginResponse><result><metadataServerUrl>{url}/services/Soap/m/59.0/00D000000000001</metadataServerUrl>
<passwordExpired>false</passwordExpired><sandbox>false</sandbox>
<serverUrl>{url}/services/Soap/u/59.0/00D000000000001</serverUrl><sessionId>{token}</sessionId>
<userId>005000000000001AAA</userId></result></loginResponse></soapenv:Body></soapenv:Envelope>"""

SOAP_FAULT = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>sf:INVALID_LOGIN</faultcode>
<faultstring>INVALID_LOGIN: Invalid username, password, security token; or user locked out.</faultstring>
<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>
<sf:exceptionMessage>Invalid username, password, security token; or user locked out.</sf:exceptionMessage>
</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"""


class SalesforceEmulator(Emulator):
    """One org: its records, its users and connected app, and the sessions it has handed out."""

    def __init__(
        self,
        *,
        username: str = "integration@acme.example",
        password: str = "pw",
        security_token: str = "tok",
        client_id: str = "consumer-key",
        client_secret: str = "consumer-secret",
        jwt_public_key: bytes | None = None,
    ):
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", *LOGIN_HOSTS)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(context)
        super().__init__(context)
        self._ca_file = tempfile.NamedTemporaryFile(prefix="sf-ca-", suffix=".pem", delete=False)  # noqa: SIM115
        self._ca_file.write(self.ca.cert_pem.bytes())
        self._ca_file.close()
        self.username, self.password, self.security_token = username, password, security_token
        self.client_id, self.client_secret, self.jwt_public_key = client_id, client_secret, jwt_public_key
        self.sessions: set[str] = set()
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        # The org's daily API usage, as every REST answer reports it (Sforce-Limit-Info) and /limits shows.
        self.api_used = 0
        self.api_limit = 15000
        self._ids = itertools.count(1)
        self._state = threading.Lock()
        # Every upsert that took effect: (object, external id field, value), in order.
        self.landed: list[tuple[str, str, str]] = []
        self._record_faults: dict[str, list[Any]] = {}  # record key -> [errors, times left]

    @property
    def ca_path(self) -> str:
        """A PEM file of the CA that signed this server's certificate."""
        return self._ca_file.name

    def new_session(self) -> str:
        token = "00D000000000001!" + secrets.token_urlsafe(24)
        self.sessions.add(token)
        return token

    def expire_sessions(self) -> None:
        """Every session handed out so far is now invalid (as after a timeout or a password change)."""
        self.sessions.clear()

    def client_session(self, timeout: float = 5.0) -> TimeoutSession:
        """A session like the connector's own, trusting this server and resolving the login hosts to it."""
        session = TimeoutSession(timeout)
        session.trust_env = False  # else $REQUESTS_CA_BUNDLE (set on many machines) overrides `verify`
        session.verify = self.ca_path
        adapter = _ResolvingAdapter({host: ("127.0.0.1", self.port) for host in LOGIN_HOSTS})
        session.mount("https://", adapter)
        return session

    # -- state ----------------------------------------------------------------------------------------

    def new_id(self, sobject: str) -> str:
        return f"{PREFIXES.get(sobject, 'a0X')}{next(self._ids):012d}AAA"

    def find(self, sobject: str, field: str, value: Any) -> list[dict[str, Any]]:
        return [r for r in self.records.get(sobject, {}).values() if str(r.get(field)) == str(value)]

    def outage(self, *, during: float, status: int = 503, path: str = r"^/services/data/") -> None:
        """For `during` seconds every REST call is answered `status` with Salesforce's SERVER_UNAVAILABLE body."""
        self.fail(path, status, UNAVAILABLE, during=during)

    def upserts_landed(self, sobject: str, field: str) -> dict[str, int]:
        """How many upserts by `field` took effect, by external id value, alone or in a collection."""
        counts: dict[str, int] = {}
        for landed_object, landed_field, value in self.landed:
            if (landed_object, landed_field) == (sobject, field):
                counts[value] = counts.get(value, 0) + 1
        return counts

    def fail_record(self, key: str, errors: list[dict], *, times: int = 1) -> None:
        """The next `times` writes of the record with this external id (or record id) are refused with
        `errors`, Salesforce's error list: a 400 alone, an error row inside a collection."""
        with self._state:
            self._record_faults[key] = [errors, times]

    def _record_fault(self, key: str) -> list | None:
        fault = self._record_faults.get(key)
        if fault is None:
            return None
        fault[1] -= 1
        if fault[1] <= 0:
            del self._record_faults[key]
        return fault[0]

    def add(self, sobject: str, fields: dict[str, Any]) -> str:
        """Put a record in the org, as if someone had created it in Salesforce."""
        record_id = self.new_id(sobject)
        self.records.setdefault(sobject, {})[record_id] = {"Id": record_id, **fields}
        return record_id

    # -- the wire -------------------------------------------------------------------------------------

    def route(self, request: Request) -> Response:
        with self._state:  # one request at a time changes the org, as a database would see it
            response = self._route(request)
            if request.path.startswith("/services/data/") and response.status != 401:
                self.api_used += 1  # every authenticated REST call counts against the org's daily limit
                response.headers = {
                    **response.headers,
                    "Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_limit}",
                }
            return response

    def _route(self, request: Request) -> Response:
        if request.path == "/services/oauth2/token" and request.method == "POST":
            return self._token(request)
        if re.fullmatch(r"/services/Soap/u/[\d.]+", request.path) and request.method == "POST":
            return self._soap_login(request)
        if not request.path.startswith("/services/data/"):
            return Response(404, NOT_FOUND)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.sessions:
            return Response(401, INVALID_SESSION)
        if match := re.fullmatch(API + r"/sobjects/(?P<obj>\w+)/(?P<field>\w+)/(?P<value>[^/]+)", request.path):
            if request.method == "PATCH":
                return self._upsert(match["obj"], match["field"], unquote(match["value"]), request.json or {})
        if match := re.fullmatch(API + r"/sobjects/(?P<obj>\w+)/(?P<id>[^/]+)", request.path):
            if request.method == "PATCH":
                return self._update(match["obj"], unquote(match["id"]), request.json or {})
        if match := re.fullmatch(API + r"/sobjects/(?P<obj>\w+)/?", request.path):
            if request.method == "POST":
                record_id = self.add(match["obj"], request.json or {})
                return Response(201, {"id": record_id, "success": True, "errors": []})
        if re.fullmatch(API + r"/query/?", request.path) and request.method == "GET":
            return self._query(request.query.get("q", [""])[0])
        if match := re.fullmatch(API + r"/composite/sobjects(?:/(?P<obj>\w+)/(?P<field>\w+))?/?", request.path):
            return self._collection(request.method, match["obj"], match["field"], request.json or {})
        if re.fullmatch(API + r"/composite/?", request.path) and request.method == "POST":
            return self._composite(request.json or {})
        if re.fullmatch(API + r"/limits/?", request.path) and request.method == "GET":
            remaining = max(self.api_limit - self.api_used - 1, 0)
            return Response(200, {"DailyApiRequests": {"Max": self.api_limit, "Remaining": remaining}})
        return Response(404, NOT_FOUND)

    def _upsert(self, sobject: str, field: str, value: str, fields: dict) -> Response:
        if (errors := self._record_fault(value)) is not None:
            return Response(400, errors)
        if field in fields:
            return Response(
                400, malformed(f"Unable to create/update fields: {field}.", "INVALID_FIELD_FOR_INSERT_UPDATE", [field])
            )
        matches = self.find(sobject, field, value)
        if len(matches) > 1:
            return Response(300, [f"/services/data/v59.0/sobjects/{sobject}/{r['Id']}" for r in matches])
        self.landed.append((sobject, field, value))
        if not matches:
            record_id = self.add(sobject, {field: value, **fields})
            return Response(201, {"id": record_id, "success": True, "errors": [], "created": True})
        matches[0].update(fields)
        return Response(200, {"id": matches[0]["Id"], "success": True, "errors": [], "created": False})

    def _update(self, sobject: str, record_id: str, fields: dict) -> Response:
        if (errors := self._record_fault(record_id)) is not None:
            return Response(400, errors)
        record = self.records.get(sobject, {}).get(record_id)
        if record is None:
            return Response(404, NOT_FOUND)
        record.update(fields)
        return Response(204, b"")

    def _query(self, soql: str) -> Response:
        where = r"FROM (?P<obj>\w+) WHERE (?P<field>\w+) = '(?P<value>(?:[^'\\]|\\.)*)'"
        if counted := re.fullmatch(r"SELECT COUNT\(\) " + where, soql.strip()):
            found = self.find(counted["obj"], counted["field"], re.sub(r"\\(.)", r"\1", counted["value"]))
            return Response(200, {"totalSize": len(found), "done": True, "records": []})
        only = re.fullmatch(
            r"SELECT MAX\(Id\) (?P<alias>\w+) " + where + r" GROUP BY (?P=field) HAVING COUNT\(Id\) = 1", soql.strip()
        )
        if only is not None:  # an aggregate row only when exactly one record has the value
            found = self.find(only["obj"], only["field"], re.sub(r"\\(.)", r"\1", only["value"]))
            rows = (
                [{"attributes": {"type": "AggregateResult"}, only["alias"]: found[0]["Id"]}] if len(found) == 1 else []
            )
            return Response(200, {"totalSize": len(rows), "done": True, "records": rows})
        match = re.fullmatch(
            r"SELECT (?P<fields>[\w, ]+) FROM (?P<obj>\w+)(?: WHERE (?P<field>\w+) = '(?P<value>(?:[^'\\]|\\.)*)')?"
            r"(?: LIMIT (?P<limit>\d+))?",
            soql.strip(),
        )
        if match is None:
            return Response(400, malformed(f"unexpected token in {soql[:40]!r}", "MALFORMED_QUERY"))
        sobject = match["obj"]
        rows = list(self.records.get(sobject, {}).values())
        if match["field"]:
            value = re.sub(r"\\(.)", r"\1", match["value"])
            rows = [r for r in rows if str(r.get(match["field"])) == value]
        if match["limit"]:
            rows = rows[: int(match["limit"])]
        names = [name.strip() for name in match["fields"].split(",")]
        records = [
            {
                "attributes": {"type": sobject, "url": f"/services/data/v59.0/sobjects/{sobject}/{r['Id']}"},
                **{name: r.get(name) for name in names},
            }
            for r in rows
        ]
        return Response(200, {"totalSize": len(records), "done": True, "records": records})

    # -- sObject Collections and Composite ------------------------------------------------------------
    # Collections: up to 200 records a call, a result row per record in request order; with allOrNone
    # false a record's error stays in its row of a 200. Composite: up to 25 subrequests in one call (one
    # API call), a later one reading an earlier result through @{reference.path}.

    def _collection(self, method: str, sobject: str | None, field: str | None, body: dict) -> Response:
        records = body.get("records")
        if not isinstance(records, list) or not records:
            return Response(400, malformed("records is required", "JSON_PARSER_ERROR"))
        if len(records) > 200:
            return Response(
                400, [{"message": "Maximum number of records (200) exceeded", "errorCode": "EXCEEDED_ID_LIMIT"}]
            )
        if body.get("allOrNone"):
            return Response(400, malformed("allOrNone is not emulated", "INVALID_INPUT"))
        rows = []
        for record in records:
            fields = {k: v for k, v in record.items() if k != "attributes"}
            kind = (record.get("attributes") or {}).get("type")
            if not kind or (sobject is not None and kind.lower() != sobject.lower()):
                rows.append(
                    self._error_row(malformed("attributes.type is required and names the object", "INVALID_TYPE"))
                )
            elif method == "POST" and sobject is None:
                rows.append(self._row(self._create_one(kind, fields)))
            elif method == "PATCH" and sobject is None:
                record_id = fields.pop("id", None) or fields.pop("Id", None)
                rows.append(self._row(self._update(kind, str(record_id), fields), record_id))
            elif method == "PATCH":
                value = fields.pop(field, None)
                if value is None:
                    rows.append(self._error_row(malformed(f"missing {field}", "MISSING_ARGUMENT", [field])))
                    continue
                rows.append(self._row(self._upsert(sobject, field, str(value), {**fields})))
            else:
                return Response(405, malformed("method not allowed", "METHOD_NOT_ALLOWED"))
        return Response(200, rows)

    def _create_one(self, sobject: str, fields: dict) -> Response:
        return Response(201, {"id": self.add(sobject, fields), "success": True, "errors": []})

    def _row(self, answer: Response, record_id: str | None = None) -> dict:
        """A single-record answer as the row of a collection's result."""
        if answer.status == 300:  # more than one record has the external id
            return self._error_row(malformed("more than one record found for external id", "DUPLICATE_EXTERNAL_ID"))
        if answer.status >= 300:
            return self._error_row(answer.body if isinstance(answer.body, list) else [answer.body])
        body = answer.body if isinstance(answer.body, dict) else {}
        row = {"id": body.get("id", record_id), "success": True, "errors": []}
        if "created" in body:
            row["created"] = body["created"]
        return row

    @staticmethod
    def _error_row(errors: list) -> dict:
        return {
            "success": False,
            "errors": [
                {
                    "statusCode": error.get("errorCode") if isinstance(error, dict) else "UNKNOWN_EXCEPTION",
                    "message": error.get("message") if isinstance(error, dict) else str(error),
                    "fields": error.get("fields", []) if isinstance(error, dict) else [],
                }
                for error in errors
            ],
        }

    def _composite(self, body: dict) -> Response:
        subrequests = body.get("compositeRequest") or []
        if len(subrequests) > 25:
            return Response(400, malformed("too many subrequests", "INVALID_COMPOSITE_REQUEST"))
        results: dict[str, Any] = {}
        answers = []
        failed = False
        snapshot = {name: {k: dict(v) for k, v in records.items()} for name, records in self.records.items()}
        for sub in subrequests:
            reference = sub.get("referenceId")
            if failed:
                answers.append(self._halted(reference))
                continue
            try:
                url = re.sub(r"@\{([^}]+)\}", lambda m: str(_lookup(results, m.group(1))), sub.get("url", ""))
                payload = json.loads(
                    re.sub(r"@\{([^}]+)\}", lambda m: str(_lookup(results, m.group(1))), json.dumps(sub.get("body")))
                )
            except LookupError as exc:
                answer = Response(
                    400, [{"errorCode": "PROCESSING_HALTED", "message": f"Invalid reference specified. {exc}"}]
                )
            else:
                inner = Request(
                    sub.get("method", "GET"),
                    urlsplit(url).path,
                    parse_qs(urlsplit(url).query),
                    {},
                    json.dumps(payload).encode() if payload is not None else b"",
                )
                answer = self._route_inner(inner)
            body_out = None if isinstance(answer.body, bytes) else answer.body  # a 204's body is null
            results[reference] = body_out
            answers.append(
                {"body": body_out, "httpHeaders": {}, "httpStatusCode": answer.status, "referenceId": reference}
            )
            if answer.status >= 300 and body.get("allOrNone"):
                failed = True
        if failed:  # allOrNone: what was done is undone, and every subrequest says so
            self.records = snapshot
            answers = [a if a["httpStatusCode"] >= 300 else self._halted(a["referenceId"]) for a in answers]
        return Response(200, {"compositeResponse": answers})

    @staticmethod
    def _halted(reference: str | None) -> dict:
        body = [
            {
                "errorCode": "PROCESSING_HALTED",
                "message": "The transaction was rolled back since another operation in the same transaction failed.",
            }
        ]
        return {"body": body, "httpHeaders": {}, "httpStatusCode": 400, "referenceId": reference}

    def _route_inner(self, request: Request) -> Response:
        """A subrequest, as the REST API would answer it (already authenticated)."""
        if match := re.fullmatch(API + r"/sobjects/(?P<obj>\w+)/(?P<field>\w+)/(?P<value>[^/]+)", request.path):
            if request.method == "PATCH":
                return self._upsert(match["obj"], match["field"], unquote(match["value"]), request.json or {})
        if match := re.fullmatch(API + r"/sobjects/(?P<obj>\w+)/(?P<id>[^/]+)", request.path):
            if request.method == "PATCH":
                return self._update(match["obj"], unquote(match["id"]), request.json or {})
        if re.fullmatch(API + r"/query/?", request.path) and request.method == "GET":
            return self._query(request.query.get("q", [""])[0])
        return Response(404, NOT_FOUND)

    def _token(self, request: Request) -> Response:
        form = request.form
        grant = form.get("grant_type")
        ok = False
        if grant == "client_credentials":
            basic = request.headers.get("Authorization", "").removeprefix("Basic ")
            try:
                client_id, _, client_secret = base64.b64decode(basic).decode().partition(":")
            except ValueError:
                client_id = client_secret = ""
            ok = (client_id, client_secret) == (self.client_id, self.client_secret)
            if not ok:
                return Response(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
        elif grant == "password":
            ok = (form.get("client_id"), form.get("client_secret"), form.get("username"), form.get("password")) == (
                self.client_id,
                self.client_secret,
                self.username,
                self.password,
            )
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer" and self.jwt_public_key is not None:
            try:
                claims = jwt.decode(
                    form.get("assertion", ""),
                    self.jwt_public_key,
                    algorithms=["RS256"],
                    audience="https://login.salesforce.com",
                )
                ok = claims.get("iss") == self.client_id and claims.get("sub") == self.username
            except jwt.PyJWTError:
                ok = False
        if not ok:
            return Response(400, {"error": "invalid_grant", "error_description": "authentication failure"})
        return Response(
            200,
            {
                "access_token": self.new_session(),
                "instance_url": self.url,
                "token_type": "Bearer",
                "id": "https://login.salesforce.com/id/00D000000000001/005000000000001",
                "issued_at": "1700000000000",
                "signature": "c2lnbmF0dXJl",
            },
        )

    def _soap_login(self, request: Request) -> Response:
        body = request.raw.decode()
        username = re.search(r"<[\w:]*username>(.*?)</", body)
        password = re.search(r"<[\w:]*password>(.*?)</", body)
        given = (username.group(1) if username else None, password.group(1) if password else None)
        if given != (self.username, self.password + self.security_token):
            return Response(500, SOAP_FAULT, {"Content-Type": "text/xml; charset=utf-8"})
        return Response(
            200, SOAP_OK.format(url=self.url, token=self.new_session()), {"Content-Type": "text/xml; charset=utf-8"}
        )


class _ResolvingAdapter(HTTPAdapter):
    """Connects to a given address for some host names, keeping the name for TLS (SNI and certificate)."""

    def __init__(self, hosts: dict[str, tuple[str, int]]):
        self.hosts = hosts
        super().__init__()

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):  # noqa: ANN001
        host = urlparse(request.url).hostname
        if host not in self.hosts:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        address, port = self.hosts[host]
        pool_kwargs = {**pool_kwargs, "server_hostname": host, "assert_hostname": host}
        return self.poolmanager.connection_from_host(
            **{**host_params, "host": address, "port": port}, pool_kwargs=pool_kwargs
        )


def _lookup(results: dict[str, Any], path: str) -> Any:
    """`found.records[0].Id` in earlier subrequests' results; LookupError naming what is missing."""
    parts = re.findall(r"[^.\[\]]+", path)
    node: Any = results
    for part in parts:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise LookupError(f"No value for {path} found in {parts[0]}") from None
    return node

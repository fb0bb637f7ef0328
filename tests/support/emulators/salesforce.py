"""A Salesforce org on localhost, over HTTPS with a throwaway CA, speaking the REST wire format that
simple-salesforce expects: sobjects upsert/update/create, SOQL query, limits, the OAuth token endpoint
and the SOAP login, with the error bodies Salesforce sends, and the org's daily API usage in the
Sforce-Limit-Info header of every REST answer.

`client_session()` gives a requests session that trusts the CA and sends *.salesforce.com (the
login host simple-salesforce always uses) to this server: a hosts-file entry, in code.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import ssl
import tempfile
import threading
from typing import Any
from urllib.parse import unquote, urlparse

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
        """How many upserts by `field` took effect (answered 200 or 201), by external id value."""
        pattern = re.compile(API + rf"/sobjects/{sobject}/{field}/(?P<value>[^/]+)")
        counts: dict[str, int] = {}
        for request in self.seen("PATCH"):
            match = pattern.fullmatch(request.path)
            if match and request.status in (200, 201):
                value = unquote(match["value"])
                counts[value] = counts.get(value, 0) + 1
        return counts

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
        if re.fullmatch(API + r"/limits/?", request.path) and request.method == "GET":
            remaining = max(self.api_limit - self.api_used - 1, 0)
            return Response(200, {"DailyApiRequests": {"Max": self.api_limit, "Remaining": remaining}})
        return Response(404, NOT_FOUND)

    def _upsert(self, sobject: str, field: str, value: str, fields: dict) -> Response:
        if field in fields:
            return Response(
                400, malformed(f"Unable to create/update fields: {field}.", "INVALID_FIELD_FOR_INSERT_UPDATE", [field])
            )
        matches = self.find(sobject, field, value)
        if len(matches) > 1:
            return Response(300, [f"/services/data/v59.0/sobjects/{sobject}/{r['Id']}" for r in matches])
        if not matches:
            record_id = self.add(sobject, {field: value, **fields})
            return Response(201, {"id": record_id, "success": True, "errors": [], "created": True})
        matches[0].update(fields)
        return Response(200, {"id": matches[0]["Id"], "success": True, "errors": [], "created": False})

    def _update(self, sobject: str, record_id: str, fields: dict) -> Response:
        record = self.records.get(sobject, {}).get(record_id)
        if record is None:
            return Response(404, NOT_FOUND)
        record.update(fields)
        return Response(204, b"")

    def _query(self, soql: str) -> Response:
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

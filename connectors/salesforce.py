"""Salesforce through simple-salesforce: upsert, update, create.

Its declaration (CONNECTOR, at the end) gives the registry its settings, its action types and how
each names the record it writes. One client per worker process, logged in once and reused; a fresh
login when the session expires (once per call); a timeout on every HTTP call. `classify` is the one
place that decides which failures are worth retrying.

Long because Salesforce has four ways to sign in, three action types and a rich vocabulary of
errors, and a connector is one module: split, its parts would be read apart from each other.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote, quote_plus, urlsplit

import requests
from pydantic import Field, model_validator
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceMoreThanOneRecord,
)
from simple_salesforce.format import format_soql

from gu1sync.core.templates import Templated, TemplatedText
from gu1sync.core.values import PositiveDuration, SecretValue, StrictModel

from .base import (
    ActionError,
    ActionMeta,
    ActionParams,
    ActionType,
    BatchSettings,
    ConnectorSpec,
    Result,
    common,
    scrub,
    secret_forms,
)

log = logging.getLogger(__name__)

# Salesforce error codes that clear up by themselves.
RETRYABLE_CODES = {"UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT"}


class SessionAuth(StrictModel):
    """An existing session: it cannot be renewed, so when it expires actions fail until it is replaced."""

    method: Literal["session"]
    instance_url: str = Field(description="https://yourcompany.my.salesforce.com")
    session_id: SecretValue


class PasswordAuth(StrictModel):
    """Username, password and security token (SOAP login)."""

    method: Literal["password"]
    username: str
    password: SecretValue
    security_token: SecretValue | None = Field(None, description="Not needed when the server's IP is allowed.")
    domain: str = Field("login", description="login, test (sandbox), or your My Domain (yourcompany.my).")


class ClientCredentialsAuth(StrictModel):
    """OAuth 2.0 client credentials of a connected app (needs your My Domain)."""

    method: Literal["client_credentials"]
    client_id: SecretValue
    client_secret: SecretValue
    domain: str = Field(description="Your My Domain, e.g. yourcompany.my (not login or test).")

    @model_validator(mode="after")
    def _my_domain(self) -> ClientCredentialsAuth:
        if self.domain in ("login", "test"):
            raise ValueError("client credentials need your My Domain (e.g. yourcompany.my), not login or test")
        return self


class JwtAuth(StrictModel):
    """OAuth 2.0 JWT bearer flow: a connected app's consumer key and the private key of its certificate."""

    method: Literal["jwt"]
    username: str
    client_id: SecretValue = Field(description="The connected app's consumer key.")
    private_key: SecretValue | None = Field(None, description="The PEM key, from the environment.")
    private_key_file: str | None = Field(None, description="Or a path to the PEM key file.")
    domain: str = Field("login", description="login, test, or your My Domain.")

    @model_validator(mode="after")
    def _one_key(self) -> JwtAuth:
        if (self.private_key is None) == (self.private_key_file is None):
            raise ValueError("give private_key or private_key_file")
        return self


class SalesforceBatch(BatchSettings):
    """`connectors.salesforce.batch`: upserts, creates and updates by record id that are ready at once go
    as one sObject Collections call (one API call for up to 200 records)."""

    max: int = Field(200, ge=1, le=200, description="Most records in one call: 200 at most, Salesforce's limit.")


class SalesforceSettings(StrictModel):
    """`connectors.salesforce`: without `auth`, Salesforce actions run dry (recorded, never sent)."""

    auth: (
        Annotated[SessionAuth | PasswordAuth | ClientCredentialsAuth | JwtAuth, Field(discriminator="method")] | None
    ) = None
    api_version: str = Field("59.0", pattern=r"^\d+\.\d$")
    timeout: PositiveDuration = Field(15, description="For every HTTP call to Salesforce.")
    batch: SalesforceBatch = Field(SalesforceBatch(), description="Several records in one API call.")


# -- the action types, as rules write them ---------------------------------------------------------

ApiName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="A Salesforce API name: Contact, Gu1_External_Id__c"),
]
Fields = Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], Templated], Field(min_length=1)]


class SalesforceUpsert(ActionParams):
    """Create or update a record by an external id field: one API call."""

    type: ClassVar[str] = "salesforce.upsert"
    object: ApiName
    external_id_field: ApiName
    external_id: TemplatedText
    fields: Fields


class SalesforceUpdate(ActionParams):
    """Update a record found by its record id, or by an external id field."""

    type: ClassVar[str] = "salesforce.update"
    object: ApiName
    record_id: TemplatedText | None = None
    external_id_field: ApiName | None = None
    external_id: TemplatedText | None = None
    fields: Fields

    @model_validator(mode="after")
    def _one_way_to_find_it(self) -> SalesforceUpdate:
        by_id = self.record_id is not None
        by_external = self.external_id_field is not None or self.external_id is not None
        if by_id == by_external:
            raise ValueError("give either record_id, or external_id_field and external_id")
        if by_external and (self.external_id_field is None or self.external_id is None):
            raise ValueError("external_id_field and external_id go together")
        return self


class SalesforceCreate(ActionParams):
    """Create a record, for example a Case or a Task for compliance review."""

    type: ClassVar[str] = "salesforce.create"
    object: ApiName
    fields: Fields


_API_USAGE = re.compile(r"(?:^|[\s,])api-usage=(\d+)/(\d+)")


def api_usage(header: str | None) -> tuple[int, int] | None:
    """(used, limit) from Sforce-Limit-Info (`api-usage=18/15000`), which every REST answer carries."""
    match = _API_USAGE.search(header or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


class TimeoutSession(requests.Session):
    """A requests session that never waits forever (simple-salesforce sets no timeout of its own), and
    remembers the org's API usage from the last answer that said it."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout
        self._environment: dict[tuple, dict[str, Any]] = {}
        self.api_usage: tuple[int, int] | None = None

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        response = super().request(method, url, **kwargs)
        usage = api_usage(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.api_usage = usage
        return response

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: ANN001, ANN201 - requests'
        # requests reads the proxy and CA bundle variables afresh on every request, which costs more
        # than the rest of an upsert; a worker's environment does not change, so once per host will do.
        if proxies or not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = (*urlsplit(url)[:2], stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            if len(self._environment) > 32:  # a handful of hosts is all a session talks to
                self._environment.clear()
            settings = self._environment[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        return {**settings, "proxies": dict(settings["proxies"])}


def _error_code(content: Any) -> str | None:
    """The errorCode of a Salesforce error body (a list of {errorCode, message})."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode")
    if isinstance(content, dict):
        return content.get("errorCode") or content.get("error")
    return None


def _error_message(content: Any) -> str:
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("message", content[0]))[:500]
    return str(content)[:500]


def classify(exc: Exception) -> ActionError:
    """Retryable or permanent, for every way a Salesforce call can fail."""
    if (known := common(exc)) is not None:
        return known
    if isinstance(exc, requests.Timeout):
        return ActionError(f"timed out: {type(exc).__name__}", retryable=True)
    if isinstance(exc, requests.ConnectionError):
        return ActionError(f"cannot reach Salesforce: {type(exc).__name__}", retryable=True)
    if isinstance(exc, requests.RequestException):
        return ActionError(f"HTTP error: {type(exc).__name__}", retryable=True)
    if isinstance(exc, SalesforceAuthenticationFailed):
        # A login endpoint that is down or busy is worth retrying; refused credentials are not. The
        # code is the SOAP fault's exceptionCode or the OAuth error, or the HTTP status when the body
        # could not be read.
        status = exc.code if isinstance(exc.code, int) else None
        busy = exc.code in RETRYABLE_CODES or exc.code in ("server_error", "temporarily_unavailable")
        return ActionError(
            f"login failed: {exc.code}: {exc.auth_message[:300]}",
            retryable=busy or (status is not None and (status >= 500 or status == 429)),
            status_code=status,
            code=str(exc.code),
        )
    if isinstance(exc, SalesforceError):
        code = _error_code(exc.content)
        message = f"{exc.status} {code or ''}: {_error_message(exc.content)}".replace("  ", " ")
        if isinstance(exc, SalesforceMoreThanOneRecord):
            return ActionError(
                f"more than one record matches: {_error_message(exc.content)}",
                retryable=False,
                status_code=300,
                code="MULTIPLE_CHOICES",
            )
        if code in RETRYABLE_CODES:
            return ActionError(message, retryable=True, status_code=exc.status, code=code)
        if isinstance(exc, SalesforceExpiredSession):
            return ActionError(message, retryable=True, status_code=401, code=code)
        if exc.status == 429:
            return ActionError(message, retryable=True, status_code=429, code=code)
        retryable = exc.status >= 500
        return ActionError(message, retryable=retryable, status_code=exc.status, code=code)
    return ActionError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)


def _secret_values(auth: object) -> list[str]:
    """Every credential in `auth`, and each line of a PEM key (a message may quote one line)."""
    values = []
    for name in ("session_id", "password", "security_token", "client_id", "client_secret", "private_key"):
        secret = getattr(auth, name, None)
        if secret is not None:
            values.append(secret.value)
            if name == "private_key":
                values += [line.strip() for line in secret.value.splitlines() if len(line.strip()) >= 16]
    return values


class SalesforceConnector:
    """Carries out salesforce.* actions."""

    name = "salesforce"

    def __init__(self, settings: SalesforceSettings, session: requests.Session | None = None):
        self.settings = settings
        self.dry_run = settings.auth is None
        self.session = session if session is not None else TimeoutSession(settings.timeout)
        self._client: Salesforce | None = None
        self.logins = 0
        self._secrets = secret_forms(_secret_values(settings.auth))

    def _login(self) -> Salesforce:
        auth, version = self.settings.auth, self.settings.api_version
        self.logins += 1
        if isinstance(auth, SessionAuth):
            return Salesforce(
                session_id=auth.session_id.value, instance_url=auth.instance_url, session=self.session, version=version
            )
        if isinstance(auth, PasswordAuth):
            credentials = dict(
                username=auth.username,
                password=auth.password.value,
                security_token=auth.security_token.value if auth.security_token else "",
            )
        elif isinstance(auth, ClientCredentialsAuth):
            credentials = dict(consumer_key=auth.client_id.value, consumer_secret=auth.client_secret.value)
        else:
            credentials = dict(
                username=auth.username,
                consumer_key=auth.client_id.value,
                privatekey=auth.private_key.value if auth.private_key else None,
                privatekey_file=auth.private_key_file,
            )
        # simple-salesforce's own login; the client then uses that session directly, so that a
        # 401 comes back to us (its built-in refresh recurses without limit on repeated 401s).
        session_id, instance = SalesforceLogin(
            session=self.session, sf_version=version, domain=auth.domain, **credentials
        )
        log.info("salesforce: logged in (%s) to %s", auth.method, instance)
        return Salesforce(session_id=session_id, instance=instance, session=self.session, version=version)

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """The org's daily API usage, (used, limit), as the last answer said."""
        return getattr(self.session, "api_usage", None)

    def check(self) -> tuple[bool | None, str]:
        """Sign in and read the org's limits (GET /limits: read-only, one API call)."""
        if self.dry_run:
            return None, "no credentials (connectors.salesforce.auth): salesforce.* actions run dry"
        try:
            sf = self.client()
            limits = sf.limits()
        except Exception as exc:  # every failure is classified in one place, and no secret leaves in it
            raise scrub(classify(exc), self._secrets) from exc
        daily = limits.get("DailyApiRequests") or {}
        used = daily.get("Max", 0) - daily.get("Remaining", 0) if daily else None
        usage = f"; API requests in the last 24 h: {used} of {daily.get('Max')}" if used is not None else ""
        return True, f"signed in ({self.settings.auth.method}) to {sf.base_url.split('/services')[0]}{usage}"

    def client(self) -> Salesforce:
        """The logged-in client, reused across calls."""
        if self._client is None:
            self._client = self._login()
        return self._client

    def execute(self, action_type: str, params: dict[str, Any], meta: ActionMeta) -> Result:
        """One action in one API call."""
        return self._with_session(lambda: self._call(action_type, params))

    def execute_batch(
        self, action_type: str, items: list[tuple[dict[str, Any], ActionMeta]]
    ) -> list[Result | ActionError]:
        """Several actions of one type (and one batch key) in one sObject Collections call; a Result or
        an ActionError per action, from its own row of the answer."""
        outcomes: list[Result | ActionError | None] = [_empty_key(params) for params, _ in items]
        ready = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if ready:
            rows = self._with_session(lambda: self._collection(action_type, [items[i][0] for i in ready]))
            for index, row in zip(ready, rows, strict=True):
                outcomes[index] = row
        return [outcome for outcome in outcomes if outcome is not None]

    def _with_session(self, call: Any) -> Any:
        """Make the call; an expired session is renewed once (login-based auth) and the call made again.
        Every failure is classified, and no secret leaves in it."""
        try:
            try:
                return call()
            except SalesforceExpiredSession:
                if isinstance(self.settings.auth, SessionAuth):
                    raise ActionError(
                        "the session in connectors.salesforce.auth expired; give a new one (or login "
                        "credentials) and replay",
                        retryable=False,
                        status_code=401,
                        code="INVALID_SESSION_ID",
                    ) from None
                self._client = None
                log.info("salesforce: session expired; logging in again")
                return call()
        except Exception as exc:  # every failure is classified in one place, and no secret leaves in it
            raise scrub(classify(exc), self._secrets) from exc

    def _call(self, action_type: str, params: dict[str, Any]) -> Result:
        if (empty := _empty_key(params)) is not None:
            raise empty
        sf = self.client()
        sobject = getattr(sf, params["object"])
        fields = params["fields"]
        if action_type == "salesforce.upsert":
            status = sobject.upsert(
                f"{params['external_id_field']}/{quote(str(params['external_id']), safe='')}", fields
            )
            return Result(status, "created" if status == 201 else "updated")
        if action_type == "salesforce.update" and params.get("record_id"):
            status = sobject.update(quote(str(params["record_id"]), safe=""), fields)
            return Result(status, f"updated {params['record_id']}")
        if action_type == "salesforce.update":
            return self._update_by_external_id(sf, params)
        if action_type == "salesforce.create":
            created = sobject.create(fields)
            return Result(201, f"created {created.get('id')}")
        raise ActionError(f"salesforce cannot {action_type}", retryable=False)

    def _update_by_external_id(self, sf: Salesforce, params: dict[str, Any]) -> Result:
        """Find the one record with the external id and update it, in one Composite call (one API call):
        a count, an aggregate that has a row only when exactly one record matches, and a PATCH of the Id
        in that row. No row, no write: an update never creates, and never picks one of several."""
        sobject, field, value = params["object"], params["external_id_field"], str(params["external_id"])
        count = format_soql("SELECT COUNT() FROM {:literal} WHERE {:literal} = {}", sobject, field, value)
        only = format_soql(
            "SELECT MAX(Id) recordId FROM {:literal} WHERE {:literal} = {} GROUP BY {:literal} HAVING COUNT(Id) = 1",
            sobject,
            field,
            value,
            field,
        )
        base = urlsplit(sf.base_url).path  # /services/data/v59.0/
        answer = sf.restful(
            "composite",
            method="POST",
            json={
                "allOrNone": False,
                "compositeRequest": [
                    {"method": "GET", "url": f"{base}query/?q={quote_plus(count)}", "referenceId": "matches"},
                    {"method": "GET", "url": f"{base}query/?q={quote_plus(only)}", "referenceId": "only"},
                    {
                        "method": "PATCH",
                        "url": f"{base}sobjects/{sobject}/@{{only.records[0].recordId}}",
                        "referenceId": "write",
                        "body": params["fields"],
                    },
                ],
            },
        )
        parts = {part.get("referenceId"): part for part in (answer or {}).get("compositeResponse", [])}
        matches, found, write = parts.get("matches") or {}, parts.get("only") or {}, parts.get("write") or {}
        for part in (matches, found):
            if part.get("httpStatusCode", 500) >= 300:
                raise _part_error(part)
        status = write.get("httpStatusCode", 500)
        if status < 300:
            return Result(status, f"updated {found['body']['records'][0]['recordId']}")
        if _error_code(write.get("body")) != "PROCESSING_HALTED":
            raise _part_error(write)
        total = (matches.get("body") or {}).get("totalSize")
        if total == 0 or (isinstance(total, int) and total > 1):
            raise ActionError(
                f"{'no' if total == 0 else 'more than one'} {sobject} with {field} = {value!r}",
                retryable=False,
                status_code=404 if total == 0 else 300,
                code="NOT_FOUND" if total == 0 else "MULTIPLE_CHOICES",
            )
        raise ActionError(f"the update was not made: {_error_message(write.get('body'))}", retryable=True, code=None)

    def _collection(self, action_type: str, batch: list[dict[str, Any]]) -> list[Result | ActionError]:
        """One sObject Collections call (allOrNone false): each record's row says how it went."""
        first = batch[0]
        if action_type == "salesforce.upsert":
            field = first["external_id_field"]
            path = f"composite/sobjects/{first['object']}/{field}"
            records = [
                {"attributes": {"type": p["object"]}, **p["fields"], p["external_id_field"]: p["external_id"]}
                for p in batch
            ]
            method = "PATCH"
        elif action_type == "salesforce.update":
            path = "composite/sobjects"
            records = [{"attributes": {"type": p["object"]}, **p["fields"], "id": p["record_id"]} for p in batch]
            method = "PATCH"
        elif action_type == "salesforce.create":
            path = "composite/sobjects"
            records = [{"attributes": {"type": p["object"]}, **p["fields"]} for p in batch]
            method = "POST"
        else:
            raise ActionError(f"salesforce cannot batch {action_type}", retryable=False)
        rows = self.client().restful(path, method=method, json={"allOrNone": False, "records": records})
        if not isinstance(rows, list) or len(rows) != len(batch):
            # The call was made, and what it did is unknown: an upsert or update may go again, a create not.
            raise ActionError(
                f"Salesforce answered a collection of {len(batch)} with {type(rows).__name__} "
                f"of {len(rows) if isinstance(rows, list) else 'no'} rows",
                retryable=action_type != "salesforce.create",
            )
        note = f" (one call for {len(batch)})"
        return [_row_outcome(action_type, row, params, note) for row, params in zip(rows, batch, strict=True)]


def _empty_key(params: dict[str, Any]) -> ActionError | None:
    """An external id or record id that rendered empty: the action cannot name its record."""
    for key in ("external_id", "record_id"):
        if key in params and (params[key] is None or not str(params[key]).strip()):
            return ActionError(
                f"{key} is empty for this event (the value its template reads is null or blank)", retryable=False
            )
    return None


def _part_error(part: dict[str, Any]) -> ActionError:
    """A Composite subrequest's failure, decided as the same answer to a call of its own would be."""
    status, body = part.get("httpStatusCode", 500), part.get("body")
    code = _error_code(body)
    message = f"{status} {code or ''}: {_error_message(body)}".replace("  ", " ")
    retryable = code in RETRYABLE_CODES or status >= 500 or status == 429
    return ActionError(message, retryable=retryable, status_code=status, code=code)


def _row_outcome(action_type: str, row: Any, params: dict[str, Any], note: str) -> Result | ActionError:
    """One record's row of a collection's answer: {id, success, errors: [{statusCode, message, fields}]}."""
    if not isinstance(row, dict):
        return ActionError(f"unreadable row in Salesforce's answer: {str(row)[:100]}", retryable=False)
    if row.get("success"):
        if action_type == "salesforce.upsert":
            created = row.get("created")
            return Result(201 if created else 200, f"{'created' if created else 'updated'} {row.get('id')}{note}")
        if action_type == "salesforce.update":
            return Result(204, f"updated {row.get('id') or params.get('record_id')}{note}")
        return Result(201, f"created {row.get('id')}{note}")
    errors = row.get("errors") or [{}]
    first = errors[0] if isinstance(errors[0], dict) else {}
    code = first.get("statusCode")
    fields = f" [{', '.join(first['fields'])}]" if first.get("fields") else ""
    return ActionError(
        f"{code or 'error'}: {str(first.get('message', ''))[:500]}{fields}",
        retryable=code in RETRYABLE_CODES,
        code=code,
    )


def target_of(action_type: str, params: dict[str, Any]) -> str | None:
    """The record an update or upsert writes, for ordering (creates always make a new one)."""
    # API names are case-insensitive in Salesforce: contact and Contact are one object.
    sobject = params["object"].lower()
    if action_type == "salesforce.upsert" or (action_type == "salesforce.update" and not params.get("record_id")):
        return f"salesforce:{sobject}:{params['external_id_field'].lower()}:{params['external_id']}"
    if action_type == "salesforce.update":
        return f"salesforce:{sobject}:id:{params['record_id']}"
    return None


# Codes with which Salesforce refuses credentials (a login refused, a session that cannot be renewed).
REFUSALS = {
    "INVALID_SESSION_ID",
    "INVALID_LOGIN",
    "INVALID_AUTH_HEADER",
    "INVALID_OPERATION_WITH_EXPIRED_PASSWORD",
    "LOGIN_MUST_USE_SECURITY_TOKEN",
    "PASSWORD_LOCKOUT",
    "API_DISABLED_FOR_ORG",
    "invalid_grant",
    "invalid_client",
    "invalid_client_id",
    "inactive_user",
    "inactive_org",
}


def refuses_credentials(error: ActionError) -> bool:
    """A refusal of the credentials, not of one record: told to the ops channel at once."""
    return not error.retryable and (error.code in REFUSALS or error.status_code == 401)


CONNECTOR = ConnectorSpec(
    name="salesforce",
    description="Where salesforce.* actions go.",
    settings=SalesforceSettings,
    client=SalesforceConnector,
    classify=classify,
    actions=(
        ActionType(
            SalesforceUpsert,
            target=lambda params: target_of("salesforce.upsert", params),
            repeat_harmless=True,
            batch=lambda params: f"{params['object'].lower()}:{params['external_id_field'].lower()}",
        ),
        ActionType(
            SalesforceUpdate,
            target=lambda params: target_of("salesforce.update", params),
            repeat_harmless=True,
            # By record id, a collection; by external id, one Composite call of its own.
            batch=lambda params: f"{params['object'].lower()}:id" if params.get("record_id") else None,
        ),
        ActionType(SalesforceCreate, batch=lambda params: params["object"].lower()),  # a repeat makes a second record
    ),
    dry_run_notice="Salesforce has no credentials (connectors.salesforce.auth): salesforce.* actions run dry, "
    "rendered and recorded but never sent.",
    refuses_credentials=refuses_credentials,
    check=lambda connector: connector.check(),
)

__all__ = ["CONNECTOR", "SalesforceConnector", "SalesforceSettings", "classify", "target_of"]

"""The console's Flask app: who is signed in and may do what, and the protections every page gets.

- Accounts (`gu1-sync console-user add NAME --role viewer|operator`) with a password hash (werkzeug's
  scrypt); or, when `console.proxy` says so, the user an authenticating proxy names in a header, taken
  only from the proxy's own addresses.
- A signed session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS), a fresh one at each sign-in,
  lasting `console.session_lifetime`.
- CSRF tokens on every form (Flask-WTF), the sign-in form included.
- After `console.lockout.attempts` failed sign-ins in a row, an account is locked for
  `console.lockout.duration`, even to the right password.
- Content-Security-Policy with no script at all, frames denied, no referrer, nothing cached.
- Every sign-in (and failed one, and lock) and every replay goes to the audit log.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.security import check_password_hash, generate_password_hash

from ..core.timeutil import iso, parse_iso, utcnow
from ..runtime import Runtime
from ..storage.console import ConsoleStore

log = logging.getLogger(__name__)

ROLES = ("viewer", "operator")  # an operator may do what a viewer may, and replay
_RANK = {role: rank for rank, role in enumerate(ROLES)}
MIN_PASSWORD = 12
# Checked against when the name is unknown, so that a wrong name takes as long as a wrong password.
_NOBODY = generate_password_hash(secrets.token_urlsafe(16))

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def hash_password(password: str) -> str:
    """A password's hash as accounts keep it (werkzeug's scrypt, salted)."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
    return generate_password_hash(password)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    via_proxy: bool = False

    def may(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


class _Sessions(SecureCookieSessionInterface):
    """Session cookies marked Secure whenever the console is reached over HTTPS (directly, or through the
    configured proxy that says so): over plain HTTP on loopback a Secure cookie would never come back."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request.is_secure or (_from_proxy() and request.headers.get("X-Forwarded-Proto") == "https"))


def _printable(value: Any) -> Any:
    """Every value a page prints, as text a page can carry: an event may hold half an emoji (a lone
    surrogate, \\ud83d in its JSON), which would otherwise fail the page as it is sent."""
    if type(value) is str:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def create_console(runtime: Runtime) -> Flask:
    """The console app on a Runtime (its config's `console:` section, its store and queue)."""
    config = runtime.config
    settings = config.console
    app = Flask("gu1sync.console", root_path=str(Path(__file__).parent))
    app.config.update(
        SECRET_KEY=settings.secret_key.value if settings.secret_key else secrets.token_bytes(32),
        SESSION_COOKIE_NAME="gu1sync_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_lifetime),
        MAX_CONTENT_LENGTH=config.receiver.max_body_bytes + 64 * 1024,  # a pasted event, and the form around it
        WTF_CSRF_TIME_LIMIT=settings.session_lifetime,
    )
    app.session_interface = _Sessions()
    app.jinja_env.finalize = _printable
    CSRFProtect(app)
    app.extensions["gu1sync"] = runtime
    consoles = ConsoleStore(runtime.store)
    app.extensions["gu1sync_console"] = consoles

    @app.before_request
    def _who() -> tuple[str, int, dict] | None:
        if not runtime.ready.is_set() and request.endpoint != "static":
            message = "The database is being brought up to date; another process holds its lock. Try again shortly."
            return render_template("error.html", title="Not ready yet", message=message), 503, {"Retry-After": "5"}
        g.user = _signed_in(runtime, consoles)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"  # pages carry personal data
        return response

    @app.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> tuple[str, int]:
        message = (
            "The form was not accepted: it is missing its security token, or it expired. Go back, reload and try again."
        )
        return render_template("error.html", title="Form refused", message=message), 400

    @app.errorhandler(403)
    def _forbidden(error: Any) -> tuple[str, int]:
        message = "Your role may not do this: replaying needs the operator role."
        return render_template("error.html", title="Not allowed", message=message), 403

    @app.errorhandler(404)
    def _missing(error: Any) -> tuple[str, int]:
        return render_template("error.html", title="Not found", message="There is nothing at this address."), 404

    @app.context_processor
    def _everywhere() -> dict:
        return {"user": g.get("user"), "config_version": runtime.config.digest}

    from . import pages

    app.register_blueprint(pages.bp)
    app.add_url_rule("/sign-in", "sign_in", _sign_in, methods=["GET", "POST"])
    app.add_url_rule("/sign-out", "sign_out", _sign_out, methods=["POST"])
    return app


def require(role: str = "viewer"):  # noqa: ANN201 - a decorator
    """A page for signed-in users with at least `role`; others are sent to sign in, or refused (403)."""

    def decorate(view):  # noqa: ANN001, ANN202
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            user: User | None = g.get("user")
            if user is None:
                return redirect(url_for("sign_in", next=request.path))
            if not user.may(role):
                from flask import abort

                abort(403)
            return view(*args, **kwargs)

        return guarded

    return decorate


def runtime_of() -> Runtime:
    from flask import current_app

    return current_app.extensions["gu1sync"]


def consoles_of() -> ConsoleStore:
    from flask import current_app

    return current_app.extensions["gu1sync_console"]


def audit(action: str, target: str | None = None, detail: Any = None, user: str | None = None) -> int:
    """Write to the audit log, as the signed-in user (or `user`), from the client's address."""
    who = user or (g.user.name if g.get("user") else "-")
    return consoles_of().audit(
        user=who, action=action, now=utcnow(), target=target, detail=detail, address=request.remote_addr
    )


def _from_proxy() -> bool:
    from flask import current_app

    proxy = current_app.extensions["gu1sync"].config.console.proxy
    if proxy is None or not request.remote_addr:
        return False
    peer = ipaddress.ip_address(request.remote_addr)
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in ipaddress.ip_network(network, strict=False) for network in proxy.addresses)


def _signed_in(runtime: Runtime, consoles: ConsoleStore) -> User | None:
    proxy = runtime.config.console.proxy
    if proxy is not None and _from_proxy():
        name = (request.headers.get(proxy.header) or "").strip()
        if name:
            account = consoles.user(name)
            if session.get("proxy_user") != name:  # the proxy's sign-in, written once per session
                session.clear()
                session["proxy_user"] = name
                consoles.audit(
                    user=name, action="sign_in", now=utcnow(), detail={"via": "proxy"}, address=request.remote_addr
                )
            return User(name, account["role"] if account else proxy.role, via_proxy=True)
    name = session.get("user")
    if not name:
        return None
    account = consoles.user(name)
    started = parse_iso(session.get("since") or "")
    lifetime = runtime.config.console.session_lifetime
    if account is None or started is None or (utcnow() - started).total_seconds() > lifetime:
        session.clear()  # removed since, or signed in too long ago
        return None
    return User(name, account["role"])


def _sign_in() -> Any:
    consoles, settings = consoles_of(), runtime_of().config.console
    target = request.values.get("next") or "/"
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # only pages of this console
    if request.method == "GET":
        return render_template("sign_in.html", next=target, error=None)
    name = (request.form.get("name") or "").strip()
    password = request.form.get("password") or ""
    now = utcnow()
    account = consoles.user(name) if name else None
    locked_until = parse_iso(account["locked_until"] or "") if account else None
    if account is not None and locked_until is not None and locked_until > now:
        audit("sign_in_refused", detail={"reason": "locked"}, user=name)
        error = (
            f"This account is locked until {iso(locked_until)[11:16]} UTC after repeated failed sign-ins. "
            f"An administrator can unlock it: gu1-sync console-user unlock NAME."
        )
        return render_template("sign_in.html", next=target, error=error), 403
    if account is not None and check_password_hash(account["password_hash"], password):
        session.clear()  # a new session: nothing from before the sign-in carries over
        session["user"] = name
        session["since"] = iso(now)
        session.permanent = True
        consoles.signed_in(name, now)
        audit("sign_in", user=name)
        return redirect(target)
    if account is None:
        check_password_hash(_NOBODY, password)
    locked = (
        consoles.failed_signin(name, now, settings.lockout.attempts, settings.lockout.duration) if account else False
    )
    audit("sign_in_failed", detail={"locked": locked} if locked else None, user=name or "-")
    error = "Wrong name or password."
    if locked:
        error += f" After {settings.lockout.attempts} failed sign-ins the account is locked for a while."
    return render_template("sign_in.html", next=target, error=error), 401


def _sign_out() -> Any:
    if g.get("user") is not None:
        audit("sign_out")
    session.clear()
    return redirect(url_for("sign_in"))

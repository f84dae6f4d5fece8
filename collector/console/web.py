"""The console's aiohttp application: sessions, roles, CSRF, security headers, templates.

Every page handler declares who may use it with `@allow(...)`; a handler without it is public
(the login form, the link, static files). For the others the session middleware finds the
session of the HttpOnly, SameSite cookie (only its hash is stored), refuses a role that is not
allowed (403), and for every POST checks the session's CSRF token in the form (403 when it is
missing or wrong) and that an Origin header, when sent, is this console's. Store calls run in
worker threads (`ConsoleState.call`): the event loop also serves the agents' gRPC streams.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from collector.console import errors
from collector.console.accounts import ROLES, AccountBook
from collector.console.audit import AuditEntry, AuditLog
from collector.console.cases import CaseBook
from collector.console.limiter import LoginLimiter
from collector.console.logins import SESSION_SECONDS, LoginBook, Session
from collector.store import Store, StoreError, triage
from common.ecstime import ecs_now

log = logging.getLogger("exfilguard.collector.console")

SESSION_COOKIE = "exfilguard_session"
OFFICERS = ("officer", "admin")  # may change things: triage, cases
AUDITORS = ("auditor", "admin")  # may read the audit log
EVERYONE = ROLES
MAX_FORM_BYTES = 256 << 10
_HERE = Path(__file__).resolve().parent

P = ParamSpec("P")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def allow(*roles: str) -> Callable[[Handler], Handler]:
    """Mark a page handler as needing a session with one of `roles`."""

    def mark(handler: Handler) -> Handler:
        handler.console_roles = roles  # type: ignore[attr-defined]
        return handler

    return mark


@dataclass
class ConsoleState:
    """What every page reads: the store twice (reads and writes apart), the books, the templates."""

    reader: Store  # read-only: pages and session look-ups never take the writer's lock
    writer: Store  # triage, cases, sessions, the audit log
    state_dir: str  # the collector's state (its evidence signing key)
    secure: bool  # served over TLS: cookies get Secure
    silent_after: float
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    templates: jinja2.Environment = field(init=False)
    _pending: list[AuditEntry] = field(default_factory=list, init=False)
    _audit_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _background: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.accounts = AccountBook(self.reader.domain())
        self.sessions = LoginBook(self.reader.domain())
        self.logins = LoginBook(self.writer.domain())
        self.audit_log = AuditLog(self.writer.domain())
        self.cases_read = CaseBook(self.reader.domain())
        self.cases = CaseBook(self.writer.domain())

    def prepare(self) -> None:
        """Create the console's tables (a writable store), so the read-only side finds them."""
        AccountBook(self.writer.domain()).ensure()
        self.logins.ensure()
        self.audit_log.ensure()
        self.cases.ensure()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store call in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def audit(
        self, request: web.Request, action: str, kind: str, target: str = "", detail: str = ""
    ) -> None:
        """Append to the audit log as the request's user (or the name tried, for a refused login).

        A view is written in the background with the views around it (one commit for many, so a
        page does not wait for the disk); anything else (login, triage, case change, export) is
        written, with every view before it, before the page answers.
        """
        session: Session | None = request.get(SESSION)
        user = session.user if session is not None else request.get(TRIED, "-")
        self._pending.append(AuditEntry(ecs_now(), user, action, kind, target, detail))
        if action != "view":
            await self.flush_audit()
        elif self._background is None or self._background.done():
            self._background = asyncio.create_task(self.flush_audit())

    async def flush_audit(self) -> None:
        """Write every pending audit entry (in order; one writer at a time)."""
        async with self._audit_lock:
            while self._pending:
                batch, self._pending = self._pending, []
                await self.call(self.audit_log.record_many, batch)

    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        """A page from its template, with the session (user, role, CSRF token) and the path."""
        page = self.templates.get_template(template).render(
            session=request.get(SESSION),
            path=request.path,
            officer=_has(request, OFFICERS),
            auditor=_has(request, AUDITORS),
            **context,
        )
        return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")

    def error(self, request: web.Request, status: int, message: str) -> web.Response:
        """An error page that says what went wrong."""
        return self.render(request, "error.html", status=status, status_code=status, message=message)

    def set_session_cookie(self, response: web.StreamResponse, session: Session) -> None:
        """The session's cookie: HttpOnly (no script reads it), SameSite, Secure over TLS."""
        response.set_cookie(
            SESSION_COOKIE,
            session.token,
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Lax",  # Lax, not Strict: the first page after a link opened from mail keeps it
            secure=self.secure,
        )


STATE = web.AppKey("console", ConsoleState)
SESSION = web.RequestKey("session", Session)  # the logged-in session (set by `sessions`)
Form = MultiDictProxy[str | bytes | bytearray | FileField]
FORM: web.RequestKey[Form] = web.RequestKey("form", MultiDictProxy)  # a POST's form, CSRF checked
TRIED = web.RequestKey("tried", str)  # the name a refused login tried (for the audit log)


def _has(request: web.Request, roles: tuple[str, ...]) -> bool:
    session: Session | None = request.get(SESSION)
    return session is not None and session.role in roles


def state_of(request: web.Request) -> ConsoleState:
    """The console of the request's application."""
    return request.app[STATE]


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another site's page."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def redirect(target: str) -> web.Response:
    """303 See Other to a local path (after a form, the browser GETs the page it names)."""
    return web.Response(status=303, headers={"Location": safe_next(target)})


def safe_next(target: str) -> str:
    """A local path to go to after login (never another site: no scheme, no //host)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/alerts"


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers every answer carries: no framing, nothing from other sites, no caching, no Referer to them."""
    state = state_of(request)
    try:
        response = await handler(request)
    except errors.NoSuchCase as exc:
        response = state.error(request, 404, exc.reason)
    except triage.AlertNotFound as exc:
        response = state.error(
            request, 404, f"no such alert: {', '.join(exc.alert_ids)} (nothing was changed)"
        )
    except errors.InvalidInput as exc:
        response = state.error(request, 400, f"{exc.field}: {exc.reason}")
    except StoreError as exc:
        field_name = getattr(exc, "field", None)
        status = 400 if field_name else 500
        response = state.error(request, status, f"{field_name}: {exc.reason}" if field_name else str(exc))
    headers = response.headers
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    # Other sites never see our URLs; same-origin keeps the Origin header on our own forms ("no-referrer"
    # would make browsers send "Origin: null", which the CSRF check refuses).
    headers["Referrer-Policy"] = "same-origin"
    headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, role and CSRF checks for every handler marked with `allow`."""
    state = state_of(request)
    if request.method == "POST" and not same_origin(request):
        return state.error(request, 403, "this form was sent from another site")
    roles: tuple[str, ...] | None = getattr(handler, "console_roles", None)
    if roles is None:
        return await handler(request)
    token = request.cookies.get(SESSION_COOKIE, "")
    session = await state.call(state.sessions.session, token) if token else None
    if session is None:
        if request.method == "GET":
            raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe=""))
        return state.error(request, 401, "log in first")
    request[SESSION] = session
    if session.role not in roles:
        return state.error(request, 403, f"a {session.role} may not do this")
    if request.method == "POST":
        form = await request.post()
        sent = str(form.get("csrf", ""))
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return state.error(request, 403, "the form's CSRF token is missing or wrong; reload the page")
        request[FORM] = form
    return await handler(request)


def build_app(state: ConsoleState) -> web.Application:
    """The console's application with every page."""
    from collector.console import alertpages, casepages, loginpages, viewpages

    app = web.Application(middlewares=[security_headers, sessions], client_max_size=MAX_FORM_BYTES)
    app[STATE] = state
    for module in (loginpages, alertpages, casepages, viewpages):
        module.add_routes(app)
    app.router.add_static("/static/", _HERE / "static", follow_symlinks=False)
    return app

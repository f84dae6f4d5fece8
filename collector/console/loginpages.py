"""Logging in and out: the password form, the one-time link, logout. Failed attempts are
rate-limited (limiter.py) and every login, refusal and logout is in the audit log."""

from __future__ import annotations

from aiohttp import web

from collector.console.errors import LoginRefused
from collector.console.web import (
    EVERYONE,
    SESSION,
    SESSION_COOKIE,
    TRIED,
    allow,
    redirect,
    safe_next,
    state_of,
)

_REFUSED = "wrong name or password"


async def login_form(request: web.Request) -> web.StreamResponse:
    """GET /login: the password form."""
    state = state_of(request)
    return state.render(
        request, "login.html", next=safe_next(request.query.get("next", "/alerts")), refused=""
    )


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login: check the password; a session cookie and the page asked for, or the form again."""
    state = state_of(request)
    form = await request.post()
    name = str(form.get("name", ""))[:100]
    password = str(form.get("password", ""))
    target = safe_next(str(form.get("next", "/alerts")))
    address = f"address:{request.remote}"
    request[TRIED] = name or "-"
    wait = state.limiter.blocked(address, f"name:{name}")
    if wait:
        await state.audit(request, "login_refused", "session", name, "rate limited")
        response = state.render(
            request,
            "login.html",
            status=429,
            next=target,
            refused=f"too many failed logins; try again in {wait:.0f} s",
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    try:
        account = await state.call(state.accounts.authenticate, name, password)
    except LoginRefused:
        state.limiter.failed(address, f"name:{name}")
        await state.audit(request, "login_refused", "session", name, "password")
        return state.render(request, "login.html", status=401, next=target, refused=_REFUSED)
    session = await state.call(state.logins.open_session, account.name)
    request[SESSION] = session
    await state.audit(request, "login", "session", account.name, "password")
    response = redirect(target)
    state.set_session_cookie(response, session)
    return response


async def link(request: web.Request) -> web.StreamResponse:
    """GET /link/TOKEN: a one-time login link (`exfilguard console link`)."""
    state = state_of(request)
    address = f"address:{request.remote}"
    wait = state.limiter.blocked(address)
    if wait:
        return state.error(request, 429, f"too many failed logins; try again in {wait:.0f} s")
    try:
        session = await state.call(state.logins.redeem_link, request.match_info["token"])
    except LoginRefused as exc:
        state.limiter.failed(address)
        await state.audit(request, "login_refused", "session", "", f"link: {exc.reason}")
        return state.error(request, 403, f"{exc.reason}: ask for a new one (exfilguard console link)")
    request[SESSION] = session
    await state.audit(request, "login", "session", session.user, "one-time link")
    response = redirect("/alerts")
    state.set_session_cookie(response, session)
    return response


@allow(*EVERYONE)
async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout: end the session."""
    state = state_of(request)
    await state.call(state.logins.close_session, request[SESSION].token)
    await state.audit(request, "logout", "session", request[SESSION].user)
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def home(request: web.Request) -> web.StreamResponse:
    """GET /: the alert queue."""
    raise web.HTTPFound("/alerts")


def add_routes(app: web.Application) -> None:
    """Register the login pages."""
    app.router.add_get("/", home)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/link/{token}", link)
    app.router.add_post("/logout", logout)

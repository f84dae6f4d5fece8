"""Timelines (per user, host, device: events, the per-day plot of removable writes, alerts), the
fleet page, and the audit log (page and JSON Lines export)."""

from __future__ import annotations

import datetime as dt
import json

from aiohttp import web

from collector.console import params, plot, queries
from collector.console.errors import BadParameter
from collector.console.web import AUDITORS, EVERYONE, allow, state_of
from collector.fleet.health import health
from collector.store.presence import LEASE_SECONDS
from common.ecstime import ecs_time

DEFAULT_RANGE = "30d"
MAX_RANGE_DAYS = 366


@allow(*EVERYONE)
async def timeline(request: web.Request) -> web.StreamResponse:
    """GET /timeline/KIND/NAME?since=30d&until=&page=: one user's, host's or device's activity."""
    state = state_of(request)
    kind, name = request.match_info["kind"], request.match_info["name"]
    if len(name) > params.MAX_VALUE_CHARS:
        raise BadParameter("name", f"at most {params.MAX_VALUE_CHARS} characters")
    subject = queries.Subject(kind, name)
    q = request.query
    now = dt.datetime.now(dt.UTC)
    since = params.moment("since", params.one(q, "since", DEFAULT_RANGE), now)
    until = params.moment("until", params.one(q, "until"), now) or ecs_time(now)
    if until <= since:
        raise BadParameter("until", "must be after since")
    days = (dt.datetime.fromisoformat(until[:19]) - dt.datetime.fromisoformat(since[:19])).days
    if days > MAX_RANGE_DAYS:
        raise BadParameter("since", f"a range of at most {MAX_RANGE_DAYS} days")
    page = params.page_number(q)
    events, more = await state.call(queries.timeline, state.reader, subject, since, until, page=page)
    per_day = await state.call(queries.removable_days, state.reader, subject, since, until)
    alerts = await state.call(queries.subject_alerts, state.reader, subject, since, until)
    open_cases = await state.call(state.cases_read.cases, status="open", limit=100)
    await state.audit(request, "view", "timeline", f"{kind}:{name}", f"{since}..{until}")
    return state.render(
        request,
        "timeline.html",
        subject=subject,
        since=since,
        until=until,
        form={"since": params.one(q, "since", DEFAULT_RANGE), "until": params.one(q, "until")},
        events=events,
        page=page,
        prev_link=params.link(request.path, q, page=page - 1) if page > 1 else "",
        next_link=params.link(request.path, q, page=page + 1) if more else "",
        days=per_day,
        total_files=sum(d.files for d in per_day),
        total_bytes=sum(d.bytes for d in per_day),
        alerts=alerts,
        open_cases=[c for c, _ in open_cases],
        svg=plot.svg(per_day, [str(a["@timestamp"])[:10] for a in alerts], since, until),
    )


@allow(*EVERYONE)
async def fleet(request: web.Request) -> web.StreamResponse:
    """GET /fleet: agents (health, versions, config versions, their collector) and the collectors."""
    state = state_of(request)
    records = await state.call(state.reader.agents)
    agents = [(r, health(r, state.silent_after)) for r in records]
    counts: dict[str, int] = {}
    for _, h in agents:
        key = h.split("+")[0]
        counts[key] = counts.get(key, 0) + 1
    collectors = await state.call(state.reader.fleet_collectors)
    alive_after = ecs_time(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LEASE_SECONDS))
    await state.audit(request, "view", "fleet")
    return state.render(
        request,
        "fleet.html",
        agents=agents,
        counts=counts,
        collectors=[(c, c.seen >= alive_after) for c in collectors],
    )


@allow(*AUDITORS)
async def audit_page(request: web.Request) -> web.StreamResponse:
    """GET /audit: the newest entries of the audit log."""
    state = state_of(request)
    entries = await state.call(state.audit_log.entries, limit=500)
    await state.audit(request, "view", "audit")
    return state.render(request, "audit.html", entries=list(reversed(entries)))


@allow(*AUDITORS)
async def audit_export(request: web.Request) -> web.StreamResponse:
    """GET /audit.jsonl: the audit log as JSON Lines (the newest 100,000 entries)."""
    state = state_of(request)
    await state.audit(request, "export", "audit")
    entries = await state.call(state.audit_log.entries, limit=100_000)
    body = "".join(json.dumps(e.as_dict(), sort_keys=True) + "\n" for e in entries)
    return web.Response(
        text=body,
        content_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="console-audit.jsonl"'},
    )


def add_routes(app: web.Application) -> None:
    """Register the timeline, fleet and audit pages."""
    app.router.add_get("/timeline/{kind:user|host|device}/{name:.+}", timeline)
    app.router.add_get("/fleet", fleet)
    app.router.add_get("/audit", audit_page)
    app.router.add_get("/audit.jsonl", audit_export)

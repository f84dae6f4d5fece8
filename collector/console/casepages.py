"""Cases: the list, a case's page (alerts, notes, status, owner, history), its printable report and
its signed evidence package. Officers and admins change cases; every role reads and exports them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from collector.console import package, params, queries
from collector.console.cases import STATUSES
from collector.console.errors import BadParameter
from collector.console.web import EVERYONE, FORM, OFFICERS, SESSION, ConsoleState, allow, redirect, state_of
from common.ecstime import ecs_now


@allow(*EVERYONE)
async def case_list(request: web.Request) -> web.StreamResponse:
    """GET /cases."""
    state = state_of(request)
    status = params.one(request.query, "status") or None
    if status is not None and status not in STATUSES:
        raise BadParameter("status", f"one of {', '.join(STATUSES)}")
    cases = await state.call(state.cases_read.cases, status=status)
    await state.audit(request, "view", "cases", "", status or "")
    return state.render(request, "cases.html", cases=cases, statuses=STATUSES, shown=status or "")


@allow(*OFFICERS)
async def case_open(request: web.Request) -> web.StreamResponse:
    """POST /cases: a new case (from the queue's chosen alerts, or empty)."""
    state = state_of(request)
    form = request[FORM]
    by = request[SESSION].user
    title = str(form.get("title", "")).strip()
    if not title:
        raise BadParameter("title", "give the case a title")
    owner = params.one(form, "owner") or by
    case = await state.call(
        state.cases.open_case, title, owner=owner, by=by, alerts=params.values(form, "id")
    )
    await state.audit(request, "case", "case", case.id, f"opened: {title}")
    return redirect(f"/cases/{case.id}")


def _event_refs(values: tuple[str, ...]) -> list[tuple[str, int]]:
    """Events named `AGENT:SEQUENCE` (what the timeline's check boxes send)."""
    refs = []
    for value in values:
        agent, _, sequence = value.rpartition(":")
        if not agent or not sequence.isdigit():
            raise BadParameter("event", f"AGENT:SEQUENCE, got {value[:80]!r}")
        refs.append((agent, int(sequence)))
    return refs


@allow(*OFFICERS)
async def case_add(request: web.Request) -> web.StreamResponse:
    """POST /cases/add: add alerts (`id`) or events (`event`, from a timeline) to a case."""
    state = state_of(request)
    form = request[FORM]
    case_id = params.one(form, "case")
    ids = params.values(form, "id")
    refs = _event_refs(params.values(form, "event"))
    if not ids and not refs:
        raise BadParameter("id", "choose at least one alert or event")
    by = request[SESSION].user
    added = await state.call(state.cases.add_alerts, case_id, ids, by=by) if ids else 0
    added_events = await state.call(state.cases.add_events, case_id, refs, by=by) if refs else 0
    detail = f"added {added} alert(s) {', '.join(ids)} and {added_events} event(s)"
    await state.audit(request, "case", "case", case_id, detail)
    return redirect(f"/cases/{case_id}")


@allow(*OFFICERS)
async def case_change(request: web.Request) -> web.StreamResponse:
    """POST /cases/ID/note | status | owner."""
    state = state_of(request)
    form = request[FORM]
    case_id = request.match_info["case_id"]
    what = request.match_info["what"]
    by = request[SESSION].user
    note = str(form.get("note", "")).strip()
    if what == "note":
        await state.call(state.cases.note, case_id, note, by=by)
        detail = note
    elif what == "status":
        status = params.one(form, "status")
        await state.call(state.cases.set_status, case_id, status, note, by=by)
        detail = f"{status}: {note}"
    else:
        owner = params.one(form, "owner")
        await state.call(state.cases.set_owner, case_id, owner, by=by)
        detail = owner
    await state.audit(request, "case", "case", case_id, f"{what}: {detail}")
    return redirect(f"/cases/{case_id}")


async def _case_view(state: ConsoleState, case_id: str) -> dict[str, Any]:
    case, alert_ids, history = await state.call(state.cases_read.case, case_id)

    def read() -> dict[str, Any]:
        alerts = [a for a in (state.reader.alert(i) for i in alert_ids) if a is not None]
        triage = {a["id"]: state.reader.alert_history(a["id"]) for a in alerts}
        evidence = {a["id"]: queries.evidence_events(state.reader, a)[0] for a in alerts}
        refs = state.cases_read.events_of(case_id)
        return {
            "alerts": alerts,
            "triage": triage,
            "evidence": evidence,
            "events": queries.events_by_key(state.reader, refs),
        }

    return {
        "case": case,
        "alert_ids": alert_ids,
        "history": history,
        "statuses": STATUSES,
        **(await state.call(read)),
    }


@allow(*EVERYONE)
async def case_page(request: web.Request) -> web.StreamResponse:
    """GET /cases/ID."""
    state = state_of(request)
    case_id = request.match_info["case_id"]
    view = await _case_view(state, case_id)
    await state.audit(request, "view", "case", case_id)
    return state.render(request, "case.html", **view)


async def _report_parts(state: ConsoleState, case_id: str) -> dict[str, Any]:
    """What the report shows besides the export: the case view and its chain of custody."""
    view = await _case_view(state, case_id)
    custody = await state.call(state.audit_log.entries, targets=(case_id, *view["alert_ids"]), limit=2000)
    return {**view, "custody": custody}


def _draw_report(state: ConsoleState, request: web.Request, parts: dict[str, Any], facts: Any) -> str:
    return state.templates.get_template("report.html").render(
        session=request[SESSION], generated=ecs_now(), facts=facts, **parts
    )


@allow(*EVERYONE)
async def case_report(request: web.Request) -> web.StreamResponse:
    """GET /cases/ID/report: the printable report."""
    state = state_of(request)
    case_id = request.match_info["case_id"]
    await state.audit(request, "export", "case", case_id, "report")
    parts = await _report_parts(state, case_id)
    response = web.Response(
        text=_draw_report(state, request, parts, None), content_type="text/html", charset="utf-8"
    )
    # The report carries its own print styles inline, so it is one self-contained file in the package.
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


@allow(*EVERYONE)
async def case_package(request: web.Request) -> web.StreamResponse:
    """GET /cases/ID/package: the signed evidence package (zip)."""
    state = state_of(request)
    case_id = request.match_info["case_id"]
    _, alert_ids, _ = await state.call(state.cases_read.case, case_id)
    event_ids = [event_id for _, _, event_id in await state.call(state.cases_read.events_of, case_id)]
    # Recorded first, so the package's own chain of custody names this export.
    await state.audit(request, "export", "case", case_id, "evidence package")
    await state.call(state.cases.exported, case_id, "evidence package", by=request[SESSION].user)
    parts = await _report_parts(state, case_id)
    data, _ = await state.call(
        package.build,
        state.reader,
        state.state_dir,
        case_id,
        alert_ids,
        event_ids=event_ids,
        report=lambda facts: _draw_report(state, request, parts, facts),
    )
    return web.Response(
        body=data,
        content_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{case_id}.zip"'},
    )


def add_routes(app: web.Application) -> None:
    """Register the case pages."""
    app.router.add_get("/cases", case_list)
    app.router.add_post("/cases", case_open)
    app.router.add_post("/cases/add", case_add)
    app.router.add_get("/cases/{case_id}", case_page)
    app.router.add_post("/cases/{case_id}/{what:note|status|owner}", case_change)
    app.router.add_get("/cases/{case_id}/report", case_report)
    app.router.add_get("/cases/{case_id}/package", case_package)

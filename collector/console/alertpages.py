"""The alert queue (filters, sort, pages, live refresh), one alert's page, and triage.

Triage goes into the same append-only `alert_triage` history the CLI writes
(`Store.triage_alerts`): close (resolved, false_positive, closed) and reopen change the status;
acknowledge and assign keep it and add a history entry whose note starts with
`acknowledged:` or `assigned to NAME:`. Every triage needs a note.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from collector.console import params, queries
from collector.console.errors import BadParameter
from collector.console.web import EVERYONE, FORM, OFFICERS, SESSION, ConsoleState, allow, redirect, state_of
from collector.store import triage

ACTIONS = ("close", "reopen", "acknowledge", "assign")
ASSIGNED = queries.ASSIGNED
ACKNOWLEDGED = "acknowledged"


def alert_query(request: web.Request) -> queries.AlertQuery:
    """The queue's filters from the page's query (no query at all: the open alerts, newest first)."""
    q = request.query
    if not q:
        return queries.AlertQuery(statuses=(triage.OPEN,))
    sort = params.one(q, "sort", "time")
    if sort not in queries.SORTS:
        raise BadParameter("sort", f"one of {', '.join(queries.SORTS)}")
    severities = params.values(q, "severity")
    for severity in severities:
        if severity not in queries.SEVERITIES:
            raise BadParameter("severity", f"one of {', '.join(queries.SEVERITIES)}")
    statuses = params.values(q, "status")
    for status in statuses:
        if status not in triage.STATUSES:
            raise BadParameter("status", f"one of {', '.join(triage.STATUSES)}")
    return queries.AlertQuery(
        severities=severities,
        statuses=statuses,
        policies=params.values(q, "policy"),
        users=params.values(q, "user"),
        hosts=params.values(q, "host"),
        devices=params.values(q, "device"),
        since=params.moment("since", params.one(q, "since")),
        until=params.moment("until", params.one(q, "until")),
        sort=sort,
        descending=params.one(q, "dir", "desc") != "asc",
        page=params.page_number(q),
    )


def _queue_context(request: web.Request, page: queries.AlertPage) -> dict[str, Any]:
    q = request.query
    query = page.query

    def sort_link(column: str) -> str:
        flip = "asc" if query.sort == column and query.descending else "desc"
        return params.link("/alerts", q, sort=column, dir=flip, page=None)

    return {
        "page": page,
        "query": query,
        "form": {k: ", ".join(params.values(q, k)) for k in ("policy", "user", "host", "device")}
        | {"since": params.one(q, "since"), "until": params.one(q, "until")},
        "severities": queries.SEVERITIES,
        "statuses": triage.STATUSES,
        "closed_statuses": triage.CLOSED_STATUSES,
        "sort_link": sort_link,
        "prev_link": params.link("/alerts", q, page=query.page - 1) if query.page > 1 else "",
        "next_link": params.link("/alerts", q, page=query.page + 1) if query.page < page.pages else "",
        "fragment_link": params.link("/alerts/rows", q),
        "back": request.path_qs,
    }


@allow(*EVERYONE)
async def queue(request: web.Request) -> web.StreamResponse:
    """GET /alerts: the alert queue."""
    state = state_of(request)
    query = alert_query(request)
    page = await state.call(queries.alert_page, state.reader, query)
    owners = await state.call(queries.assignees, state.reader, [str(a["id"]) for a in page.alerts])
    policies = await state.call(queries.policies, state.reader)
    await state.audit(request, "view", "queue", "", request.query_string[:500])
    return state.render(
        request, "queue.html", policies=policies, owners=owners, **_queue_context(request, page)
    )


@allow(*EVERYONE)
async def queue_rows(request: web.Request) -> web.StreamResponse:
    """GET /alerts/rows: the queue's rows alone, which the page fetches to stay current."""
    state = state_of(request)
    page = await state.call(queries.alert_page, state.reader, alert_query(request))
    owners = await state.call(queries.assignees, state.reader, [str(a["id"]) for a in page.alerts])
    return state.render(request, "queue_rows.html", owners=owners, **_queue_context(request, page))


@allow(*EVERYONE)
async def alert(request: web.Request) -> web.StreamResponse:
    """GET /alerts/ID: the summary, evidence, copy lineage, device, triage history and cases."""
    state = state_of(request)
    alert_id = request.match_info["alert_id"]
    body = await state.call(state.reader.alert, alert_id)
    if body is None:
        return state.error(request, 404, f"no such alert: {alert_id}")
    history = await state.call(state.reader.alert_history, alert_id)
    events, missing = await state.call(queries.evidence_events, state.reader, body)
    cases = await state.call(state.cases_read.cases_of_alert, alert_id)
    open_cases = await state.call(state.cases_read.cases, status="open", limit=100)
    await state.audit(request, "view", "alert", alert_id)
    copies = [e for e in events if e.get("event.action") == "file.copy"]
    devices = {str(e["device.serial"]): e for e in events if e.get("device.serial")}
    return state.render(
        request,
        "alert.html",
        alert=body,
        history=history,
        events=events,
        missing=missing,
        copies=copies,
        devices=list(devices.values()),
        cases=cases,
        open_cases=[c for c, _ in open_cases],
        assignee=assignee(history),
        closed_statuses=triage.CLOSED_STATUSES,
        fields=sorted(k for k in body if k not in ("evidence",)),
        back=request.path,
    )


def assignee(history: list[triage.TriageEntry]) -> str:
    """Who the alert was last assigned to ('' if never)."""
    for entry in reversed(history):
        if entry.note.startswith(ASSIGNED):
            return entry.note[len(ASSIGNED) :].split(":", 1)[0]
    return ""


@allow(*OFFICERS)
async def triage_alerts(request: web.Request) -> web.StreamResponse:
    """POST /alerts/triage: close, reopen, acknowledge or assign the chosen alerts, with a note."""
    state = state_of(request)
    form = request[FORM]
    ids = params.values(form, "id")
    action = params.one(form, "action")
    note = str(form.get("note", "")).strip()
    back = str(form.get("back", "/alerts"))
    if action not in ACTIONS:
        raise BadParameter("action", f"one of {', '.join(ACTIONS)}")
    if not ids:
        raise BadParameter("id", "choose at least one alert")
    if not note:
        raise BadParameter("note", "a note is required (say why)")
    by = request[SESSION].user
    if action in ("close", "reopen"):
        status = params.one(form, "status", "closed") if action == "close" else triage.OPEN
        if action == "close" and status not in triage.CLOSED_STATUSES:
            raise BadParameter("status", f"one of {', '.join(triage.CLOSED_STATUSES)}")
        await state.call(state.writer.triage_alerts, list(ids), status, by=by, note=note)
        detail = f"{status}: {note}"
    else:
        who = params.one(form, "assignee") if action == "assign" else ""
        if action == "assign" and not who:
            raise BadParameter("assignee", "name who the alerts go to")
        prefix = f"{ASSIGNED}{who}" if action == "assign" else ACKNOWLEDGED
        await state.call(_keep_status, state, list(ids), by, f"{prefix}: {note}")
        detail = f"{prefix}: {note}"
    for alert_id in ids:
        await state.audit(request, "triage", "alert", alert_id, detail)
    return redirect(back)


def _keep_status(state: ConsoleState, ids: list[str], by: str, note: str) -> None:
    """A history entry for each alert that leaves its status as it is (one transaction per status)."""
    by_status: dict[str, list[str]] = {}
    for alert_id in ids:
        body = state.writer.alert(alert_id)
        if body is None:
            raise triage.AlertNotFound(state.writer.location, [alert_id])
        by_status.setdefault(str(body["status"]), []).append(alert_id)
    for status, group in by_status.items():
        state.writer.triage_alerts(group, status, by=by, note=note)


def add_routes(app: web.Application) -> None:
    """Register the alert pages."""
    app.router.add_get("/alerts", queue)
    app.router.add_get("/alerts/rows", queue_rows)
    app.router.add_post("/alerts/triage", triage_alerts)
    app.router.add_get("/alerts/{alert_id}", alert)

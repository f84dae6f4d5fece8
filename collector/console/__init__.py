"""The officer's and auditor's console: web pages served by the collector over the store the CLI reads.

Rooms (small modules, one job each):
    service.py     starting and stopping the console inside the collector (its own store connections)
    web.py         the aiohttp application: sessions, roles, CSRF, security headers, templates
    loginpages.py  password login, one-time links, logout (rate-limited by limiter.py)
    alertpages.py  the alert queue, one alert's page, triage
    casepages.py   cases, their printable report and signed evidence package
    viewpages.py   timelines (with plot.py's per-day SVG), the fleet page, the audit log
    params.py      reading query and form values with limits
    queries.py     the reads the pages need, in the store's shared SQL
    accounts.py    local accounts and roles (officer, auditor, admin), argon2 password hashes
    logins.py      one-time login links and browser sessions (only hashes of their tokens are stored)
    cases.py       cases: alerts under an owner, a status and notes, with an append-only history
    audit.py       the append-only audit log of logins, views, triage and exports
    package.py     a case as a zip: export + signed manifest + public key + HTML report
    errors.py      the console's exceptions (under common.errors.ExfilGuardError)
Pages are Jinja2 templates (templates/) with one stylesheet and one small script (static/), no build
step. Tables it adds to the store are created at start (collector/store/domain.py). See docs/console.md.
"""

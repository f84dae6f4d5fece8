"""The officer's and auditor's console: web pages served by the collector over the store the CLI reads.

Rooms (small modules, one job each):
    errors.py      the console's exceptions (under common.errors.ExfilGuardError)
    accounts.py    local accounts and roles (officer, auditor, admin), argon2 password hashes
    logins.py      one-time login links and browser sessions (only hashes of their tokens are stored)
    audit.py       the append-only audit log of logins, views, triage and exports
Tables it adds to the store are created on first use (collector/store/domain.py). See docs/console.md.
"""

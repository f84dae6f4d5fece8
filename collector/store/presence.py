"""Fleet presence in the store: which collector each agent streams to, and who raises agent-silent.

Several collectors share one PostgreSQL store (docs/deploy.md), so presence lives there, not in a
collector's memory:

- `agents.collector` names the collector an agent's stream is on. A collector clears the connected
  flag only on its own rows (`collector` is itself), so a late disconnect from the collector an
  agent just left never hides the stream it opened elsewhere.
- `collectors` holds one lease per collector (`seen`, renewed every second). A collector killed
  without a clean stop leaves connected flags behind; any other collector clears them once that
  lease is older than `LEASE_SECONDS`.
- `agents.silent_at` says agent-silent was raised (and when). Claiming is one UPDATE over agents
  no collector has heard from since the cutoff, so when several collectors claim at once each
  silent agent goes to exactly one of them: one alert fleet-wide. A message from the agent after
  that time re-arms it. A clean stop (latest stored event `agent.stop`) is never silence.

- `collectors.signing_key` is the fingerprint of the key each collector signs exports with. A
  fleet has one signing identity: the same `state_dir/evidence/signing.key` on every collector
  (docs/deploy.md); a collector starting with another key than a live one says so (ERROR).

Times are ECS strings (UTC, fixed width), compared as text, as everywhere in the store.
"""

from __future__ import annotations

LEASE_SECONDS = 15.0  # a collector not renewing its lease for this long is gone; its agents are not connected

SQLITE_SCHEMA = (
    "ALTER TABLE agents ADD COLUMN collector TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE agents ADD COLUMN silent_at TEXT NOT NULL DEFAULT ''",
    "CREATE TABLE collectors (name TEXT PRIMARY KEY, listen TEXT NOT NULL, started TEXT NOT NULL,"
    " seen TEXT NOT NULL)",
)
POSTGRES_SCHEMA = (
    "ALTER TABLE agents ADD COLUMN IF NOT EXISTS collector TEXT COLLATE \"C\" NOT NULL DEFAULT ''",
    "ALTER TABLE agents ADD COLUMN IF NOT EXISTS silent_at TEXT COLLATE \"C\" NOT NULL DEFAULT ''",
    "CREATE TABLE IF NOT EXISTS collectors (name TEXT COLLATE \"C\" PRIMARY KEY, listen TEXT NOT NULL,"
    " started TEXT COLLATE \"C\" NOT NULL, seen TEXT COLLATE \"C\" NOT NULL)",
)

# Schema 5: the signing key's fingerprint in each collector's lease.
SQLITE_SCHEMA_5 = ("ALTER TABLE collectors ADD COLUMN signing_key TEXT NOT NULL DEFAULT ''",)
POSTGRES_SCHEMA_5 = ("ALTER TABLE collectors ADD COLUMN IF NOT EXISTS signing_key TEXT NOT NULL DEFAULT ''",)

# (now, seen_before): agents nobody heard from since the cutoff and not cleanly stopped.
CLAIM_SILENT = (
    "UPDATE agents SET silent_at = ? WHERE silent_at = '' AND last_seen <> '' AND last_seen < ?"
    " AND COALESCE((SELECT e.action FROM events e WHERE e.agent_id = agents.id"
    " ORDER BY e.sequence DESC LIMIT 1), '') <> 'agent.stop'"
    " RETURNING id, host, version, last_seen, collector"
)
# (name, listen, started, seen, signing_key): a start sets `started` and the key, a renewal keeps them.
RENEW_LEASE = (
    "INSERT INTO collectors (name, listen, started, seen, signing_key) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET listen = excluded.listen, seen = excluded.seen"
)
START_LEASE = RENEW_LEASE + ", started = excluded.started, signing_key = excluded.signing_key"
# (expired_before,): connected flags left behind by collectors whose lease ran out.
EXPIRE = (
    "UPDATE agents SET connected = false WHERE connected AND collector IN"
    " (SELECT name FROM collectors WHERE seen < ?) RETURNING id"
)
# (name, name): this collector's connected flags (and those of rows no collector claimed yet).
DISCONNECT_MINE = "UPDATE agents SET connected = false WHERE connected AND collector IN ('', ?)"
COLLECTORS = "SELECT name, listen, started, seen, signing_key FROM collectors ORDER BY name"

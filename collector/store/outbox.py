"""The alert outbox: which stored alert each configured sink still owes its delivery.

An alert's outbox rows (one per sink whose route takes it, named by `QueuedSink.key`) are written
in the transaction that stores the alert, and removed once that sink has its final answer
(delivered, or given up after its retries). A collector that dies between the two leaves the rows,
and the next policy process to take the sinks over (at start on SQLite, the fleet's next evaluator
on PostgreSQL) delivers them again: at least once. The same SQL on both stores.
"""

from __future__ import annotations

# Version 7 -> 8.
SCHEMA_8 = (
    "CREATE TABLE IF NOT EXISTS alert_outbox (sink TEXT NOT NULL, alert_id TEXT NOT NULL,"
    " PRIMARY KEY (sink, alert_id))"
)
OWE = "INSERT INTO alert_outbox (sink, alert_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
# (sinks, limit) with the dialect's list fragment: the bodies still owed, the oldest alert first.
OWED = (
    "SELECT o.sink, a.body FROM alert_outbox o JOIN alerts a ON a.id = o.alert_id"
    " WHERE o.sink{in_list} ORDER BY a.ts, a.id, o.sink LIMIT ?"
)
SETTLE = "DELETE FROM alert_outbox WHERE sink = ? AND alert_id = ?"

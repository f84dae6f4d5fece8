"""What the collector knows about people and devices beyond one event: device approvals, per-user
and peer-group baselines, and a per-user risk score. `Behaviour.enrich` adds them to each event
as fields (`device.approved`, `exfilguard.baseline.*`, `exfilguard.risk.*`) before policies see it.

    approvals.py   which removable devices are approved, for everyone, a user or a group
    baselines.py   per-user history: active days, usual hours, removable use, write volume
    risk.py        per-user risk score: signals and alerts, decaying with a half-life
    sightings.py   every removable device seen: ids, first/last seen, users, hosts, bytes, alerts
    enrich.py      Behaviour: the one object the engine calls, and its snapshot for the store
"""

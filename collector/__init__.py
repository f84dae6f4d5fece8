"""The ExfilGuard collector: ingest, storage, policies, alerts, fleet registry and the admin CLI."""

__version__ = "0.1.0"

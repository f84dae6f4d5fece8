"""The ExfilGuard agent: sensors on a workstation, a durable spool, and the stream to the collector."""

__version__ = "0.1.0"

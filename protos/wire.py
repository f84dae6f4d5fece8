"""What the wire contract says outside the messages of exfilguard.proto: gRPC metadata keys."""

from __future__ import annotations

# Trailing metadata of an INVALID_ARGUMENT that refused one event of a batch: that event's
# sequence in decimal. The agent sets that event aside (with an agent.gap, reason `refused`)
# instead of sending it again forever; without it the agent retries as after any failure.
REFUSED_SEQUENCE_KEY = "exfilguard-refused-sequence"

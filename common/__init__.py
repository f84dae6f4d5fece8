"""What both roles share that is not a wire contract: config files, logging, units, errors, systemd.

Imports only `protos` of ours; `agent`, `collector` and `admin` may import it.
"""

"""What both roles share that is not a wire contract: config files, logging, units, errors, systemd.

The bottom room: it imports nothing else of ours; every other package may import it.
"""

"""The contracts both roles share: the wire schema, the event model and config-file loading."""

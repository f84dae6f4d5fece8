"""Evidence an auditor can rely on: the per-agent hash chain, signed exports and their verification."""

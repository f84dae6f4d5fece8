"""Fuzz suites: brief runs in CI (tests/fuzz/test_*.py), long runs by `python -m bench.fuzz`."""

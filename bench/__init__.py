"""Benchmarks: each module is `python -m bench.<name>` and prints ratios against a baseline from the same run.

`python -m bench` runs them all with their default (about two-minute) sizes.
"""

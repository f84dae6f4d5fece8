"""Fuzz at length: every registered fuzz kind for a share of `--minutes`, then one line of JSON.

    python -m bench.fuzz [--minutes 1] [--kind grpc ...]

The kinds are listed in tests/fuzz/kinds.py (the same code the brief CI runs in tests/fuzz/
use); 'grpc' sends hypothesis-drawn and byte-mutated AgentMessages over real gRPC streams to a
real collector process with a well-behaved agent alongside (tests/fuzz/grpc_target.py);
'policy', 'agent-config' and 'collector-config' load generated and mutated policy files and
configs (tests/fuzz/policy_files.py, configs.py); 'export' sends hostile event text through
export and verify and verifies mutated exports and manifests (tests/fuzz/exports.py). Those four
also report `unlocated` (an error without its file and line), `forgeries` (an altered export that
verified), `roundtrip_failures` (an untampered export that did not), `refused` and `accepted`.

The last line is JSON with, summed over the kinds, `inputs`, `crashes`, `hangs`, and
`collector_rss_mib` (the largest collector RSS at the end of a kind), and under `kinds` each
kind's own figures (for 'grpc' also `collector_rss_ratio`, its RSS at the end against its RSS
before the first input, `inputs_per_second`, refusals, tracebacks and ERROR lines in the
collector's log, rows stored unreadable, acknowledged events lost, and the well-behaved agent's
events lost, duplicated and interruptions). The exit code is 1 if any kind found a problem
(see `samples` in its figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fuzz import kinds

PROBLEMS = (
    "crashes", "hangs", "unexpected_status", "tracebacks", "error_lines", "invalid_stored", "acked_lost",
    "honest_lost", "honest_duplicated", "honest_interrupted", "fuzzer_errors", "unlocated", "forgeries",
    "roundtrip_failures",
)


def main() -> int:
    """Run the kinds; print the summary line; exit 1 if anything was found."""
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="total time over all kinds (default 1)")
    parser.add_argument(
        "--kind", action="append", choices=sorted(kinds.KINDS), help="run only these (default: all)"
    )
    args = parser.parse_args()
    chosen = args.kind or sorted(kinds.KINDS)
    share = args.minutes * 60 / len(chosen)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="exfilguard-fuzz-") as tmp:
        for name in chosen:
            print(f"fuzzing {name} for {share:.0f} s", flush=True)
            started = time.monotonic()
            figures = kinds.runner(name)(share, Path(tmp) / name)
            figures["seconds"] = round(time.monotonic() - started, 1)
            results[name] = figures
            for sample in figures.get("samples", [])[:5]:
                print(f"  {name}: {sample[:500]}", flush=True)
    found = {name: [k for k in PROBLEMS if f.get(k)] for name, f in results.items()}
    for name, keys in found.items():
        verdict = "FOUND " + ", ".join(f"{k}={results[name][k]}" for k in keys) if keys else "nothing found"
        print(f"{name}: {results[name].get('inputs', 0)} inputs in {results[name]['seconds']} s: {verdict}")
    summary = {
        "inputs": sum(int(f.get("inputs", 0)) for f in results.values()),
        "crashes": sum(int(f.get("crashes", 0)) for f in results.values()),
        "hangs": sum(int(f.get("hangs", 0)) for f in results.values()),
        "collector_rss_mib": max((float(f.get("collector_rss_mib", 0)) for f in results.values()), default=0),
        "kinds": results,
    }
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

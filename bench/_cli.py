"""What every benchmark's command line shares: its parser, and the options of simulated agents."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m bench.NAME`; --help shows the module docstring `doc` as written."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def scratch(name: str) -> Path:
    """A fresh directory for one run (under $BENCH_DIR when set: a disk other than /tmp)."""
    return Path(tempfile.mkdtemp(prefix=f"exfilguard-bench-{name}-", dir=os.environ.get("BENCH_DIR")))


def agent_options(parser: argparse.ArgumentParser, agents: int, what: str) -> None:
    """--agents (default `agents`, described as `what`), --workers, and the hidden --worker ADDRESS
    and --first-agent that the benchmark passes to each load-generator process it starts."""
    parser.add_argument("--agents", type=int, default=agents, help=what)
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--first-agent", type=int, default=0, help=argparse.SUPPRESS)


def run_worker(
    args: argparse.Namespace, worker: Callable[[argparse.Namespace], Coroutine[Any, Any, None]]
) -> bool:
    """With --worker ADDRESS (the benchmark started this process), run it as one load generator
    and return True: the caller is done."""
    if not args.worker:
        return False
    open_files()
    asyncio.run(worker(args))
    return True


def batch_options(parser: argparse.ArgumentParser) -> None:
    """--batches, --batch-size and --window of agents that send batches as the agent's transport does."""
    parser.add_argument("--batches", type=int, default=50, help="batches per agent")
    parser.add_argument("--batch-size", type=int, default=500, help="events per batch")
    parser.add_argument("--window", type=int, default=8, help="unacked batches per agent (as the agent)")


def open_files() -> int:
    """Lift this process's soft open-files limit to the hard one (each simulated agent holds a
    socket; the soft limit is often 1,024) and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard

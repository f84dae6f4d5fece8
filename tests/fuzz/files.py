"""Fuzzing file inputs (policies, both configs, exports): the tally, the hang limit, text mutations and
the long-run driver that the kinds of this directory share.

A check function gets one input and a Tally; it records what went wrong (`crash`, `unlocated`, ...)
itself, so one bad input never ends a run. `drive` runs a hypothesis strategy through a check for
a number of seconds (generation only, no shrinking: the samples keep the inputs that failed).
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

HANG_SECONDS = 10.0  # one input of these kinds takes milliseconds; this long is a hang (as for grpc)
MAX_SAMPLES = 20


class Hang(Exception):
    """One input ran past HANG_SECONDS."""


@dataclass
class Tally:
    """What a fuzz run found; `figures()` is the dict bench.fuzz prints."""

    inputs: int = 0
    crashes: int = 0  # an exception other than the documented error of the input's loader
    hangs: int = 0
    unlocated: int = 0  # an error that does not name the file (and line, where it has lines)
    forgeries: int = 0  # an altered export that verified
    roundtrip_failures: int = 0  # an untampered export that did not verify
    refused: int = 0  # inputs refused with a clear, located error (the expected outcome for most)
    accepted: int = 0
    samples: list[str] = field(default_factory=list)

    def found(self, what: str, text: str) -> None:
        """Count one problem of kind `what` and keep a sample of it."""
        setattr(self, what, getattr(self, what) + 1)
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(f"{what}: {text}")

    def crash(self, exc: BaseException, data: object) -> None:
        """Count an unexpected exception, keeping its last frames and the input."""
        if isinstance(exc, Hang):
            self.found("hangs", f"{data!r:.300}")
            return
        frames = "".join(traceback.format_exception(exc, limit=-3))
        self.found("crashes", f"{frames[-600:]} on input {data!r:.300}")

    @property
    def problems(self) -> int:
        """Everything that should never happen."""
        return self.crashes + self.hangs + self.unlocated + self.forgeries + self.roundtrip_failures

    def figures(self) -> dict[str, Any]:
        """The figures for bench.fuzz (inputs, crashes, hangs, and the rest)."""
        return {
            "inputs": self.inputs,
            "crashes": self.crashes,
            "hangs": self.hangs,
            "unlocated": self.unlocated,
            "forgeries": self.forgeries,
            "roundtrip_failures": self.roundtrip_failures,
            "refused": self.refused,
            "accepted": self.accepted,
            "samples": list(self.samples),
        }


@contextlib.contextmanager
def hang_limit(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Raise Hang in the main thread if the block runs longer than `seconds`."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise Hang(f"longer than {seconds} s")

    # pytest-timeout may have its own alarm running: it is put back (less the time spent) after.
    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))
    # The alarm's exception is lost when it lands in a callback (a gc hook, a __del__): count the
    # hang by the clock as well.
    elapsed = time.monotonic() - started
    if elapsed > seconds:
        raise Hang(f"took {elapsed:.1f} s")


# Fragments that have broken YAML loaders and the code behind them.
NASTY_FRAGMENTS = (
    "&a ", "*a", "*undefined", "<<: *a", "!!python/object:os.system ", "!!binary ", "!!int ", "!!float ",
    "!!timestamp ", "!!set ", "!!omap ", "? ", "- ", ": ", "[", "]", "{", "}", "---\n", "...\n",
    "%YAML 1.1\n",
    "\t", "\x00", "\x85", "\u2028", "\ufeff", "\ud7ff", "'", '"', "\\", "#", "|", ">", "~", "null", "NaN",
    ".inf", "-.inf", "1e999", "0x_1", "9" * 5000, "on", "no", "2026-13-45", "12:61", "25:00", "-1",
    "(a+)+$", "(x)\\1", "(?=x)", "[[:alpha:]", "*" * 200, "%", "{" * 200, "[" * 200, "a" * 70_000,
)  # fmt: skip

# (operation, position as a fraction of the text, fragment or count)
Mutation = tuple[str, float, str | int]


def mutations() -> st.SearchStrategy[list[Mutation]]:
    """A few edits of a text: insert a nasty fragment, flip a byte, delete, duplicate, cut."""
    where = st.floats(min_value=0, max_value=1)
    one = st.one_of(
        st.tuples(st.just("insert"), where, st.sampled_from(NASTY_FRAGMENTS)),
        st.tuples(st.just("insert"), where, st.text(max_size=8)),
        st.tuples(st.just("flip"), where, st.integers(1, 255)),
        st.tuples(st.just("delete"), where, st.integers(1, 64)),
        st.tuples(st.just("duplicate"), where, st.integers(1, 400)),
        st.tuples(st.just("cut"), where, st.integers(0, 0)),
        st.tuples(st.just("swap_lines"), where, st.integers(1, 40)),
    )
    return st.lists(one, min_size=1, max_size=6)


def random_mutations(rng: random.Random) -> list[Mutation]:
    """As `mutations`, drawn with a plain random generator (cheap, for long runs)."""
    edits: list[Mutation] = []
    for _ in range(rng.randint(1, 6)):
        op = rng.choice(("insert", "insert", "flip", "delete", "duplicate", "cut", "swap_lines"))
        arg: str | int
        if op == "insert":
            arg = rng.choice(NASTY_FRAGMENTS)
        elif op == "flip":
            arg = rng.randint(1, 255)
        elif op == "cut":
            arg = 0
        else:
            arg = rng.randint(1, 400)
        edits.append((op, rng.random(), arg))
    return edits


def mutate(data: bytes, edits: list[Mutation]) -> bytes:
    """Apply `edits` to `data` (see `mutations`)."""
    out = bytearray(data)
    for op, fraction, arg in edits:
        at = int(fraction * len(out))
        if op == "insert":
            out[at:at] = str(arg).encode("utf-8", "surrogatepass")
        elif op == "flip" and out:
            at = min(at, len(out) - 1)
            out[at] ^= int(arg)
        elif op == "delete":
            del out[at : at + int(arg)]
        elif op == "duplicate":
            out[at:at] = out[at : at + int(arg)]
        elif op == "cut":
            del out[at:]
        elif op == "swap_lines":
            lines = bytes(out).split(b"\n")
            if len(lines) > 1:
                i = min(int(fraction * len(lines)), len(lines) - 1)
                j = (i + int(arg)) % len(lines)
                lines[i], lines[j] = lines[j], lines[i]
                out = bytearray(b"\n".join(lines))
    return bytes(out)


class _Done(Exception):
    """The run's time is up."""


def drive(strategy: st.SearchStrategy[Any], check: Callable[[Any, Tally], None], seconds: float) -> Tally:
    """Run `check` on inputs drawn from `strategy` for about `seconds`; the tally of what it found."""
    tally = Tally()
    stop = time.monotonic() + seconds

    @settings(
        max_examples=10**9,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(value: Any) -> None:
        if time.monotonic() > stop:
            raise _Done
        tally.inputs += 1
        check(value, tally)

    with contextlib.suppress(_Done):
        one()
    return tally

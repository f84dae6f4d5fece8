"""`exfilguard-collector --config FILE`: load the config, open the store, serve agents until SIGTERM/SIGINT.

Exit codes: 0 clean stop, 1 runtime failure (store, port), 2 bad command line or config, or a
damaged store (the start-up integrity check, collector/store/integrity.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import Sequence

from collector import __version__
from collector import config as collector_config
from collector.alerts.dispatch import check_sinks
from collector.alerts.errors import SinkSetupError
from collector.config import CollectorConfig
from collector.fleet.config import FleetSource
from collector.listeners import EventListener
from collector.server import serve
from collector.store import Store, StoreCorrupt, StoreError, integrity, open_store
from common import logs
from common.errors import ExfilGuardError
from common.yamlfile import YamlError

log = logging.getLogger("exfilguard.collector")


def build_listeners(config: CollectorConfig, store: Store) -> list[EventListener]:
    """Everything that consumes stored events: the policy process (collector/policy/process.py), and
    the forward process (collector/forward/process.py) when `forward:` is configured.

    The policy process starts when the collector does (`open`), loads the policies and rebuilds its
    windows from the store; a broken policy set makes the start fail, naming every problem in the log.
    """
    from collector.policy.process import PolicyProcess

    listeners: list[EventListener] = [PolicyProcess(config)]
    if config.forward:
        from collector.forward.process import ForwardProcess

        listeners.append(ForwardProcess(config))
    return listeners


_SPARE_FILES = 256  # the store, its WAL, the sealer's pipes, sinks, metrics, logs


def _raise_open_files_limit(config: CollectorConfig) -> None:
    """Each agent stream is a socket: lift the soft open-files limit (often 1,024) to the hard one,
    and say so when even that is too low for `max_streams` (streams past it fail to connect)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    needed = config.max_streams + config.max_pending_hellos + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open files limit is %d, but max_streams %d and max_pending_hellos %d need about %d: "
            "raise LimitNOFILE (systemd) or ulimit -n, or fewer agents can connect",
            soft,
            config.max_streams,
            config.max_pending_hellos,
            needed,
        )


async def _run(config: CollectorConfig, store: Store, fleet: FleetSource | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(config, store, stop, build_listeners(config, store), fleet)


def _signing_key(config: CollectorConfig) -> None:
    """Create the evidence signing key on first start (exports are signed with it)."""
    from collector.evidence import keys
    from collector.evidence.errors import EvidenceError

    try:
        public = keys.load_or_create(config.state_dir).public
    except EvidenceError as exc:
        # Collecting matters more than signing: keep running, exports will name the problem.
        log.error("evidence signing key unusable, exports cannot be signed: %s", exc)
        return
    log.info("evidence signing key %s", public.fingerprint())


def _store_is_whole(config: CollectorConfig) -> bool:
    """Quick-check a SQLite store before serving (bounded by store_check_seconds); False: refuse to start."""
    if "://" in config.store or config.store_check_seconds <= 0:
        return True
    try:
        report = integrity.check_sqlite(config.store, config.store_check_seconds)
    except StoreError as exc:
        report = integrity.IntegrityReport(exc.location, [exc.message])
    if report.problems:
        found = "; ".join(report.problems)
        message = (
            f"store {report.path} is damaged ({found}); refusing to start so that no write is acknowledged "
            "into it. Restore it from a backup, or recover it (docs/collector.md#store-integrity)"
        )
        log.error(message, extra={"store": report.path})
        print(f"exfilguard-collector: {message}", file=sys.stderr)
        return False
    if not report.complete:
        log.warning(
            "store integrity check stopped after %.1f s (store_check_seconds) before the end of %s",
            report.seconds,
            report.path,
            extra={"store": report.path},
        )
    else:
        log.info("store integrity check passed in %.2f s", report.seconds, extra={"store": report.path})
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `exfilguard-collector` console script."""
    parser = argparse.ArgumentParser(prog="exfilguard-collector", description="ExfilGuard collector")
    parser.add_argument(
        "--config", default=collector_config.default_path(), help="collector.yaml (default: %(default)s)"
    )
    parser.add_argument("--version", action="version", version=f"exfilguard-collector {__version__}")
    args = parser.parse_args(argv)
    try:
        config = collector_config.load(args.config)
    except YamlError as exc:
        print(f"exfilguard-collector: bad config: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    fleet = None
    if config.agent_config:
        try:
            fleet = FleetSource(config.agent_config)  # a broken fleet file is a config error
        except YamlError as exc:
            print(f"exfilguard-collector: bad agent_config: {exc}", file=sys.stderr)
            return 2
    _raise_open_files_limit(config)
    if not _store_is_whole(config):
        return 2
    try:
        store = open_store(config.store)
    except StoreError as exc:  # a damaged store needs an admin (2); one that is unavailable may come back (1)
        return _failed("cannot open the store", exc, 2 if isinstance(exc, StoreCorrupt) else 1)
    _signing_key(config)
    try:
        check_sinks(config.alerts)  # the policy process builds the sinks: a missing secret is said here
        asyncio.run(_run(config, store, fleet))
    except SinkSetupError as exc:  # a secret or template a sink names is missing or bad: config
        return _failed("bad config", exc, 2, say="bad config: ")
    except ExfilGuardError as exc:
        return _failed("collector failed", exc, 1)
    finally:
        store.close()
    return 0


def _failed(what: str, exc: Exception, code: int, say: str = "") -> int:
    """Log why the collector stops (`what: exc`) and say it on stderr; returns the exit code."""
    log.error("%s: %s", what, exc)
    print(f"exfilguard-collector: {say}{exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

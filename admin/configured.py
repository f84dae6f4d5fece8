"""The collector's store as an admin command opens it: from collector.yaml, closed when done.

Exit codes every command that reads the store shares: 1 the store failed, 2 a bad config or
bad input; a command adds its own refusals (an unknown alert, nothing to change) above them.
"""

from __future__ import annotations

from collections.abc import Callable

from admin.terminal import Exit, fail
from collector import config as collector_config
from collector.store import Store, StoreError, open_store
from common.yamlfile import YamlError

EXIT_STORE = 1
EXIT_USAGE = 2

# A command's own reading of a store error: (message, exit code), or None for the plain one.
Refusal = Callable[[StoreError], "tuple[str, int] | None"]


def load_configured(command: str, config_path: str | None) -> collector_config.CollectorConfig:
    """The collector's config (default path if None); a bad one is said as `exfilguard COMMAND: bad
    config: ...` and ends the command (Exit, EXIT_USAGE)."""
    try:
        return collector_config.load(config_path or collector_config.default_path())
    except YamlError as exc:
        raise Exit(fail(command, f"bad config: {exc}", EXIT_USAGE)) from None


def open_configured(config_path: str | None, *, readonly: bool) -> Store:
    """The store of the collector's config (default path if None); YamlError, StoreError."""
    config = collector_config.load(config_path or collector_config.default_path())
    # Open read-only first: a writable open would create an empty SQLite store at a wrong path.
    store = open_store(config.store, readonly=True)
    if not readonly:
        store.close()
        store = open_store(config.store)
    return store


def with_store(
    command: str,
    config_path: str | None,
    work: Callable[[Store], int],
    *,
    readonly: bool,
    refusal: Refusal = lambda exc: None,
) -> int:
    """Run `work` on the configured store and close it; errors become `exfilguard COMMAND: ...` and a code."""
    try:
        store = open_configured(config_path, readonly=readonly)
    except YamlError as exc:
        return fail(command, f"bad config: {exc}", EXIT_USAGE)
    except StoreError as exc:
        return fail(command, str(exc), EXIT_STORE)
    try:
        try:
            return work(store)
        finally:
            store.close()
    except StoreError as exc:
        message, code = refusal(exc) or (str(exc), EXIT_STORE)
        return fail(command, message, code)

"""Reading a named file that must stay small (keys, manifests, PKI state), errors located at the file."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import PathError


def read_limited(
    path: str | os.PathLike[str],
    limit: int,
    error: type[PathError],
    *,
    too_large: str,
    cannot_read: str = "cannot read: ",
) -> bytes:
    """The bytes of the file, at most `limit` of them; `error(path, ...)` when unreadable or larger.

    Reads one byte past the limit rather than trusting stat(): the file may be a pipe or grow.
    """
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(path, f"{cannot_read}{exc.strerror or exc}") from exc
    if len(data) > limit:
        raise error(path, too_large)
    return data

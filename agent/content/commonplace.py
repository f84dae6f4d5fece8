"""Content every machine has, which a tagged tree holds too but which is no evidence of a copy.

`git init` and `git clone` copy git's repository templates (hook samples, `description`,
`info/exclude`) into every repository, and `useradd` copies the skeleton of a new home
(`.bashrc`, `.profile`) into every home: a tagged source tree or home holds byte-identical
files, so every clone or home backup written to a stick would otherwise be an exact copy of
tagged data. The same goes for the licence texts the system ships (`/usr/share/common-licenses`:
Apache-2.0, the GPLs, ...): a tagged repository's `LICENSE` is one of them word for word, and so
is that of every open-source project a user copies. Like empty files and files of a few bytes
(`too_small`), these contents are never matched, whole or in part. So is what git keeps beside a
repository's objects (`HEAD`, `config`, refs, logs, hooks): the same few bytes in every
repository on the same branch. A tagged repository's files and its objects still match.
"""

from __future__ import annotations

import functools
import hashlib
import os

TEMPLATE_DIRS = ("/usr/share/git-core/templates", "/etc/skel", "/usr/share/common-licenses")
# A file of fewer bytes than this (a one-line requirements.txt, a .gitignore, an .editorconfig, a
# package marker holding a newline) is byte for byte countless files that never saw a tagged
# tree: like an empty file, equal content is no evidence on its own, whole or as an archive
# member. A writer that read the tagged file while writing is still tied to it by lineage.
MIN_EVIDENT_BYTES = 128
_MAX_BYTES = 1 << 20  # templates and licence texts are small; anything larger is not one


@functools.cache
def common_digests() -> frozenset[str]:
    """SHA-256 of every file in the template directories (read once, on first use)."""
    found: set[str] = set()
    for top in TEMPLATE_DIRS:
        for where, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(where, name)  # noqa: PTH118 - os.walk's own strings
                try:
                    if os.stat(path).st_size <= _MAX_BYTES:  # noqa: PTH116
                        with open(path, "rb") as fh:  # noqa: PTH123
                            found.add(hashlib.sha256(fh.read()).hexdigest())
                except OSError:
                    continue
    return frozenset(found)


def too_small(size: int) -> bool:
    """Whether a whole file (or member) this small says nothing by its content alone."""
    return size < MIN_EVIDENT_BYTES


def commonplace(sha256: str) -> bool:
    """Whether this content ships with the system and is copied into every repository or home."""
    return bool(sha256) and sha256 in common_digests()


def commonplace_source(path: str, sha256: str) -> bool:
    """Whether a match with the tagged file at `path` (content `sha256`) is no evidence: the
    content is commonplace, or the file is git's bookkeeping rather than the repository's data."""
    return commonplace(sha256) or git_bookkeeping(path)


def git_bookkeeping(path: str) -> bool:
    """Whether `path` is in a repository's `.git` directory but not among its objects."""
    _, git, inside = path.partition("/.git/")
    return bool(git) and not inside.startswith("objects/")

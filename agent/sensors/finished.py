"""Whether a file closed after a write on removable media is finished, or may change name or
content in a moment.

A close-after-write is handled at once (the alert path) unless one of these says wait:
  - the name is a temporary one, renamed when complete (rsync's `.name.XXXXXX`, zip's
    `ziXXXXXX`, a browser's `.part`, an editor's `~`): handled a moment later, under the
    final name;
  - the file is still open for writing by someone else (two writers, or a writer that
    reopened it): a read lease, which the kernel grants only while nobody has the file open
    for writing, is taken and dropped at once to find out.
"""

from __future__ import annotations

import fcntl
import re

# leading dot: rsync, GIO's .goutputstream-XXXXXX, many savers; zi + 6: zip's mktemp
_TEMPORARY = re.compile(r"^\.|^zi[A-Za-z0-9]{6}$|~$|\.(tmp|temp|part|partial|crdownload|download|swp)$",
                        re.IGNORECASE)


def temporary_name(name: str) -> bool:
    """Whether a file name is one that writers use before renaming to the final name."""
    return bool(_TEMPORARY.search(name))


def open_for_writing(fd: int) -> bool:
    """Whether anyone has the file open as read-only `fd` open for writing (unknown: True)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return True  # EAGAIN: a writer holds it; else (no leases on this file system): not known
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False

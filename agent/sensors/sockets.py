"""SocketPairs: which AF_UNIX sockets are ends of a socketpair, and so link processes like a pipe.

`rsync` (its sender and receiver), `ssh` (sshd and the session) and many programs that fork a
helper talk over `socketpair(AF_UNIX, SOCK_STREAM)`: two connected sockets, neither with an
address. /proc/PID/fd shows each end as `socket:[N]`, with no sign of the other end; the
kernel's sock_diag netlink interface (UNIX_DIAG_PEER) names the peer. A pair is a *channel*,
numbered by the smaller of its two inodes, through which data flows both ways.

A client connected to a listening socket (a daemon: D-Bus, journald, X) is not a pair: the
daemon's end has an address. Such links are not followed, or every process talking to the same
daemon would share what any of them read.

Answers are cached per inode (sockfs inode numbers are not reused in practice: a 32-bit
counter per boot), at most `MAX_CACHED`; a netlink socket is opened for each inode not cached
(two questions, ~0.1 ms), so nothing stays open. Without sock_diag (no AF_NETLINK, another
network namespace) nothing is a pair.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections import OrderedDict

log = logging.getLogger(__name__)

MAX_CACHED = 8192
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
UDIAG_SHOW_NAME = 0x1
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_NAME = 0
UNIX_DIAG_PEER = 2
_NO_COOKIE = 0xFFFFFFFF
_CONNECTED = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
_HEADER = struct.Struct("=IHHII")         # nlmsghdr
_REQUEST = struct.Struct("=BBHIIIII")     # unix_diag_req
_REPLY = struct.Struct("=BBBBIII")        # unix_diag_msg
_ATTR = struct.Struct("=HH")              # rtattr (nlattr)


class SocketPairs:
    """Channel ids of socketpair ends, from the kernel's sock_diag (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, int] = OrderedDict()  # inode -> channel (0: not a pair)
        self._unavailable = False

    def channel(self, inode: int) -> int:
        """The channel of the socket with this inode if it is one end of a socketpair (the
        smaller of the two ends' inodes), else 0."""
        with self._lock:
            known = self._cache.get(inode)
            if known is not None:
                return known
            found = self._pair_of(inode) if not self._unavailable else 0
            for end in (inode, found) if found else (inode,):
                self._cache[end] = min(inode, found) if found else 0
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
            return self._cache[inode]

    def _pair_of(self, inode: int) -> int:
        # under the lock: the peer's inode when both ends are connected, address-less sockets
        try:
            netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                    NETLINK_SOCK_DIAG)
        except (OSError, AttributeError) as exc:
            self._unavailable = True
            log.info("socketpairs are not followed (sock_diag unavailable: %s)", exc)
            return 0
        with netlink:
            netlink.settimeout(1.0)
            mine = _ask(netlink, inode, 1)
            if mine is None or mine[1] or not mine[2]:
                return 0
            peer = _ask(netlink, mine[2], 2)
        if peer is None or peer[1] or peer[2] != inode:
            return 0
        return mine[2]


def _ask(netlink: socket.socket, inode: int, seq: int) -> tuple[int, bool, int] | None:
    """(socket type, has an address, peer inode) of an AF_UNIX socket; None if unknown."""
    request = _REQUEST.pack(socket.AF_UNIX, 0, 0, _NO_COOKIE, inode, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER,
                            _NO_COOKIE, _NO_COOKIE)
    try:
        netlink.send(_HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
                     + request)
        data = netlink.recv(8192)
    except OSError as exc:
        log.debug("sock_diag about socket %d: %s", inode, exc)
        return None
    if len(data) < _HEADER.size:
        return None
    length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data)
    if kind == NLMSG_ERROR or length < _HEADER.size + _REPLY.size:
        return None  # gone, or in another network namespace
    stype = _REPLY.unpack_from(data, _HEADER.size)[1]
    named, peer = False, 0
    offset = _HEADER.size + _REPLY.size
    while offset + _ATTR.size <= min(length, len(data)):
        size, attr = _ATTR.unpack_from(data, offset)
        if size < _ATTR.size:
            break
        if attr == UNIX_DIAG_NAME:
            named = True
        elif attr == UNIX_DIAG_PEER and size >= _ATTR.size + 4:
            (peer,) = struct.unpack_from("=I", data, offset + _ATTR.size)
        offset += (size + 3) & ~3
    return stype, named, peer if stype in _CONNECTED else 0

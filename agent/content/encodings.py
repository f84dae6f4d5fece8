"""Text encodings of binary data: base64, base32, plain hex and hex dumps, decoded for matching.

`base64 db/ledger.db`, `xxd`, `hexdump -C`, `od -t x1` turn a tagged file into text that shares
no chunk, line or field with it, and is up to 5 times larger (more than byte lineage allows).
The identifier asks `sniff(head)` of a written text that matched nothing, and identifies
`decode(...)` of it instead: the bytes it stands for, an archive among them.

    encoding = sniff(head)                  # "base64", "hexdump", ... or ""
    data, whole = decode(encoding, text)    # at most MAX_DECODED bytes; whole: all of it

Recognised only when every line of the head has the encoding's shape: a CSV or a log is
never taken for one (a hex dump's own lines are never a CSV's either).
"""

from __future__ import annotations

import base64
import binascii
import re

MAX_DECODED = 32 << 20  # bytes decoded from one file (the rest is left out: `whole` False)
_MIN_LINES = 2          # a head of fewer full lines is too little to tell

_B64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")
_B32 = re.compile(rb"[A-Z2-7]{16,}={0,6}")
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2}){8,}")
# xxd: "00000010: 4865 6c6c 6f0a ...  Hello." (groups of 2 bytes, big-endian)
_XXD = re.compile(rb"[0-9a-f]{8}: ((?:[0-9a-f]{2,4} ?){1,16}) ")
# hexdump -C: "00000010  48 65 6c 6c  ... |Hello.|"; `*` squeezes repeats of the line before
_HEXDUMP_C = re.compile(rb"[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2}){1,16}) *\|.*")
# od -t x1 / hexdump -C's offsets without the text column: "0000020 48 65 6c 6c ..."
_OD_X1 = re.compile(rb"([0-7]{7}|[0-9a-f]{6,8})((?: [0-9a-f]{2}){1,16})")
_OFFSET_ONLY = re.compile(rb"[0-9a-f]{6,8}")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def sniff(head: bytes) -> str:
    """The encoding the first bytes of a text are in ("base64", "base32", "hex", "xxd",
    "hexdump", "od") or "" when they are in none (or too few lines to tell)."""
    lines = head.split(b"\n")[:-1]  # the last may be cut short by the head's end
    if len(lines) < _MIN_LINES:
        return ""
    for name, shape in (("xxd", _XXD), ("hexdump", _HEXDUMP_C), ("od", _OD_X1)):
        # xxd's text column follows its hex without a mark: its lines are matched at the start
        fits = shape.match if name == "xxd" else shape.fullmatch
        if fits(lines[0]) and all(fits(line) or line == b"*" or _OFFSET_ONLY.fullmatch(line)
                                  for line in lines):
            return name
    widths = {len(line) for line in lines[:-1]}
    if len(widths) != 1:
        return ""  # an encoder's lines are of one width, but the last
    for name, shape, alphabet in (("hex", _HEX, b"0123456789abcdefABCDEF"),
                                  ("base32", _B32, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567="),
                                  ("base64", _B64, _B64_ALPHABET)):
        # the last line may be short (what was left, and its padding)
        if all(shape.fullmatch(line) for line in lines[:-1]) and lines[-1] \
                and not lines[-1].translate(None, alphabet):
            return name
    return ""


def decode(encoding: str, text: bytes) -> tuple[bytes, bool]:
    """The bytes `text` encodes (at most MAX_DECODED), and whether that is all of them; what
    does not decode ends the data there (a text edited by hand after the encoder)."""
    lines = text.split(b"\n")
    if encoding in ("base64", "base32", "hex"):
        return _decode_plain(encoding, lines)
    return _decode_dump(encoding, lines)


def _decode_plain(encoding: str, lines: list[bytes]) -> tuple[bytes, bool]:
    joined = b"".join(line.strip() for line in lines)
    quantum, per_quantum = {"base64": (4, 3), "base32": (8, 5), "hex": (2, 1)}[encoding]
    keep = min(len(joined), MAX_DECODED // per_quantum * quantum)
    keep -= keep % quantum
    try:
        if encoding == "base64":
            data = base64.b64decode(joined[:keep])
        elif encoding == "base32":
            data = base64.b32decode(joined[:keep])
        else:
            data = bytes.fromhex(joined[:keep].decode("ascii"))
    except (binascii.Error, ValueError):
        return b"", False
    return data, keep == len(joined)


def _decode_dump(encoding: str, lines: list[bytes]) -> tuple[bytes, bool]:
    out = bytearray()
    last = b""
    squeezed = False
    for line in lines:
        if not line:
            continue
        if line == b"*":
            squeezed = True
            continue
        row, offset = _row(encoding, line)
        if offset is None:
            return bytes(out), False
        if squeezed and last:
            # the line before, repeated up to this one's offset
            while len(out) + len(last) <= offset and len(out) < MAX_DECODED:
                out += last
            squeezed = False
        if len(out) >= MAX_DECODED:
            return bytes(out[:MAX_DECODED]), False
        out += row
        last = row
    return bytes(out), True


def _row(encoding: str, line: bytes) -> tuple[bytes, int | None]:
    """(the bytes of one dump line, its offset); offset None when the line is not one."""
    if encoding == "xxd":
        found = _XXD.match(line)
        offset = int(line[:8], 16)
    elif encoding == "hexdump":
        found = _HEXDUMP_C.fullmatch(line)
        offset = int(line[:8], 16) if found or _OFFSET_ONLY.fullmatch(line) else -1
    else:
        found = _OD_X1.fullmatch(line)
        head = line.split(b" ", 1)[0]
        offset = int(head, 8 if len(head) == 7 and head.isdigit() else 16) if head else -1
    if offset < 0:
        return b"", None
    if found is None:
        return b"", offset if _OFFSET_ONLY.fullmatch(line) else None  # the dump's last offset
    digits = (found.group(2) if encoding == "od" else found.group(1)).replace(b" ", b"")
    try:
        return bytes.fromhex(digits.decode("ascii")), offset
    except ValueError:
        return b"", None

"""Text encodings of binary data: base64, base32, plain hex and hex dumps, decoded for matching;
and text in a wide Unicode form (UTF-16, UTF-32), decoded back to UTF-8.

`base64 db/ledger.db`, `xxd`, `hexdump -C`, `od -t x1` turn a tagged file into text that shares
no chunk, line or field with it, and is up to 5 times larger (more than byte lineage allows).
`iconv -t UTF-16 db/customers.csv` (what a Windows tool or a spreadsheet saves) puts a NUL beside
every ASCII byte: no chunk, no line, no field of the CSV is left, and the file, twice its size,
does not look like text at all. The identifier asks `sniff(head)` of a written file that matched
nothing, and identifies `decode(...)` of it instead: the bytes it stands for, an archive among
them (for a wide text: the UTF-8 text it was made from, byte for byte when it was made from it).

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
# xxd -b: "00000000: 01101001 01100100 ...  id" (six bytes a line, as bits)
_XXD_B = re.compile(rb"[0-9a-f]{8}: ((?:[01]{8} ){1,6}) ")
# od's other types, one token a value, 16 bytes a line, an offset first unless -An: -b and -t o1
# (three octal digits), the default -t o2 (six, little-endian words), -t d1 / -t u1 (decimal),
# -x (four hex digits, little-endian words), -An -t x1 (two hex digits, no offset)
_OD_TOKENS = {"od-o1": (re.compile(rb"[0-7]{3}"), 8, 1), "od-o2": (re.compile(rb"[0-7]{6}"), 8, 2),
              "od-d1": (re.compile(rb"-?[0-9]{1,3}"), 10, 1), "od-x2": (re.compile(rb"[0-9a-f]{4}"), 16, 2),
              "od-x1": (re.compile(rb"[0-9a-f]{2}"), 16, 1)}
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
               (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_MIN_WIDE_BYTES = 64     # fewer, without a byte order mark, are too few to tell
_WIDE_ZERO_SHARE = 0.9   # of the high bytes of a wide text's code units: NUL (ASCII, Latin-1)


def wide_text(head: bytes) -> str:
    """The wide Unicode form a file's first bytes are text in ("utf-16", "utf-16-le",
    "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"), or "". With a byte order mark, the mark
    says; without one, the high bytes of nearly every code unit are NUL and the low ones are
    text (no NUL among them): a binary file with runs of zeros is not taken for one."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            # the mark alone is two bytes any binary file may begin with: what follows must
            # decode, and be text (no more control characters than a text has)
            unit = 4 if name == "utf-32" else 2
            body = head[: len(head) - len(head) % unit]
            chars = body.decode(name, errors="replace")  # a pair cut at the head's end: one U+FFFD
            control = sum(1 for c in chars if c < "\t" or "\r" < c < " " or c == "\ufffd")
            return name if len(chars) >= 2 and control * 50 <= len(chars) else ""
    size = len(head) - len(head) % 4
    if size < _MIN_WIDE_BYTES:
        return ""
    head = head[:size]
    units = size // 4
    for name, low, zeros in (("utf-32-le", head[0::4], (head[1::4], head[2::4], head[3::4])),
                             ("utf-32-be", head[3::4], (head[0::4], head[1::4], head[2::4]))):
        if b"\x00" not in low and all(z.count(0) >= _WIDE_ZERO_SHARE * units for z in zeros):
            return name
    units = size // 2
    for name, low, high in (("utf-16-le", head[0::2], head[1::2]), ("utf-16-be", head[1::2], head[0::2])):
        if b"\x00" not in low and high.count(0) >= _WIDE_ZERO_SHARE * units:
            return name
    return ""


def sniff(head: bytes) -> str:
    """The encoding the first bytes of a written file are in ("base64", "base32", "hex", "xxd",
    "hexdump", "od", or a wide Unicode form: `wide_text`) or "" when they are in none (or too
    few lines to tell)."""
    wide = wide_text(head)
    if wide:
        return wide
    lines = head.split(b"\n")[:-1]  # the last may be cut short by the head's end
    if len(lines) < _MIN_LINES:
        return ""
    if all(_XXD_B.match(line) for line in lines):  # before xxd: its bits read as hex digits too
        return "xxd-b"
    for name, shape in (("xxd", _XXD), ("hexdump", _HEXDUMP_C), ("od", _OD_X1)):
        # xxd's text column follows its hex without a mark: its lines are matched at the start
        fits = shape.match if name == "xxd" else shape.fullmatch
        if fits(lines[0]) and all(fits(line) or line == b"*" or _OFFSET_ONLY.fullmatch(line)
                                  for line in lines):
            return name
    od = _od_kind(lines)
    if od:
        return od
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


def _od_values(line: bytes) -> list[bytes]:
    """The value tokens of an od line: all but the offset, which starts a line unless -An."""
    tokens = line.split()
    return tokens[1:] if line[:1] not in b" \t" else tokens


def _od_kind(lines: list[bytes]) -> str:
    """Which of od's other types (`_OD_TOKENS`) every line of a head is in, or ""."""
    values = [_od_values(line) for line in lines if line != b"*"]
    if not any(values) or any(len(row) > 16 for row in values):
        return ""
    tokens = [t for row in values for t in row]
    for name, (shape, base, width) in _OD_TOKENS.items():
        if not all(shape.fullmatch(t) for t in tokens):
            continue
        if name == "od-d1" and not any(len(t) < 3 or t.startswith(b"-") for t in tokens):
            continue  # three digits throughout: octal (-b) reads the same way, and comes first
        if all(-128 <= int(t, base) < 256 ** width for t in tokens):
            return name
    return ""


def decode(encoding: str, text: bytes) -> tuple[bytes, bool]:
    """The bytes `text` encodes (at most MAX_DECODED), and whether that is all of them; what
    does not decode ends the data there (a text edited by hand after the encoder)."""
    if encoding.startswith("utf-"):
        return _decode_wide(encoding, text)
    lines = text.split(b"\n")
    if encoding in ("base64", "base32", "hex"):
        return _decode_plain(encoding, lines)
    return _decode_dump(encoding, lines)


def _decode_wide(encoding: str, text: bytes) -> tuple[bytes, bool]:
    unit = 4 if encoding.startswith("utf-32") else 2
    keep = len(text) - len(text) % unit
    # a character that does not decode (a cut surrogate pair, a stray byte) stands as U+FFFD:
    # the rest of the text is still the text it was
    data = text[:keep].decode(encoding, errors="replace").encode("utf-8", errors="replace")
    whole = keep == len(text) and len(data) <= MAX_DECODED
    return data[:MAX_DECODED], whole


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
        if not row and len(out) - 2 < offset < len(out):
            del out[offset:]  # the closing offset is the size: od pads a last odd byte to a word
        out += row
        last = row
    return bytes(out), True


def _row(encoding: str, line: bytes) -> tuple[bytes, int | None]:
    """(the bytes of one dump line, its offset); offset None when the line is not one."""
    if encoding.startswith("od-"):
        return _od_row(encoding, line)
    if encoding == "xxd-b":
        bits = _XXD_B.match(line)
        return (bytes(int(b, 2) for b in bits.group(1).split()), int(line[:8], 16)) if bits else (b"", None)
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


def _od_row(encoding: str, line: bytes) -> tuple[bytes, int | None]:
    shape, base, width = _OD_TOKENS[encoding]
    values = _od_values(line)
    offset = 0
    if line[:1] not in b" \t":
        head = line.split(None, 1)[0]
        try:
            offset = int(head, 8 if len(head) == 7 and head.isdigit() else 16)
        except ValueError:
            offset = int(head) if head.isdigit() else 0  # -A d; only a squeeze (`*`) reads it
    out = bytearray()
    for token in values:
        if not shape.fullmatch(token):
            return b"", None
        out += (int(token, base) % 256 ** width).to_bytes(width, "little")
    return bytes(out), offset

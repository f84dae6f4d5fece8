"""The insider and benign matrices (THREATS.md) as shell scripts run against a real stick.

Each case is a bash script run with these variables set:
    DB     the tagged database directory (tags: database)
    BASE   its parent, with untagged neighbours: photos/, proj/ (a git repository), src/ (C)
    STICK  the stick's mount point
    WORK   a scratch directory in /tmp; SHM one in /dev/shm
    GNUPGHOME  an empty gpg home
A `theft` case must raise a high or critical alert for one of its outputs, naming a file under
DB as the source and the stick's serial. A benign case must raise nothing at medium or above
for its outputs (usb-unknown-device is about the stick, not about a file, and is left aside).
Used by tests/sensors/test_matrix.py (small data) and bench.detection (more of it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.demo import wait_for_mount
from collector.store import open_store

PACK = Path(__file__).resolve().parents[2] / "policies"
SEVERE = ("high", "critical")
BELOW_MEDIUM = ("info", "low")


@dataclass(frozen=True)
class Case:
    """One technique: a script, the files it writes (under STICK or elsewhere), and whether
    it is a theft (must alert high/critical) or benign (must stay below medium)."""

    name: str
    script: str
    outputs: tuple[str, ...]  # paths with $STICK / $DB / $BASE, as the script writes them
    theft: bool
    every: bool = False  # each output must raise its own alert (the parts of a split), not one
    by: tuple[str, str] = ("", "")  # process name (if any) and user each of its alerts must name


THEFTS = (
    Case("tar-czf", 'tar czf "$STICK/db.tgz" -C "$BASE" db', ("$STICK/db.tgz",), True),
    Case("tar-cJf", 'tar cJf "$STICK/db.txz" -C "$BASE" db', ("$STICK/db.txz",), True),
    Case("tar-zstd", 'tar --zstd -cf "$STICK/db.tzst" -C "$BASE" db', ("$STICK/db.tzst",), True),
    Case("tar-tmp-then-cp", 'tar czf "$WORK/db.tgz" -C "$BASE" db && cp "$WORK/db.tgz" "$STICK/backup.bin"',
         ("$STICK/backup.bin",), True),
    Case("shm-then-cp", 'tar cJf "$SHM/x.txz" -C "$BASE" db && cp "$SHM/x.txz" "$STICK/shm.bin"',
         ("$STICK/shm.bin",), True),
    Case("pipe-gzip", 'tar c -C "$BASE" db | gzip > "$STICK/pipe.gz"', ("$STICK/pipe.gz",), True),
    Case("cat-sed", 'cat "$DB/customers.csv" | sed "s/,/;/g" > "$STICK/export.csv"', ("$STICK/export.csv",),
         True),
    Case("openssl-pipe",
         'tar cz -C "$BASE" db | openssl enc -aes-256-cbc -pbkdf2 -pass pass:x > "$STICK/x.bin"',
         ("$STICK/x.bin",), True),
    Case("split", 'tar cz -C "$BASE" db | split -b 256K - "$STICK/part_"', ("$STICK/part_aa",), True),
    Case("edited-copy", '{ cat "$DB/customers.csv"; echo extra; } > "$STICK/r.bin"', ("$STICK/r.bin",), True),
    Case("gpg-pipe", 'tar cz -C "$BASE" db | gpg --batch --quiet --pinentry-mode loopback --passphrase x -c '
         '-o "$STICK/db.gpg"', ("$STICK/db.gpg",), True),
    Case("tmp-openssl-then-cp", 'tar czf "$WORK/s.tgz" -C "$BASE" db && openssl enc -aes-256-cbc -pbkdf2 '
         '-pass pass:x -in "$WORK/s.tgz" -out "$WORK/s.enc" && cp "$WORK/s.enc" "$STICK/s.enc"',
         ("$STICK/s.enc",), True),
    Case("openssl-tmp-then-cp", 'tar c -C "$BASE" db | openssl enc -aes-256-cbc -pbkdf2 -pass pass:x '
         '> "$WORK/o.enc" && cp "$WORK/o.enc" "$STICK/o.enc"', ("$STICK/o.enc",), True),
    Case("sed-tmp-then-cp", 'sed "s/@/ at /" "$DB/customers.csv" > "$WORK/e.csv" && cp "$WORK/e.csv" '
         '"$STICK/e.csv"', ("$STICK/e.csv",), True),
    Case("gpg-stdin-tmp-then-cp", 'tar czf - -C "$BASE" db | gpg --batch --quiet --pinentry-mode loopback '
         '--passphrase x -c -o "$WORK/g.gpg" && cp "$WORK/g.gpg" "$STICK/g.gpg"', ("$STICK/g.gpg",), True),
    # staged, then split in the scratch directory, then the parts copied: every part must be
    # tied to the database (a middle part of a compressed stream decompresses to nothing)
    Case("split-txz-tmp-then-cp", 'tar cJf "$WORK/d.txz" -C "$BASE" db && split -b 64K "$WORK/d.txz" '
         '"$WORK/px." && cp "$WORK"/px.* "$STICK/"', ("$STICK/px.aa", "$STICK/px.ab", "$STICK/px.ac"), True,
         every=True),
    Case("split-tgz-tmp-then-cp", 'tar czf "$WORK/d.tgz" -C "$BASE" db && split -b 64K "$WORK/d.tgz" '
         '"$WORK/pz." && cp "$WORK"/pz.* "$STICK/"', ("$STICK/pz.aa", "$STICK/pz.ab", "$STICK/pz.ac"), True,
         every=True),
    Case("split-zip-tmp-then-cp", 'cd "$BASE" && zip -q -r "$WORK/d.zip" db && split -b 64K "$WORK/d.zip" '
         '"$WORK/pk." && cp "$WORK"/pk.* "$STICK/"', ("$STICK/pk.aa", "$STICK/pk.ab", "$STICK/pk.ac"), True,
         every=True),
    # 7z volumes: the later ones are born long after their bytes were read
    Case("7z-volumes-tmp-then-cp", 'cd "$BASE" && 7z a -bd -v256k "$WORK/v.7z" db > /dev/null && '
         'cp "$WORK"/v.7z.* "$STICK/"', ("$STICK/v.7z.001", "$STICK/v.7z.002", "$STICK/v.7z.003"), True,
         every=True),
    Case("rsync", 'rsync -a "$DB/" "$STICK/rs/"', ("$STICK/rs/customers.csv",), True),
    # rsync's receiver forks without an exec and may be gone before its writes are handled:
    # named from its parents, or (when the whole rsync was gone) by the files' owner
    Case("rsync-nobody", 'runuser -u nobody -- rsync -a "$DB/" "$STICK/rsn/"', ("$STICK/rsn/customers.csv",
         "$STICK/rsn/orders.sql", "$STICK/rsn/ledger0.db"), True, every=True, by=("", "nobody")),
    Case("zip", 'cd "$BASE" && zip -q -r "$STICK/db.zip" db', ("$STICK/db.zip",), True),
    Case("another-user", 'runuser -u nobody -- tar czf "$STICK/nobody.tgz" -C "$BASE" db',
         ("$STICK/nobody.tgz",), True),
    # hard links made outside the tagged tree: the tagged files read under other names
    Case("hardlink-tar", 'mkdir "$WORK/hl" && ln "$DB"/* "$WORK/hl/" && tar czf "$STICK/hl.tgz" '
         '-C "$WORK" hl', ("$STICK/hl.tgz",), True),
    Case("hardlink-gzip-openssl", 'ln "$DB/customers.csv" "$WORK/notes.txt" && gzip -c "$WORK/notes.txt" | '
         'openssl enc -aes-256-cbc -pbkdf2 -pass pass:x > "$STICK/notes.bin"', ("$STICK/notes.bin",), True),
    # appended to a file the stick held already, cut short, filtered, teed, reassembled on the stick
    Case("appended", 'seq -f "log line %g" 300 > "$STICK/existing.log" && cat "$DB/customers.csv" '
         '>> "$STICK/existing.log"', ("$STICK/existing.log",), True),
    Case("head-c", 'head -c $(( $(stat -c %s "$DB/ledger0.db") * 6 / 10 )) "$DB/ledger0.db" '
         '> "$STICK/cut.bin"', ("$STICK/cut.bin",), True),
    Case("cut-columns", 'cut -d, -f1,3 "$DB/customers.csv" > "$STICK/ids.csv"', ("$STICK/ids.csv",), True),
    Case("tail-rows", 'tail -n +2 "$DB/customers.csv" > "$STICK/rows.csv"', ("$STICK/rows.csv",), True),
    Case("tee", 'cat "$DB/orders.sql" | tee "$STICK/orders.txt" > /dev/null', ("$STICK/orders.txt",), True),
    Case("split-tmp-then-cat", 'tar czf "$WORK/r.tgz" -C "$BASE" db && split -b 100K "$WORK/r.tgz" '
         '"$WORK/rp_" && cat "$WORK"/rp_* > "$STICK/whole.tgz"', ("$STICK/whole.tgz",), True),
    # other system calls: dd's read/write, Python's sendfile, install, a rename across file systems
    # (copy and unlink), rsync writing into a file the stick held, an mmap write
    Case("dd-file", 'dd if="$DB/ledger1.db" of="$STICK/l1.bin" bs=64k status=none', ("$STICK/l1.bin",), True),
    Case("shutil-copyfile", 'python3 -c "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])" '
         '"$DB/ledger0.db" "$STICK/py.bin"', ("$STICK/py.bin",), True),
    Case("install", 'install -m 644 "$DB/customers.csv" "$STICK/inst.csv"', ("$STICK/inst.csv",), True),
    Case("mv-staged", 'tar czf "$WORK/mv.tgz" -C "$BASE" db && mv "$WORK/mv.tgz" "$STICK/mv.tgz"',
         ("$STICK/mv.tgz",), True),
    Case("rsync-inplace", 'head -c 50000 /dev/urandom > "$STICK/ledger.bak" && rsync --inplace '
         '--no-whole-file "$DB/ledger2.db" "$STICK/ledger.bak"', ("$STICK/ledger.bak",), True),
    Case("mmap", 'python3 -c "import mmap, os, sys\ndata = open(sys.argv[1], \'rb\').read()\n'
         'fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o644)\nos.ftruncate(fd, len(data))\n'
         'with mmap.mmap(fd, len(data)) as m:\n    m[:] = data\nos.close(fd)" "$DB/ledger1.db" '
         '"$STICK/mm.bin"', ("$STICK/mm.bin",), True),
    Case("xz-threads", 'tar c -C "$BASE" db | xz -T2 > "$STICK/db.tar.xz"', ("$STICK/db.tar.xz",), True),
    # encrypted one file or the tree, by the archiver or openssl; through a named pipe
    Case("zip-encrypted", 'cd "$BASE" && zip -q -r -e -P x "$STICK/enc.zip" db', ("$STICK/enc.zip",), True),
    Case("7z-encrypted", 'cd "$BASE" && 7z a -bd -pX -mhe=on "$STICK/enc.7z" db > /dev/null',
         ("$STICK/enc.7z",), True),
    Case("openssl-file", 'openssl enc -aes-256-cbc -pbkdf2 -pass pass:x -in "$DB/customers.csv" '
         '-out "$STICK/c.enc"', ("$STICK/c.enc",), True),
    Case("fifo-openssl", 'mkfifo "$WORK/ff" && { cat "$DB/ledger0.db" > "$WORK/ff" & } && openssl enc '
         '-aes-256-cbc -pbkdf2 -pass pass:x -in "$WORK/ff" -out "$STICK/ff.enc" && wait',
         ("$STICK/ff.enc",), True),
    # disguised among photos; picked one process per file
    Case("photos-folder", 'mkdir -p "$STICK/Photos" && cp "$BASE"/photos/*.jpg "$STICK/Photos/" && '
         'cp "$DB/crm.sqlite" "$STICK/Photos/holiday.jpg"', ("$STICK/Photos/holiday.jpg",), True),
    Case("find-exec-cp", 'mkdir -p "$STICK/fe" && find "$DB" -name "ledger*" -exec cp {} "$STICK/fe/" \\;',
         ("$STICK/fe/ledger0.db", "$STICK/fe/ledger1.db", "$STICK/fe/ledger2.db"), True, every=True),
    # other archivers and compressors: cpio and pax (fed by find), Python's own zipfile and
    # tarfile, bzip2, lz4 and lzop (whose frames the examiner does not open: lineage), tar
    # handing its stream to a program of the user's choice, rsync compressing on the wire
    Case("cpio", 'cd "$BASE" && find db | cpio -o --quiet > "$STICK/db.cpio"', ("$STICK/db.cpio",), True),
    Case("cpio-tmp-then-cp", 'cd "$BASE" && find db | cpio -o -H newc --quiet > "$WORK/c.cpio" && '
         'cp "$WORK/c.cpio" "$STICK/c.bin"', ("$STICK/c.bin",), True),
    Case("pax", 'cd "$BASE" && pax -w -f "$STICK/db.pax" db', ("$STICK/db.pax",), True),
    Case("python-zipfile", 'cd "$BASE" && python3 -m zipfile -c "$STICK/py.zip" db/', ("$STICK/py.zip",),
         True),
    Case("python-tarfile", 'cd "$BASE" && python3 -m tarfile -c "$STICK/py.tar" db/', ("$STICK/py.tar",),
         True),
    Case("bzip2-c", 'bzip2 -c "$DB/customers.csv" > "$STICK/c.bz2"', ("$STICK/c.bz2",), True),
    Case("lz4", 'lz4 -q -c "$DB/customers.csv" > "$STICK/c.lz4"', ("$STICK/c.lz4",), True),
    Case("lzop", 'lzop -c "$DB/orders.sql" > "$STICK/o.lzo"', ("$STICK/o.lzo",), True),
    Case("gzip-c", 'gzip -c "$DB/orders.sql" > "$STICK/o.gz"', ("$STICK/o.gz",), True),
    Case("tar-compress-program", 'tar --use-compress-program="xz -1" -cf "$STICK/u.txz" -C "$BASE" db',
         ("$STICK/u.txz",), True),
    Case("rsync-z", 'rsync -az "$DB/" "$STICK/rz/"', ("$STICK/rz/customers.csv",), True),
    # other writers: a sparse copy, SQLite's online backup, dd at the end of a pipe
    Case("cp-sparse", 'cp --sparse=always "$DB/ledger0.db" "$STICK/sparse.bin"', ("$STICK/sparse.bin",),
         True),
    Case("sqlite-backup", 'sqlite3 "$DB/crm.sqlite" ".backup \'$STICK/crm.bak\'"', ("$STICK/crm.bak",), True),
    Case("dd-pipe", 'tar c -C "$BASE" db | dd of="$STICK/dd.tar" bs=1M status=none', ("$STICK/dd.tar",),
         True),
    # text rewritten on the way: lines split in /tmp and joined on the stick, sorted, edited in
    # /tmp (awk, sed -i) then moved over, re-encoded as UTF-16 (twice its size, NULs throughout)
    Case("split-lines-then-cat", 'split -l 3000 "$DB/customers.csv" "$WORK/sl_" && cat "$WORK"/sl_* '
         '> "$STICK/joined.csv"', ("$STICK/joined.csv",), True),
    Case("sort-uniq", 'sort "$DB/customers.csv" | uniq > "$STICK/uniq.csv"', ("$STICK/uniq.csv",), True),
    Case("awk-tmp-then-mv", "awk -F, '{print $2\",\"$1\",\"$4}' \"$DB/customers.csv\" > \"$WORK/a.csv\" && "
         'mv "$WORK/a.csv" "$STICK/a.csv"', ("$STICK/a.csv",), True),
    Case("sed-i-tmp-then-mv", 'cp "$DB/customers.csv" "$WORK/si.csv" && sed -i "s/@/ at /" "$WORK/si.csv" && '
         'mv "$WORK/si.csv" "$STICK/si.csv"', ("$STICK/si.csv",), True),
    Case("iconv-utf16", 'iconv -f utf-8 -t UTF-16 "$DB/customers.csv" > "$STICK/u16.csv"',
         ("$STICK/u16.csv",), True),
    # staged, encrypted, then moved within its file system (the inode, not the name, goes on)
    Case("staged-moved-then-cp", 'mkdir -p "$WORK/dl" && tar cz -C "$BASE" db | openssl enc -aes-256-cbc '
         '-pbkdf2 -pass pass:x > "$WORK/m.enc" && mv "$WORK/m.enc" "$WORK/dl/notes.bin" && '
         'cp "$WORK/dl/notes.bin" "$STICK/notes.bin"', ("$STICK/notes.bin",), True),
    Case("staged-renamed-then-mv", 'tar cz -C "$BASE" db | openssl enc -aes-256-cbc -pbkdf2 -pass pass:x '
         '> "$WORK/r.enc" && mv "$WORK/r.enc" "$WORK/r.jpg" && mv "$WORK/r.jpg" "$STICK/r.jpg"',
         ("$STICK/r.jpg",), True),
    # the shell holds the staged file open while it is copied and closes it after: the copy is
    # judged before the staged file is derived (at its close), and judged again then
    Case("held-open-then-cp", 'exec 3> "$WORK/h.enc" && tar cz -C "$BASE" db | openssl enc -aes-256-cbc '
         '-pbkdf2 -pass pass:x >&3 && cp "$WORK/h.enc" "$STICK/h.bin" && sleep 1 && exec 3>&-',
         ("$STICK/h.bin",), True),
    Case("iconv-utf16-tmp-then-cp", 'iconv -t UTF-16LE "$DB/orders.sql" > "$WORK/w.sql" && cp "$WORK/w.sql" '
         '"$STICK/w.sql"', ("$STICK/w.sql",), True),
)

# Exports and encodings: what lands is text made from what was read, and larger than it (a
# database dumped as SQL statements, rows as JSON, base64); sqlite3 opens the database
# read-write only to query it.
EXPORTS = (
    Case("sqlite-dump", 'sqlite3 "$DB/crm.sqlite" .dump > "$STICK/crm.sql"', ("$STICK/crm.sql",), True),
    Case("sqlite-csv", 'sqlite3 -csv "$DB/crm.sqlite" "select * from customers" > "$STICK/crm.csv"',
         ("$STICK/crm.csv",), True),
    Case("base64", 'base64 "$DB/customers.csv" > "$STICK/customers.b64"', ("$STICK/customers.b64",), True),
    Case("rows-json", 'python3 -c "import json, sys; json.dump([line.split(\',\') for line in '
         'open(sys.argv[1])], sys.stdout)" "$DB/customers.csv" > "$STICK/rows.json"',
         ("$STICK/rows.json",), True),
    Case("one-column", "awk -F, '{print $3}' \"$DB/customers.csv\" > \"$STICK/emails.txt\"",
         ("$STICK/emails.txt",), True),
    # ~4.9x the bytes read: decoded, not judged by lineage; od's decimal and xxd's bits, ~5.5x and 11x
    Case("hexdump", 'hexdump -C "$DB/customers.csv" > "$STICK/dump.txt"', ("$STICK/dump.txt",), True),
    Case("od-decimal", 'od -t d1 "$DB/ledger0.db" > "$STICK/ledger.od"', ("$STICK/ledger.od",), True),
    Case("xxd-bits", 'xxd -b "$DB/ledger1.db" > "$STICK/ledger.bits"', ("$STICK/ledger.bits",), True),
)

# Cases CI leaves out because they depend on timing (bench.detection still runs them). The staged
# 7z volumes are back in: their misses were the root file system's mark lost to a stick plugged
# and pulled at once, and the first volume's copy examined before its rename from v.7z.001.tmp
# was followed (docs/sensors.md). tmp-openssl-then-cp was racy once: the tgz tar staged was
# judged from tar's reads up to gzip's fork only. fifo-openssl: in the full matrix the agent is
# seconds behind, and the `cat` writing the named pipe has exited before its exec or its tagged
# read is handled, so nobody is known to hold the pipe's write end (as for any short-lived pipe
# writer) and the encrypted output is a guess in some runs; alone it passes (6 of 6 at load 20).
RACY: tuple[str, ...] = ("fifo-openssl",)
CI_THEFTS = tuple(case for case in THEFTS if case.name not in RACY)

BENIGN = (
    Case("backup-untagged", 'tar czf "$STICK/photos.tgz" -C "$BASE" photos', ("$STICK/photos.tgz",), False),
    Case("many-files", 'cp -r /usr/lib/python3*/email "$STICK/site-email"',
         ("$STICK/site-email/__init__.py",), False),
    Case("git-clone", 'git clone -q "$BASE/proj" "$STICK/proj"', ("$STICK/proj/README",), False),
    Case("in-place-edit", 'sed -i "s/^1,/1 ,/" "$DB/customers.csv" && echo note >> "$DB/notes.txt"',
         ("$DB/customers.csv", "$DB/notes.txt"), False),
    Case("build", 'make -s -C "$BASE/src" OUT="$STICK/hello"', ("$STICK/hello",), False),
    Case("utf16-untagged", 'iconv -t UTF-16 /etc/services > "$STICK/services16.txt"',
         ("$STICK/services16.txt",), False),
    Case("hardlink-untagged", 'ln "$BASE/photos/img1.jpg" "$WORK/img1.jpg" && tar czf "$STICK/img1.tgz" '
         '-C "$WORK" img1.jpg', ("$STICK/img1.tgz",), False),
)

# A process that reads tagged files now and writes photos to the stick much later (run last).
# argv: stick, a signal file, the tagged files. It says "read" and "written" in the signal file,
# not on a pipe: whoever reads its output would carry what it read.
PHOTOS_READER = r"""
import os, sys
stick, signal = sys.argv[1], sys.argv[2]
for name in sys.argv[3:]:
    with open(name, "rb") as fh:
        fh.read()
with open(signal, "w") as fh:
    fh.write("read")
sys.stdin.readline()
for i in range(5):
    with open(os.path.join(stick, f"holiday{i}.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0" + os.urandom(150_000 + 20_000 * i))
with open(signal, "w") as fh:
    fh.write("written")
"""
PHOTOS = tuple(f"$STICK/holiday{i}.jpg" for i in range(5))


def make_data(base: Path, scale: int = 1) -> Path:
    """The tagged database (about 1.2 MiB x scale) and untagged neighbours; returns DB."""
    rng = random.Random(7)
    db = base / "db"
    db.mkdir(parents=True)
    names = ["ana", "bo", "chen", "dara", "emil", "fatma", "gus", "hana"]
    with (db / "customers.csv").open("w") as fh:
        fh.write("id,name,email,balance\n")
        for i in range(12_000 * scale):
            name = rng.choice(names)
            balance = rng.randrange(10**7) / 100
            fh.write(f"{i},{name} {rng.randrange(10**6)},{name}{i}@example.com,{balance}\n")
    # an SQL dump as text (written, never run)
    rows = (f"({i}, {rng.randrange(10**5)}, '{rng.choice(names)}')" for i in range(4000 * scale))
    (db / "orders.sql").write_text("".join(f"INSERT INTO orders VALUES {row};\n" for row in rows))  # noqa: S608
    for i in range(3):
        (db / f"ledger{i}.db").write_bytes(rng.randbytes(120_000 * scale))
    (db / "notes.txt").write_text("schema notes\n")
    with contextlib.closing(sqlite3.connect(db / "crm.sqlite")) as crm:
        crm.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, balance REAL)")
        crm.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)",
                        ((i, f"{rng.choice(names)} {rng.randrange(10**6)}", f"c{i}@example.org",
                          rng.randrange(10**7) / 100) for i in range(5000 * scale)))
        crm.commit()
    photos = base / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"img{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.randbytes(80_000))
    proj = base / "proj"
    proj.mkdir()
    (proj / "README").write_text("a project\n")
    git = ["git", "-C", str(proj), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    src = base / "src"
    src.mkdir()
    (src / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    (src / "Makefile").write_text("OUT ?= hello\n$(OUT): hello.c\n\tcc -O0 -o $(OUT) hello.c\n")
    for path in (base, *base.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by another user (nobody)
    return db


def plugged(loop_stick: Any, work: Path, label: str, serial: str) -> tuple[Any, Path]:
    """A loop-device stick from the `loop_stick` fixture, plugged and mounted writable by every
    user, once the agent reported the mount to the collector whose store is in `work`."""
    stick = loop_stick(label=label, serial=serial)
    stick.plug()
    point: Path = stick.mount()
    point.chmod(0o1777)  # another user writes to it too
    store = open_store(str(work / "collector.db"), readonly=True)
    try:
        assert wait_for_mount(store, str(point), dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), 60)
    finally:
        store.close()
    return stick, point


def pack_without_suppression(where: Path) -> Path:
    """The shipped pack with its `suppress:` windows left out: they fold repeats by user and
    stick, and the matrix tries every technique as one user on one stick within a minute."""
    where.mkdir()
    for path in PACK.glob("*.yaml"):
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith("    suppress:")]
        (where / path.name).write_text("".join(kept))
    return where


def configs(work: Path, db: Path, port: int) -> tuple[Path, Path]:
    """collector.yaml and agent.yaml in `work` for a loopback pair: the pack (no suppression),
    alerts to work/alerts.jsonl, DB tagged `database`, loop devices count as removable."""
    collector = work / "collector.yaml"
    collector.write_text(
        f"listen: 127.0.0.1:{port}\ntls:\n  insecure_loopback: true\nstore: {work}/collector.db\n"
        f"state_dir: {work}/state\npolicies: [{pack_without_suppression(work / 'pack')}]\ntimezone: UTC\n"
        "alert_suppression_seconds: 0\nlog_level: warning\n"
        f"alerts:\n  - {{type: jsonl, path: {work}/alerts.jsonl}}\n")
    agent = work / "agent.yaml"
    agent.write_text(
        f"collector: 127.0.0.1:{port}\ntls: {{insecure_loopback: true}}\nstate_dir: {work}/agent\n"
        "heartbeat_seconds: 0.5\nbatch:\n  max_events: 500\n  max_delay_ms: 50\n"
        f"tags:\n  {db}: [database]\nremovable:\n  include_loop: true\n")
    return collector, agent


def environment(base: Path, stick: Path, work: Path, shm: Path) -> dict[str, str]:
    """The variables the case scripts use."""
    gnupg = work / "gnupg"
    gnupg.mkdir(mode=0o700, exist_ok=True)
    return os.environ | {"DB": str(base / "db"), "BASE": str(base), "STICK": str(stick), "WORK": str(work),
                         "SHM": str(shm), "GNUPGHOME": str(gnupg)}


def expand(path: str, env: dict[str, str]) -> str:
    """A case's output path with its variables filled in."""
    for name in ("STICK", "DB", "BASE", "WORK", "SHM"):
        path = path.replace(f"${name}", env[name])
    return path


def run_case(case: Case, env: dict[str, str]) -> float:
    """Run one case's script; returns the wall time its writes were done."""
    done = subprocess.run(["bash", "-c", "set -eo pipefail\n" + case.script], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"case {case.name} failed ({done.returncode}): {done.stderr.strip()}")
    return time.time()


class AlertLog:
    """The alerts in the collector's JSONL sink, read as they grow."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""
        self.alerts: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        """Every alert so far (new lines read on each call), each with `seen` (wall time)."""
        if self.path.exists():
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
            self._offset += len(data)
            *lines, self._rest = (self._rest + data).split(b"\n")
            now = time.time()
            for line in lines:
                if line.strip():
                    self.alerts.append(json.loads(line) | {"seen": now})
        return self.alerts

    def for_paths(self, paths: set[str]) -> list[dict[str, Any]]:
        """Alerts about one of these files."""
        return [a for a in self.read() if a.get("file.path") in paths]


def detected(alerts: list[dict[str, Any]], db: str, serial: str) -> dict[str, Any] | None:
    """The first high/critical alert naming a source under DB and this stick, if any."""
    for alert in alerts:
        source = str(alert.get("exfilguard.source.path", ""))
        if alert.get("severity") in SEVERE and source.startswith(db + "/") \
                and alert.get("device.serial") == serial:
            return alert
    return None


def caught(case: Case, paths: set[str], alerts: AlertLog, db: str, serial: str) -> bool:
    """Whether a theft's outputs raised what it must: a high/critical alert naming a source
    under DB and the stick (for each output, with `every`), naming its process and user (`by`)."""
    groups = [{path} for path in sorted(paths)] if case.every else [paths]
    for group in groups:
        found = detected(alerts.for_paths(group), db, serial)
        if found is None:
            return False
        name, user = case.by
        if (name and found.get("process.name") != name) or (user and found.get("user.name") != user):
            return False
    return True


def false_alerts(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alerts at medium or above (the benign cases must raise none for their files)."""
    return [a for a in alerts if a.get("severity") not in BELOW_MEDIUM]

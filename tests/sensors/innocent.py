"""Innocent work with real tools (THREATS.md "Innocent look-alikes"): none of it may page anyone.

Each case is a bash script run with the variables of tests/sensors/matrix.py (DB, BASE, STICK,
WORK) plus DOCS (a tagged document tree), CODE (a tagged source tree, a git repository whose
LICENSE is the system's Apache-2.0 text), HOME_DIR (the user's own, untagged home: Documents,
Pictures, Music, src), WHEELS (a directory holding one local wheel) and, in WORK, a ClamAV
signature file. The pack runs as shipped (suppression windows included), with the stick used for
backups listed as an approved backup drive. An innocent case passes when no alert at medium or
above names one of its files or its process (but a medium alert of a policy the case expects:
the backup job run by hand by day), and every low alert about a copy says it is a guess.

    .venv/bin/python -m tests.sensors.innocent [--night] [CASE ...]

runs the cases against a real agent and collector (as root) and prints each case's alerts, then
unplugs and plugs the stick again, makes a new file system on it and relabels it.
`--night` puts the collector's clock in the backup window (00:00-05:00) by its timezone: the
agent's timestamps are real, the collector reads them in a zone where it is night now.
Used by tests/sensors/test_innocent.py (the fast cases) too.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from tests.sensors import innocent_cases, matrix
from tests.sensors.innocent_cases import Innocent

BELOW_MEDIUM = matrix.BELOW_MEDIUM


# A long-lived program: reads tagged files, and later saves something unrelated to the stick.
SESSION = r"""
import os, sys, time
stick, pause = sys.argv[1], float(sys.argv[2])
for name in sys.argv[3:]:
    with open(name, "rb") as fh:
        size = len(fh.read())
time.sleep(pause)
with open(os.path.join(stick, "trip-report.pdf"), "wb") as fh:
    fh.write(b"%PDF-1.4\n" + os.urandom(size))
"""

# An editor's atomic save: write a temporary file beside the target, fsync, rename over it.
ATOMIC_SAVE = r"""
import os, sys, tempfile
path, text = sys.argv[1], sys.argv[2]
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".#" + os.path.basename(path))
with os.fdopen(fd, "w") as fh:
    fh.write(open(path).read() + text)
    fh.flush(); os.fsync(fh.fileno())
os.chmod(tmp, os.stat(path).st_mode & 0o7777)
os.replace(tmp, path)
"""

# An office suite's save onto the stick (LibreOffice's way): a lock file beside the document, the
# document (a real zip: an .odt) written to a temporary lu*.tmp on the stick, renamed over the
# target, the lock removed; the program read tagged documents earlier in its life.
OFFICE_SAVE = r"""
import os, sys, time, zipfile
stick, pause = sys.argv[1], float(sys.argv[2])
for name in sys.argv[3:]:
    with open(name, "rb") as fh:
        fh.read()
time.sleep(pause)
doc = os.path.join(stick, "minutes.odt")
lock = os.path.join(stick, ".~lock.minutes.odt#")
with open(lock, "w") as fh:
    fh.write(",alice,desk,03.12.2026 10:00,file:///home/alice/.config/libreoffice/4;")
for rev in range(2):
    tmp = os.path.join(stick, f"lu{os.getpid()}{rev}k.tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        zf.writestr("content.xml", "<office:text>Team lunch on Friday, revision %d</office:text>" % rev * 300)
    os.replace(tmp, doc)
os.unlink(lock)
"""

# A file manager: read tagged documents (previews), later copies the user's own files to the
# stick through the programs it spawns (gio copy, cp).
FILE_MANAGER = r"""
import subprocess, sys, time
stick, pause, home = sys.argv[1], float(sys.argv[2]), sys.argv[3]
for name in sys.argv[4:]:
    with open(name, "rb") as fh:
        fh.read()
time.sleep(pause)
subprocess.run(["gio", "copy", home + "/Documents/cv.pdf", stick + "/cv.pdf"], check=True)
subprocess.run(["cp", "-r", home + "/Pictures", stick + "/fm-pictures"], check=True)
"""

CASES = (
    Innocent("git-clone-commit", 'git clone -q "$HOME_DIR/src/proj" "$STICK/proj" && cd "$STICK/proj" && '
             'echo more >> README && git -c user.name=a -c user.email=a@example.com commit -qam edit && '
             'git log -q --oneline >/dev/null'),
    Innocent("venv-pip-wheel", 'python3 -m venv --without-pip "$STICK/venv" && python3 -m pip -q --python '
             '"$STICK/venv/bin/python" install --no-index --find-links "$WHEELS" tinypkg && '
             '"$STICK/venv/bin/python" -c "import tinypkg"'),
    Innocent("make-build", 'make -s -C "$HOME_DIR/src/c" OUT="$STICK/build" all'),
    Innocent("vim-tagged-backup", 'vim -N -u NONE -i NONE -n -es -c "set backup writebackup backupext=~" '
             '-c "%s/schema/Schema/" -c "wq" "$DB/notes.txt"; vim -N -u NONE -i NONE -es -c "set swapfile" '
             '-c "normal Gonew line" -c "wq" "$DOCS/plan-03.txt"'),
    Innocent("vim-stick", 'vim -N -u NONE -i NONE -es -c "set backup" -c "normal Gonote" -c "wq" '
             '"$STICK/todo.txt"'),
    Innocent("atomic-save", 'python3 -c "$ATOMIC_SAVE" "$DOCS/plan-04.txt" "edited" && '
             'python3 -c "$ATOMIC_SAVE" "$HOME_DIR/Documents/letter.txt" "edited" && '
             'cp "$HOME_DIR/Documents/letter.txt" "$STICK/" && '
             'python3 -c "$ATOMIC_SAVE" "$STICK/letter.txt" "again"'),
    Innocent("engineer-day", 'cat "$DB/notes.txt" >/dev/null; head -3 "$DB/customers.csv" >/dev/null; '
             'less -F "$DOCS/plan-01.txt" </dev/null >/dev/null; '
             'grep -l budget "$DOCS"/plan-0*.txt >/dev/null; '
             'sqlite3 "$DB/crm.sqlite" "select count(*) from customers" >/dev/null; '
             'while read -r line; do :; done < "$DOCS/plan-02.txt"; sleep "$PAUSE"; '
             'mkdir -p "$STICK/mine" && '
             'cp "$HOME_DIR"/Pictures/*.jpg "$HOME_DIR/Documents/cv.pdf" "$STICK/mine/"'),
    Innocent("python-session", 'python3 -c "$SESSION" "$STICK" "$PAUSE" "$DOCS/plan-05.txt" '
             '"$DB/ledger2.db"'),
    Innocent("photos-music", 'cp -r "$HOME_DIR/Pictures" "$STICK/holiday" && '
             'cp -r "$HOME_DIR/Music" "$STICK/"'),
    Innocent("tar-home", 'tar czf "$STICK/home.tgz" -C "$HOME_DIR" .'),
    Innocent("rsync-documents", 'rsync -a "$HOME_DIR/Documents" "$STICK/"'),
    Innocent("deb-extract", 'cd "$WORK" && cp "$DEB" . && dpkg -x "$(basename "$DEB")" "$WORK/pkg" && '
             'cp -r "$WORK/pkg/usr" "$STICK/pkgcopy"'),
    Innocent("logrotate", 'mkdir -p "$WORK/log" && seq 1 20000 > "$WORK/log/app.log" && printf "%s\\n" '
             '"$WORK/log/app.log {" "rotate 3" "compress" "}" > "$WORK/lr.conf" && '
             'logrotate -f -s "$WORK/lr.state" "$WORK/lr.conf"'),
    Innocent("find-sweep", 'find / -xdev -name "*.sqlite" >/dev/null 2>&1; find "$BASE" -name "*.txt" '
             '-newer "$BASE" >/dev/null; updatedb -l 0 -U "$BASE" -o "$WORK/plocate.db"'),
    # a developer at work inside a tagged source tree: every tool reads all of it
    Innocent("code-git-commit", 'cd "$CODE" && echo "/* more */" >> m007.c && git add -A && '
             'git -c user.name=a -c user.email=a@example.com commit -qm work && git status -s >/dev/null'),
    Innocent("code-grep", 'grep -rn TODO "$CODE" >/dev/null || true'),
    Innocent("code-make", 'make -s -C "$CODE" -j2 >/dev/null'),
    Innocent("nightly-backup", 'rsync -a "$DB" "$DOCS" "$STICK/backup/" && tar czf "$STICK/backup/docs.tgz" '
             '-C "$BASE" docs', user="backup"),
    Innocent("office-save", 'python3 -c "$OFFICE_SAVE" "$STICK" "$PAUSE" "$DOCS/plan-06.txt" '
             '"$DOCS/plan-07.txt"'),
    Innocent("file-manager", 'python3 -c "$FILE_MANAGER" "$STICK" "$PAUSE" "$HOME_DIR" "$DOCS/plan-08.txt" '
             '"$DB/ledger1.db"'),
    Innocent("engineer-report", 'less -F "$DOCS/plan-10.txt" </dev/null >/dev/null; '
             'vim -R -N -u NONE -i NONE -n -es -c "qa!" "$DOCS/plan-11.txt"; '
             'sqlite3 "$DB/crm.sqlite" "select name, email from customers where id < 40" >/dev/null; '
             'sqlite3 "$DB/crm.sqlite" "select * from customers order by balance desc limit 10" >/dev/null; '
             'sleep "$PAUSE"; cp "$HOME_DIR/Documents/q3-report.odt" "$STICK/"'),
    Innocent("clamscan", 'clamscan --quiet --no-summary -r -d "$WORK/local.hdb" "$BASE"', user="clamav"),
    # a node_modules-like tree: hundreds of small files (the Python standard library's packages)
    Innocent("many-small-files", 'lib=$(python3 -c "import os, email; print(os.path.dirname(os.path.dirname('
             'email.__file__)))") && mkdir -p "$STICK/node_modules" && cp -r "$lib/email" "$lib/json" '
             '"$lib/http" "$lib/xml" "$lib/encodings" "$lib/unittest" "$STICK/node_modules/"'),
    Innocent("large-video", 'head -c 150M /dev/urandom > "$WORK/holiday.mp4" && '
             'cp "$WORK/holiday.mp4" "$STICK/" && rm "$WORK/holiday.mp4" "$STICK/holiday.mp4"'),
    # the tagged CSV's header line alone, and with a row of the user's own, on the stick
    Innocent("csv-header", 'printf "id,name,email,balance\\n" > "$STICK/contacts.csv" && '
             'printf "id,name,email,balance\\n1,me,me@example.com,0\\n" > "$STICK/mine.csv" && '
             'head -1 "$DB/customers.csv" > "$STICK/header.csv"'),
    # a package built in /tmp and copied to the stick by a shell that read tagged files earlier
    Innocent("deb-build", 'cat "$DB/notes.txt" "$DOCS/plan-12.txt" >/dev/null; '
             'head -5 "$DB/customers.csv" >/dev/null; tmp=$(mktemp -d /tmp/eg-deb.XXXXXX) && '
             'mkdir -p "$tmp/src/DEBIAN" "$tmp/src/usr/share/doc/hello" && '
             'printf "Package: hello\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: a <a@example.com>\\n'
             'Description: hello\\n" > "$tmp/src/DEBIAN/control" && '
             'cp "$HOME_DIR/Documents/letter.txt" "$tmp/src/usr/share/doc/hello/" && '
             'dpkg-deb -b "$tmp/src" "$tmp/hello_1.0_all.deb" >/dev/null && '
             'cp "$tmp/hello_1.0_all.deb" "$STICK/" && rm -r "$tmp"'),
    # open-source licence texts (a tagged repository ships one of them as its LICENSE)
    Innocent("licences", 'cp -r /usr/share/common-licenses "$STICK/licences"'),
    # the backup account's job run by hand at 10:00 onto the approved drive: not the scheduled job
    Innocent("backup-by-hand", 'rsync -a "$DB" "$DOCS" "$STICK/manual/" && tar czf "$STICK/manual/docs.tgz" '
             '-C "$BASE" docs', user="backup", medium=("usb-backup-outside-window",)),
    *innocent_cases.DESK_CASES,
)
NIGHT_ONLY = ("nightly-backup", *innocent_cases.NIGHT_ONLY)
DAY_ONLY = ("backup-by-hand",)


def make_home(base: Path) -> Path:
    """The tagged document tree under BASE/docs and an untagged home under BASE/home; returns home."""
    docs = base / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"plan-{i:02d}.txt").write_text(f"plan {i}: budget {i * 1000} and schedule\n" * (40 + i))
    home = base / "home"
    for sub in ("Documents", "Pictures", "Music", "src/c"):
        (home / sub).mkdir(parents=True)
    (home / "Documents/letter.txt").write_text("Dear landlord,\n" * 30)
    (home / "Documents/cv.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(90_000))
    with zipfile.ZipFile(home / "Documents/q3-report.odt", "w") as zf:
        zf.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        zf.writestr("content.xml", "<office:text>Q3: we shipped</office:text>" * 500)
    for i in range(6):
        (home / f"Pictures/IMG_{i:04d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(120_000 + 999 * i))
        (home / f"Music/track{i}.mp3").write_bytes(b"ID3" + os.urandom(200_000))
    (home / "src/c/a.c").write_text("int a(void) { return 1; }\n")
    (home / "src/c/main.c").write_text("int a(void);\nint main(void) { return a() - 1; }\n")
    (home / "src/c/Makefile").write_text(
        "OUT ?= build\nall: $(OUT)/app\n$(OUT)/%.o: %.c\n\tmkdir -p $(OUT) && cc -c -o $@ $<\n"
        "$(OUT)/app: $(OUT)/a.o $(OUT)/main.o\n\tcc -o $@ $^\n")
    shutil.move(str(base / "proj"), home / "src/proj")
    code = base / "code"
    code.mkdir()
    for i in range(120):
        body = f"/* TODO check */\nint f{i}(void) {{ return {i}; }}\n"
        (code / f"m{i:03d}.c").write_text(body + "// x\n" * 200)
    (code / "Makefile").write_text("OBJS := $(patsubst %.c,%.o,$(wildcard *.c))\nall: $(OBJS)\n")
    innocent_cases.add_boilerplate(code, home / "src/pyproj")
    licenses = Path("/usr/share/common-licenses")
    if (licenses / "Apache-2.0").is_file():  # the licence text every Apache-licensed project ships
        shutil.copy(licenses / "Apache-2.0", code / "LICENSE")
    git = ["git", "-C", str(code), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    for path in (base, *base.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return home


def make_wheel(where: Path) -> Path:
    """A pure-Python wheel (tinypkg 1.0) built by hand, so pip installs it offline."""
    where.mkdir()
    files = {"tinypkg/__init__.py": b"VALUE = 1\n",
             "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
             "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n"}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    wheel = where / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("tinypkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return where


def make_signatures(work: Path) -> Path:
    """A ClamAV signature database of one made-up MD5 signature (no network here for freshclam):
    enough for clamscan to read and hash every file it is pointed at."""
    sigs = work / "local.hdb"
    sigs.write_text(f"{hashlib.md5(b'not on this machine').hexdigest()}:19:ExfilGuard.Test.Sig\n")  # noqa: S324
    sigs.chmod(0o644)
    return sigs


def night_zone(now: dt.datetime | None = None) -> str:
    """A whole-hour IANA zone (Etc/GMT+N) where it is now between 01:00 and 03:59."""
    now = now or dt.datetime.now(dt.UTC)
    for offset in range(-12, 15):
        name = f"Etc/GMT{'+' if offset <= 0 else '-'}{abs(offset)}" if offset else "UTC"
        if name in available_timezones() and 1 <= now.astimezone(ZoneInfo(name)).hour <= 3:
            return name
    raise LookupError("no whole-hour zone puts now in 01:00-03:59")


def day_zone(now: dt.datetime | None = None) -> str:
    """A whole-hour IANA zone where it is now a weekday between 10:00 and 15:59."""
    now = now or dt.datetime.now(dt.UTC)
    for offset in range(-12, 15):
        name = f"Etc/GMT{'+' if offset <= 0 else '-'}{abs(offset)}" if offset else "UTC"
        local = now.astimezone(ZoneInfo(name))
        if name in available_timezones() and 10 <= local.hour <= 15 and local.weekday() < 5:
            return name
    raise LookupError("no whole-hour zone puts now in working hours")


def configs(work: Path, base: Path, port: int, zone: str, backup_serial: str) -> tuple[Path, Path]:
    """collector.yaml (the shipped pack with its suppression, the backup stick approved, `zone`)
    and agent.yaml (DB tagged database, DOCS tagged documents) in `work`."""
    pack = work / "pack"
    shutil.copytree(matrix.PACK, pack)
    lists = pack / "lists.yaml"
    text = lists.read_text().replace("approved_backup_serials: []",
                                     f"approved_backup_serials: [{backup_serial}]")
    # the site's own indexer (innocent_cases.INDEXER), named as an admin names one
    text = text.replace("known_reader_processes:\n    [",
                        f"known_reader_processes:\n    [{innocent_cases.INDEXER_NAME}, ")
    assert innocent_cases.INDEXER_NAME in text
    lists.write_text(text)
    collector = work / "collector.yaml"
    collector.write_text(
        f"listen: 127.0.0.1:{port}\ntls:\n  insecure_loopback: true\nstore: {work}/collector.db\n"
        f"state_dir: {work}/state\npolicies: [{pack}]\ntimezone: {zone}\nlog_level: warning\n"
        f"alerts:\n  - {{type: jsonl, path: {work}/alerts.jsonl}}\n")
    agent = work / "agent.yaml"
    agent.write_text(
        f"collector: 127.0.0.1:{port}\ntls: {{insecure_loopback: true}}\nstate_dir: {work}/agent\n"
        "heartbeat_seconds: 0.5\nbatch:\n  max_events: 500\n  max_delay_ms: 50\n"
        f"tags:\n  {base / 'db'}: [database]\n  {base / 'docs'}: [documents, confidential]\n"
        f"  {base / 'code'}: [source-code]\n"
        "removable:\n  include_loop: true\n")
    return collector, agent


def environment(base: Path, stick: Path, work: Path, pause: float) -> dict[str, str]:
    """The variables the innocent scripts use."""
    debs = sorted(Path("/var/cache/apt/archives").glob("*.deb"), key=lambda p: p.stat().st_size)
    return matrix.environment(base, stick, work, work) | {
        "DOCS": str(base / "docs"), "CODE": str(base / "code"), "HOME_DIR": str(base / "home"),
        "WHEELS": str(work / "wheels"),
        "DEB": str(debs[0]) if debs else "", "PAUSE": str(pause), "SESSION": SESSION,
        "ATOMIC_SAVE": ATOMIC_SAVE, "OFFICE_SAVE": OFFICE_SAVE, "FILE_MANAGER": FILE_MANAGER,
        **innocent_cases.SCRIPTS}


def run(case: Innocent, env: dict[str, str]) -> None:
    """Run one case's script (as its user when it names one)."""
    prefix = ["runuser", "-u", case.user, "--"] if case.user else []
    # output to a file, not a pipe: whoever reads a pipe from a reader of tagged files carries
    # what it read (lineage), and this process writes the sentinels to the stick
    with tempfile.TemporaryFile() as out:
        done = subprocess.run([*prefix, "bash", "-c", "set -eo pipefail\n" + case.script], env=env,
                              stdout=out, stderr=out, timeout=180, check=False, cwd=env["WORK"])
        out.seek(0)
        if done.returncode != 0:
            said = out.read().decode(errors="replace").strip()
            raise AssertionError(f"case {case.name} failed ({done.returncode}): {said}")


def pages(alerts: list[dict[str, Any]], medium: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """What must not happen for innocent work: an alert at medium or above (but a medium one of the
    `medium` policies the case expects), or a low alert about a copy that does not say it is a
    guess (usb-unknown-device is about the stick and left aside)."""
    bad = []
    for alert in alerts:
        if alert.get("policy.id") == "usb-unknown-device":
            continue
        if alert.get("policy.id") in medium and alert.get("severity") in (*BELOW_MEDIUM, "medium"):
            continue
        if alert.get("severity") not in BELOW_MEDIUM or "guess" not in str(alert.get("summary", "")).lower():
            bad.append(alert)
    return bad


def mine(alerts: list[dict[str, Any]], roots: tuple[str, ...], serial: str) -> list[dict[str, Any]]:
    """The alerts about this run's stick or files: the agent sees every loop device on the machine."""
    return [a for a in alerts if a.get("device.serial") == serial
            or str(a.get("file.path", "")).startswith(roots)]


def brief(alert: dict[str, Any]) -> str:
    """One line about an alert."""
    return (f"{alert.get('severity')} {alert.get('policy.id')} {alert.get('process.name')} "
            f"{alert.get('file.path')} <- {alert.get('exfilguard.source.path')}: "
            f"{str(alert.get('summary'))[:160]}")


def main() -> int:
    """Run the innocent cases against a real agent and collector and print what each raised."""
    parser = argparse.ArgumentParser(prog="python -m tests.sensors.innocent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--night", action="store_true", help="the collector's clock in the backup window")
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between tagged reads and a write")
    parser.add_argument("cases", nargs="*", help="case names (default: all for the time of day)")
    args = parser.parse_args()
    from lab.loopstick import LoopStick, ensure_udevd
    from tests.e2e.harness import Process, free_port, port_open, wait_for

    top = Path(tempfile.mkdtemp(prefix="eg-innocent-", dir="/tmp"))
    top.chmod(0o755)
    work, base = top / "run", top / "data"
    work.mkdir()
    work.chmod(0o1777)
    matrix.make_data(base)
    make_home(base)
    make_wheel(work / "wheels")
    make_signatures(work)
    serial = f"EG-INNO-{os.getpid()}"
    zone = night_zone() if args.night else day_zone()
    port = free_port()
    collector_yaml, agent_yaml = configs(work, base, port, zone, serial)
    stick = LoopStick(top / "stick", label="PERSONAL", serial=serial, size_mib=256)
    processes = [Process([str(Path(sys.executable).parent / "exfilguard-collector"), "--config",
                          str(collector_yaml)], work / "collector.log").start()]
    result = 0
    try:
        wait_for(lambda: port_open(port), 30, "the collector")
        processes.append(Process([str(Path(sys.executable).parent / "exfilguard-agent"), "--config",
                                  str(agent_yaml)], work / "agent.log").start())
        ensure_udevd()
        stick.create()
        stick.plug()
        point = stick.mount()
        point.chmod(0o1777)
        from admin.demo import wait_for_mount
        from collector.store import open_store
        store = open_store(str(work / "collector.db"), readonly=True)
        try:
            wait_for_mount(store, str(point), dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), 60)
        finally:
            store.close()
        log = matrix.AlertLog(work / "alerts.jsonl")
        env = environment(base, point, work, args.pause)
        print(f"collector zone {zone} (local {dt.datetime.now(ZoneInfo(zone)):%H:%M}), stick {serial}")
        wanted = args.cases or [c.name for c in CASES
                                if c.name not in (DAY_ONLY if args.night else NIGHT_ONLY)]
        for case in (c for c in CASES if c.name in wanted):
            started = time.time()
            found = judge(case, env, log, work, serial)
            bad = pages(found, case.medium)
            result |= bool(bad)
            took = time.time() - started
            print(f"{case.name}: {'PAGES' if bad else 'ok'} ({len(found)} alerts, {took:.1f} s)")
            for alert in found:
                print("   ", brief(alert))
        for what in ("replug", "mkfs", "relabel"):
            before = len(log.read())
            stick.unmount()
            if what == "replug":
                stick.unplug()
                stick.plug()
            elif what == "mkfs":
                subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "PERSONAL", stick.device], check=True)
            else:
                subprocess.run(["e2label", stick.device, "HOLIDAY"], check=True)
            stick.mount()
            time.sleep(3)  # a lab run: let the device events arrive
            found = mine(log.read()[before:], (str(top), str(point)), serial)
            print(f"{what}: {'PAGES' if pages(found) else 'ok'}")
            for alert in found:
                print("   ", brief(alert))
    finally:
        for process in reversed(processes):
            process.terminate()
            process.stop_quietly()
        stick.remove()
        if not os.environ.get("KEEP"):
            shutil.rmtree(top, ignore_errors=True)
        else:
            print("kept", top)
    return result


def judge(case: Innocent, env: dict[str, str], log: matrix.AlertLog, work: Path,
          serial: str) -> list[dict[str, Any]]:
    """Run a case; once every event before a sentinel written after it was evaluated, the alerts
    it raised about this run's stick or files."""
    before = len(log.read())
    run(case, env)
    sentinel = Path(env["STICK"]) / f".sentinel-{case.name}"
    sentinel.write_bytes(os.urandom(1000))
    settle(work, str(sentinel))
    return mine(log.read()[before:], (env["BASE"], env["WORK"], env["STICK"]), serial)


def settle(work: Path, sentinel: str, timeout: float = 60) -> bool:
    """Wait until the sentinel's file.write is stored: every earlier event was evaluated."""
    from collector.store import StoreError, open_store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = open_store(str(work / "collector.db"), readonly=True)
        try:
            if any(e.get("file.path") == sentinel for e in store.events()):
                time.sleep(0.5)
                return True
        except StoreError:
            pass
        finally:
            store.close()
        time.sleep(0.2)
    print(f"  (sentinel {sentinel} not stored within {timeout:.0f} s)")
    return False


if __name__ == "__main__":
    raise SystemExit(main())

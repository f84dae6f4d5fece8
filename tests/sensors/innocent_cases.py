"""Innocent cases for tests/sensors/innocent.py: the case record, and a desk user's day, indexers and
the backup job's mirror.

The cases here run as DESK, an ordinary account in none of the pack's lists (not a service
account, not a backup account), unless they name another: root, which ran most of the first
cases, is a service account in the pack, and an indexer or a backup tool run as root is excepted
for that alone. Each script writes names of its own onto the shared stick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Innocent:
    """One piece of innocent work: its script, who runs it (a user name, or the caller), and the
    policies it is expected to raise at medium (work that is not quite routine: says so, pages no one
    at high)."""

    name: str
    script: str
    user: str = ""
    medium: tuple[str, ...] = ()


# `games` is on every Debian system, owns nothing, and is in none of the pack's lists.
DESK = "games"

# A search indexer written in Python, installed as a program of its own (`docindexer`: the kernel
# names a script's process after the script): walks a tree, reads every file's start, writes a
# word index (outside the stick).
INDEXER_NAME = "docindexer"
INDEXER = r"""#!/usr/bin/python3
import json, os, re, sys
root, out = sys.argv[1], sys.argv[2]
index = {}
for top, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d != ".git"]
    for name in files:
        path = os.path.join(top, name)
        try:
            with open(path, "rb") as fh:
                words = set(re.findall(rb"[A-Za-z]{4,}", fh.read(65536)))
        except OSError:
            continue
        for word in words:
            index.setdefault(word.decode(), []).append(path)
with open(out, "w") as fh:
    json.dump(index, fh)
"""

# A long-lived Python session (a notebook): counts the rows of a tagged CSV, and minutes later
# writes a generated report, text of its own that is larger than what it read, to the stick.
REPORT_SESSION = r"""
import os, random, sys, time
stick, pause = sys.argv[1], float(sys.argv[2])
rows = 0
for name in sys.argv[3:]:
    with open(name) as fh:
        rows += sum(1 for _ in fh)
time.sleep(pause)
rng = random.Random()
with open(os.path.join(stick, "weekly-report.csv"), "w") as fh:
    fh.write("week,team,tickets,hours\n")
    for i in range(40000):
        fh.write(f"{i % 52},team-{rng.randrange(12)},{rng.randrange(400)},{rng.randrange(10**4) / 10}\n")
"""

# A project's tests that read tagged fixtures (the customer CSV's header, a few plans).
DEV_TESTS = r"""
import os, pathlib, unittest

class Fixtures(unittest.TestCase):
    def test_customer_header(self):
        with open(os.path.join(os.environ["DB"], "customers.csv")) as fh:
            self.assertEqual(fh.readline().strip().split(","), ["id", "name", "email", "balance"])

    def test_plans_have_budgets(self):
        for plan in sorted(pathlib.Path(os.environ["DOCS"]).glob("plan-1*.txt")):
            self.assertIn("budget", plan.read_text())
"""

# A browser's download: a PDF and a zip of the user's own files written to ~/Downloads.
DOWNLOAD = r"""
import os, sys, zipfile
where = sys.argv[1]
os.makedirs(where, exist_ok=True)
with open(os.path.join(where, "manual.pdf"), "wb") as fh:
    fh.write(b"%PDF-1.5\n" + os.urandom(400_000) + b"\n%%EOF\n")
with zipfile.ZipFile(os.path.join(where, "slides.zip"), "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("slides/talk.md", "# Conference talk\n" + "a slide about our open-source work\n" * 800)
    zf.writestr("slides/photo.jpg", b"\xff\xd8\xff\xe0" + os.urandom(150_000))
"""

# Files every project of a kind carries, byte for byte: a tagged repository has them and so has the
# user's own project (path -> content).
BOILERPLATE = {
    ".gitignore": "__pycache__/\n*.pyc\n*.o\nbuild/\n.venv/\n",
    ".editorconfig": "root = true\n\n[*]\nindent_style = space\nindent_size = 4\n",
    "requirements.txt": "requests\n",
    "tools/__init__.py": "\n",
}


def add_boilerplate(code: Path, project: Path) -> None:
    """The same boilerplate in the tagged source tree and in the user's own project, with code of
    its own beside it."""
    for top in (code, project):
        for name, text in BOILERPLATE.items():
            (top / name).parent.mkdir(parents=True, exist_ok=True)
            (top / name).write_text(text)
    (project / "tools/report.py").write_text("def main() -> None:\n    print('my own tool')\n")


_GIT = 'git -c safe.directory="$CODE"'

DESK_CASES = (
    # an IDE's indexer and search over the tagged source tree, as the developer
    Innocent("ctags-code", 'ctags -R -f "$WORK/tags-desk" "$CODE" && rm "$WORK/tags-desk"', user=DESK),
    Innocent("git-status-log", f'cd "$CODE" && {_GIT} status >/dev/null && '
             f'{_GIT} log --stat -n 20 >/dev/null && {_GIT} grep -n TODO >/dev/null && '
             f'{_GIT} blame m010.c >/dev/null', user=DESK),
    # a search for a word over every tagged tree, and a locate database of them
    Innocent("grep-everything", 'grep -rIl budget "$BASE" >/dev/null', user=DESK),
    Innocent("plocate-user", 'updatedb -l 0 -U "$BASE" -o "$WORK/desk.plocate.db" && '
             'plocate -d "$WORK/desk.plocate.db" plan-0 >/dev/null && rm "$WORK/desk.plocate.db"', user=DESK),
    # the site's indexer, listed in known_reader_processes, run by the service account it runs as;
    # the same program run by a desk user is a mass read of tagged files (medium): the account is
    # half of what makes a reader known, and a user's program reading every tagged file within a
    # minute is what staging looks like
    Innocent("indexer-service", f'printf "%s" "$INDEXER" > "$WORK/{INDEXER_NAME}" && '
             f'chmod 755 "$WORK/{INDEXER_NAME}" && runuser -u nobody -- "$WORK/{INDEXER_NAME}" "$BASE" '
             '"$WORK/index-svc.json" && rm "$WORK/index-svc.json"'),
    Innocent("indexer-user", 'mkdir -p "$WORK/desk-bin" && '
             f'printf "%s" "$INDEXER" > "$WORK/desk-bin/{INDEXER_NAME}" && '
             f'chmod 755 "$WORK/desk-bin/{INDEXER_NAME}" && "$WORK/desk-bin/{INDEXER_NAME}" "$BASE" '
             '"$WORK/index-desk.json" && rm -r "$WORK/index-desk.json" "$WORK/desk-bin"', user=DESK,
             medium=("staging-mass-read",)),
    # tests that read tagged fixtures, then the developer's own build output onto the stick
    Innocent("tests-then-build", 'mkdir -p "$WORK/devtests" && printf "%s" "$DEV_TESTS" > '
             '"$WORK/devtests/test_fixtures.py" && '
             'python3 -m unittest discover -q -s "$WORK/devtests" 2>/dev/null && '
             'make -s -C "$HOME_DIR/src/c" OUT="$WORK/devbuild" all && mkdir -p "$STICK/devbuild" && '
             'cp "$WORK/devbuild/app" "$STICK/devbuild/app" && rm -r "$WORK/devtests" "$WORK/devbuild"',
             user=DESK),
    # a handful of tagged files opened by day, the holiday photos copied later
    Innocent("desk-day-photos", 'cat "$DOCS/plan-20.txt" >/dev/null; head -20 "$DB/customers.csv" '
             '>/dev/null; less -F "$DOCS/plan-21.txt" </dev/null >/dev/null; '
             'grep -c schedule "$DOCS/plan-22.txt" >/dev/null; '
             'sleep "$PAUSE"; cp -r "$HOME_DIR/Pictures" "$STICK/holiday-desk"', user=DESK),
    Innocent("report-session", 'python3 -c "$REPORT_SESSION" "$STICK" "$PAUSE" "$DB/customers.csv"',
             user=DESK),
    # the user's photos archived onto the stick while the backup agent reads the tagged trees
    Innocent("tar-photos-during-backup", 'runuser -u backup -- rsync -a "$DB" "$DOCS" "$CODE" '
             '"$WORK/day-backup/" & runuser -u games -- tar czf "$STICK/photos-desk.tgz" -C "$HOME_DIR" '
             'Pictures; wait $!; '
             'rm -r "$WORK/day-backup"'),
    Innocent("rsync-music", 'rsync -a "$HOME_DIR/Music/" "$STICK/music-desk/"', user=DESK),
    # a downloaded PDF copied, a downloaded zip unpacked onto the stick, a package unpacked there
    Innocent("downloads", 'python3 -c "$DOWNLOAD" "$WORK/Downloads-desk" && '
             'cp "$WORK/Downloads-desk/manual.pdf" "$STICK/" && '
             'unzip -q "$WORK/Downloads-desk/slides.zip" -d "$STICK/unzipped" && '
             'rm -r "$WORK/Downloads-desk"', user=DESK),
    Innocent("dpkg-x-stick", 'dpkg -x "$DEB" "$STICK/pkg-desk"', user=DESK),
    # the nightly backup mirroring the tagged trees, a stale file on the drive deleted
    Innocent("nightly-mirror", 'rsync -a --delete "$DB" "$DOCS" "$CODE" "$STICK/mirror/" && '
             'echo stale > "$STICK/mirror/docs/old-plan.txt" && '
             'rsync -a --delete "$DB" "$DOCS" "$CODE" "$STICK/mirror/"', user="backup"),
    # the user's own Python project onto the stick: its .gitignore, .editorconfig, requirements.txt
    # and empty package marker are byte for byte the tagged repository's
    Innocent("own-project", 'cp -r "$HOME_DIR/src/pyproj" "$STICK/pyproj-desk"', user=DESK),
    # a package downloaded from the distribution's mirror (needs the network: not in the test)
    Innocent("apt-download", 'cd "$WORK" && apt-get download -q hello >/dev/null 2>&1 && '
             'dpkg -x hello_*.deb "$STICK/hello-pkg" && cp hello_*.deb "$STICK/" && rm hello_*.deb'),
)
NIGHT_ONLY = ("nightly-mirror",)
SCRIPTS = {"INDEXER": INDEXER, "REPORT_SESSION": REPORT_SESSION, "DEV_TESTS": DEV_TESTS, "DOWNLOAD": DOWNLOAD}

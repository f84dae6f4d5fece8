"""The content guard's verdict cache (agent/prevent/verdicts.py): a clean verdict is reused
only while everything it rests on holds. Real processes held in an open for writing (a FIFO
opens only when a reader comes, so the writer sits in `openat` as it would waiting for the
guard's answer), real /proc, a real DataFlow; and on a real loop-device stick, processes that
write clean files first and then carry tagged data."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.prevent import procs
from agent.prevent.decide import Decider
from agent.prevent.guard import ContentGuard
from agent.prevent.verdicts import ProcessHandle
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.lineage import DataFlow, SourceRead
from agent.sensors.tags import TagMap
from common.agentconfig import PreventSettings
from tests.e2e.harness import wait_for
from tests.prevent.carrier import carrying, derive
from tests.prevent.test_content_guard import guarded
from tests.sensors.recorder import Running

__all__ = ["guarded"]

STICK = "/media/verdicts-test/STICK/out.bin"  # only a name: the decider is asked about it

# opens each FIFO named for writing, in turn (each waits in openat until the test reads it);
# before the second, opens the file named by "then" and keeps it open ("setsid": leaves its
# process group and session for new ones instead)
WRITER = """
import os, sys
fifos, then = sys.argv[1:-1], sys.argv[-1]
held = []
for n, fifo in enumerate(fifos):
    if n == 1 and then == "setsid":
        os.setsid()
    elif n == 1 and then != "-":
        held.append(open(then, "rb"))
    with open(fifo, "wb"):
        pass
"""


class Writer:
    """A child process that sits in open-for-writing of one FIFO after another."""

    def __init__(self, tmp: Path, count: int, then: str = "-") -> None:
        self.fifos = [tmp / f"fifo{n}" for n in range(count)]
        for fifo in self.fifos:
            os.mkfifo(fifo)
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, *map(str, self.fifos), then])
        self.pid = self.proc.pid
        self.at = 0
        self.wait_in_open()

    def wait_in_open(self) -> None:
        """Until the child sits in the open of its current FIFO (not in the open of the file it
        keeps, which a loaded machine may show for a moment first)."""
        fifo = str(self.fifos[self.at])
        wait_for(lambda: procs.opens_for_writing(self.pid, fifo) is True, 15, "the writer to wait in open")

    def release(self) -> None:
        """Let the current open go on (a reader comes), then wait for the next one."""
        fd = os.open(self.fifos[self.at], os.O_RDONLY)
        os.close(fd)
        self.at += 1
        if self.at < len(self.fifos):
            self.wait_in_open()

    def stop(self) -> None:
        """Kill and reap it."""
        self.proc.kill()
        self.proc.wait(10)


def _in_open(pid: int) -> bool:
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return bool(call) and call[0] in {"257", "56"}  # openat: x86_64, aarch64


@pytest.fixture
def decider(tmp_path: Path) -> Iterator[tuple[Decider, DataFlow, Path]]:
    """A Decider over a tagged tree, with a real DataFlow; no fanotify (asked directly)."""
    db = tmp_path / "db"
    db.mkdir()
    (db / "customers.db").write_bytes(os.urandom(1000))
    tags = TagMap({str(db): ["database"]})
    flow = DataFlow()
    made = Decider(PreventSettings(removable_writes="block"), tags, FingerprintIndex(tags), flow, {})
    yield made, flow, db / "customers.db"
    made.close()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Callable[..., Writer]]:
    """Writers started by the test, killed after it."""
    made: list[Writer] = []

    def start(count: int, then: str = "-") -> Writer:
        (tmp_path / f"w{len(made)}").mkdir()
        made.append(Writer(tmp_path / f"w{len(made)}", count, then))
        return made[-1]

    yield start
    for one in made:
        one.stop()


# the two cached looks: the agent's and the responder's full one, which reads the open's flags,
# and the responder's first, which does not (an open allowed for writing is allowed for reading)
LOOKS = ["allow_known", "allow_clean"]


def _allowed(decide: Decider, look: str, pid: int) -> bool:
    # the writers sit in opens for writing: allow_known, allowing, says so
    if look == "allow_known":
        return decide.allow_known(pid, STICK) == "write"
    return decide.allow_clean(pid, lambda: STICK) == "write"


@pytest.mark.parametrize("look", LOOKS)
def test_a_clean_verdict_is_reused_until_the_process_opens_tagged_data(
        decider: tuple[Decider, DataFlow, Path], writer: Callable[..., Writer], look: str) -> None:
    decide, _flow, tagged = decider
    child = writer(2)
    assert not _allowed(decide, look, child.pid)  # nothing known yet: the full decision
    assert decide.removable_open(child.pid, STICK) is None
    assert _allowed(decide, look, child.pid)       # known clean: reused
    child.release()
    assert _allowed(decide, look, child.pid)
    decide.note_tagged_open(child.pid, str(tagged))   # heard: it opened tagged data
    assert not _allowed(decide, look, child.pid)
    verdict = decide.removable_open(child.pid, STICK)
    assert verdict is not None
    assert verdict.source == str(tagged)


@pytest.mark.parametrize("look", LOOKS)
def test_a_clean_verdict_does_not_survive_lineage_bringing_tagged_data(
        decider: tuple[Decider, DataFlow, Path], writer: Callable[..., Writer], look: str) -> None:
    decide, flow, tagged = decider
    child = writer(1)
    assert decide.removable_open(child.pid, STICK) is None
    assert _allowed(decide, look, child.pid)
    before = flow.version
    flow.note_read(child.pid, [SourceRead(str(tagged), ("database",), 1000, time.time())])
    assert flow.version > before
    assert not _allowed(decide, look, child.pid)
    assert decide.removable_open(child.pid, STICK) is not None


@pytest.mark.parametrize("look", LOOKS)
def test_a_writer_that_joins_a_group_that_read_tagged_data_is_decided_again(
        decider: tuple[Decider, DataFlow, Path], writer: Callable[..., Writer], look: str) -> None:
    decide, _flow, tagged = decider
    # a clean copy first; then the same process moves into a process group of its own, whose
    # tagged read was heard: the cached check reads the group with the open's flags (one read of
    # /proc/PID/stat) and must not answer from the verdict found in the old group
    child = writer(2, then="setsid")
    assert decide.removable_open(child.pid, STICK) is None
    assert _allowed(decide, look, child.pid)
    child.release()
    decide.note_heard(424242, str(tagged), child.pid, time.time())  # its new group (pgid = its pid)
    assert not _allowed(decide, look, child.pid)
    assert decide.verdicts.get(child.pid) is None  # forgotten: the group it rested on is gone
    verdict = decide.removable_open(child.pid, STICK)
    assert verdict is not None
    assert f"process group {child.pid}" in verdict.why


@pytest.mark.parametrize("look", LOOKS)
def test_files_opened_unheard_are_read_again_at_each_open(
        decider: tuple[Decider, DataFlow, Path], writer: Callable[..., Writer], look: str) -> None:
    decide, _flow, tagged = decider
    # opens the tagged file between its two writes; nothing tells the decider (no fanotify here,
    # as a derived file's open is not heard): its descriptors are looked at again
    child = writer(2, then=str(tagged))
    assert decide.removable_open(child.pid, STICK) is None
    child.release()
    assert not _allowed(decide, look, child.pid)
    verdict = decide.removable_open(child.pid, STICK)
    assert verdict is not None
    assert "holds tagged file" in verdict.why


def test_a_verdict_ends_with_its_process_and_with_its_parent(
        decider: tuple[Decider, DataFlow, Path], tmp_path: Path) -> None:
    decide, _flow, _tagged = decider
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # a parent that starts the writer and then waits to be killed: the writer is reparented
    parent = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "open({str(fifo)!r}, 'wb')"])
print(child.pid, flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        wait_for(lambda: _in_open(pid), 15, "the writer to wait in open")
        assert decide.removable_open(pid, STICK) is None
        assert decide.allow_known(pid, STICK)
        parent.kill()
        parent.wait(10)
        wait_for(lambda: not decide.allow_known(pid, STICK), 15, "the verdict to end with the parent")
        assert decide.verdicts.get(pid) is None
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # the orphaned writer's open goes on
    handle = ProcessHandle.open(os.getpid())
    assert handle is not None
    gone = subprocess.Popen(["true"])
    gone_handle = ProcessHandle.open(gone.pid)
    gone.wait(10)
    # reaped: every read through the held descriptors fails, whatever gets its number next
    assert gone_handle is not None
    assert (gone_handle.family(), gone_handle.writing(), gone_handle.held_paths()) == (None, None, None)
    assert handle.family() is not None
    handle.close()
    gone_handle.close()


def test_a_tagged_open_is_answered_quickly_only_away_from_writers(
        decider: tuple[Decider, DataFlow, Path], writer: Callable[..., Writer]) -> None:
    decide, _flow, tagged = decider
    child = writer(1)  # in this test's process group
    assert decide.removable_open(child.pid, STICK) is None  # a writer now
    elsewhere = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert decide.allow_tagged(elsewhere.pid, str(tagged))  # an innocent reader elsewhere
    finally:
        elsewhere.kill()
        elsewhere.wait(10)
    assert decide.allow_known(child.pid, STICK)  # what another group read does not count
    assert not decide.allow_tagged(os.getpid(), str(tagged))  # the writer's group: decided in full
    # and what it read is heard: the writer's next open is decided in full, and refused
    assert not decide.allow_known(child.pid, STICK)
    assert decide.removable_open(child.pid, STICK) is not None


THREADED = """
import os, sys, threading, time
def worker():
    os.open(sys.argv[1], os.O_RDONLY if sys.argv[2] == "read" else os.O_WRONLY)
threading.Thread(target=worker, daemon=True).start()
time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["read", "write"])
def test_the_thread_in_the_open_is_asked_not_the_main_thread(tmp_path: Path, mode: str) -> None:
    fifo = tmp_path / "stick-file"
    os.mkfifo(fifo)
    child = subprocess.Popen([sys.executable, "-c", THREADED, str(fifo), mode])
    try:
        # its main thread sleeps; a worker waits in the open (a FIFO opens when its other end does)
        wait_for(lambda: procs.opens_for_writing(child.pid, str(fifo)) is not None, 15,
                 "the worker to wait in open")
        assert procs.opens_for_writing(child.pid, str(fifo)) is (mode == "write")
        assert procs.opens_for_writing(child.pid, str(tmp_path / "another-file")) is None
    finally:
        child.kill()
        child.wait(10)


MAIN_ELSEWHERE = """
import os, sys, threading
worker, main = (os.O_RDONLY, os.O_WRONLY) if sys.argv[3] == "read" else (os.O_WRONLY, os.O_RDONLY)
threading.Thread(target=lambda: os.open(sys.argv[1], worker), daemon=True).start()
os.open(sys.argv[2], main)
"""


@pytest.mark.parametrize("mode", ["read", "write"])
def test_the_worker_in_the_open_of_the_stick_file_is_asked_while_the_main_thread_opens_another(
        tmp_path: Path, mode: str) -> None:
    stick, other = tmp_path / "stick-file", tmp_path / "spool"
    os.mkfifo(stick)
    os.mkfifo(other)
    # a worker waits in an open of the stick file, the main thread in the other way of another
    # (an agent hashing the stick while it writes its spool; a program writing to the stick
    # from a worker while its main thread sits in a read of a FIFO, which once passed as a read)
    child = subprocess.Popen([sys.executable, "-c", MAIN_ELSEWHERE, str(stick), str(other), mode])
    try:
        wait_for(lambda: procs.opens_for_writing(child.pid, str(stick)) is (mode == "write"), 15,
                 "the worker's open to be told", diagnose=lambda: repr(procs.opens_for_writing(
                     child.pid, str(stick))))
        assert procs.opens_for_writing(child.pid, str(other)) is (mode == "read")
        assert procs.opens_for_writing(child.pid, str(tmp_path / "staging" / "spool")) is None
        handle = ProcessHandle.open(child.pid)
        assert handle is not None
        try:  # the cached verdict's look at the main thread: not this file's open, so not told
            assert handle.writing(os.fsencode(stick)) is None
            assert handle.writing(os.fsencode(other)) is (mode == "read")
            # a file of the same name elsewhere (a staging copy) is not the one the main thread opens
            assert handle.writing(os.fsencode(tmp_path / "staging" / "spool")) is None
            # nor without a path (the responder's first look, Decider.allow_clean): the main
            # thread's open, for reading in the write case, would let a worker's write pass unchecked
            assert handle.writing() is None
        finally:
            handle.close()
    finally:
        child.kill()
        child.wait(10)


# ---------------------------------------------------------------- a real stick, real programs

# a process of another session holds a file on the stick open for writing meanwhile, so the tagged
# trees stay armed and every open is the guard's to answer; a process that wrote to the stick
# a moment ago is refused reading tagged files (it may be writing them): the scripts retry that
# read until the moment has passed (bounded)
WRITES_THEN_READS = """
import sys, time
point, tagged = sys.argv[1:3]
for i in range(6):
    with open(f"{point}/clean{i}.bin", "wb") as fh:
        fh.write(b"holiday photo %d" % i)
for _ in range(400):
    try:
        with open(tagged, "rb") as fh:
            data = fh.read()
        break
    except PermissionError:
        time.sleep(0.025)
else:
    sys.exit(4)
try:
    with open(f"{point}/leak.bin", "wb") as fh:
        fh.write(data)
except PermissionError:
    sys.exit(3)
"""


@pytest.fixture
def armed(guarded: tuple[Running, Path, Path]) -> Iterator[tuple[Running, Path, Path, ContentGuard]]:
    """The guarded stick, armed for a carrier of tagged data (agent/prevent/arming.py), with a file
    on it held open for writing by another session."""
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    with carrying(db / "sub" / "ledger.csv"):
        wait_for(lambda: guard.carriers.count() > 0 and guard.marks.sticks, 15, "the sticks to be armed")
        keep = subprocess.Popen(["sh", "-c", f"exec sleep 120 > {point}/keep"], start_new_session=True)
        try:
            wait_for(lambda: guard.decided > 0 and guard.decider.writers_left(), 15,
                     "the stick to be written")
            yield run, db, point, guard
        finally:
            keep.kill()
            keep.wait(10)


def _landed(point: Path, name: str) -> int:
    path = point / name
    return path.stat().st_size if path.exists() else 0


@pytest.mark.root
def test_a_process_that_wrote_clean_files_is_refused_after_reading_tagged_data(
        armed: tuple[Running, Path, Path, ContentGuard]) -> None:
    run, db, point, guard = armed
    fast = guard.fast
    done = subprocess.run([sys.executable, "-c", WRITES_THEN_READS, str(point), str(db / "customers.db")],
                          capture_output=True, timeout=60, start_new_session=True, check=False)
    assert done.returncode == 3, (done.returncode, done.stderr, guard.summary())
    assert all(_landed(point, f"clean{i}.bin") for i in range(6))
    assert _landed(point, "leak.bin") == 0
    # its clean writes after the first were answered from the cache
    wait_for(lambda: guard.fast - fast >= 4, 15, "cached answers", diagnose=guard.summary)
    blocked = run.events.wait_for(run.events.action("file.block", {"file.path": f"{point}/leak.bin"}))[0]
    assert "opened tagged file" in blocked["event.reason"]


@pytest.mark.root
def test_a_shell_writing_what_its_child_pipeline_reads_from_tagged_data_is_refused(
        armed: tuple[Running, Path, Path, ContentGuard]) -> None:
    run, db, point, guard = armed
    (db / "notes.txt").write_text("".join(f"customer {i} secret\n" for i in range(20)))
    fast = guard.fast
    # the shell itself writes (lastpipe: the loop runs in it), first its own lines, then the
    # lines its child `cat` reads from the tagged file
    script = (f"shopt -s lastpipe; for i in 1 2 3 4 5; do echo clean $i > {point}/s$i; done; "
              f"for n in $(seq 400); do cat {db}/notes.txt > /dev/null 2>&1 && break; sleep 0.025; done; "
              f"cat {db}/notes.txt | while read -r line; do echo \"$line\" >> {point}/leak.txt; done")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          start_new_session=True, check=False)
    assert "not permitted" in done.stderr, done.stderr
    assert all(_landed(point, f"s{i}") for i in range(1, 6))
    assert _landed(point, "leak.txt") == 0
    wait_for(lambda: guard.fast - fast >= 3, 15, "cached answers", diagnose=guard.summary)
    blocked = run.events.wait_for(run.events.action("file.block", {"file.path": f"{point}/leak.txt"}))[0]
    assert "tagged file" in blocked["event.reason"]


@pytest.mark.root
def test_one_cp_of_untagged_files_then_a_tagged_one_lands_only_the_untagged(
        guarded: tuple[Running, Path, Path], tmp_path: Path) -> None:
    run, db, point = guarded
    guard = run.sensor("prevent")
    assert isinstance(guard, ContentGuard)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        (photos / f"img{i}.jpg").write_bytes(os.urandom(3000))
    fast = guard.fast
    # one cp: the photos first (its verdict cached after the first), then the tagged file; the
    # sticks armed for a carrier of another session (unarmed, the photos are not asked at all)
    with carrying(db / "orders.csv"):
        wait_for(lambda: guard.carriers.count() > 0 and guard.marks.sticks, 15, "the sticks to be armed")
        done = subprocess.run(["cp", "-r", str(photos), str(db / "customers.db"), f"{point}/"],
                              capture_output=True, text=True, timeout=60, start_new_session=True, check=False)
    assert done.returncode != 0
    assert "ermission denied" in done.stderr or "not permitted" in done.stderr, done.stderr
    assert all(_landed(point, f"photos/img{i}.jpg") == 3000 for i in range(8))
    assert _landed(point, "customers.db") == 0
    wait_for(lambda: guard.fast - fast >= 6, 15, "cached answers", diagnose=guard.summary)
    run.events.wait_for(run.events.action("file.block"))


# a derived file is outside the tagged trees: its open is not heard, only seen held open (named
# in the environment: lineage takes a file named on the command line for read from the start)
WRITES_THEN_HOLDS_DERIVED = """
import os, sys
point, derived = sys.argv[1], os.environ["DERIVED"]
for i in range(6):
    with open(f"{point}/clean{i}.bin", "wb") as fh:
        fh.write(b"holiday photo %d" % i)
held = open(derived, "rb")
data = held.read()
try:
    with open(f"{point}/leak.bin", "wb") as fh:
        fh.write(data)
except PermissionError:
    sys.exit(3)
"""


@pytest.mark.root
def test_a_cached_writer_holding_a_derived_file_is_refused(
        armed: tuple[Running, Path, Path, ContentGuard], tmp_path: Path) -> None:
    run, db, point, guard = armed
    export = tmp_path / "export.csv"
    derive(guard, db / "customers.db", export)
    fast = guard.fast
    done = subprocess.run([sys.executable, "-c", WRITES_THEN_HOLDS_DERIVED, str(point)],
                          env={**os.environ, "DERIVED": str(export)}, capture_output=True, timeout=60,
                          start_new_session=True, check=False)
    assert done.returncode == 3, (done.returncode, done.stderr, guard.summary())
    assert all(_landed(point, f"clean{i}.bin") for i in range(6))
    assert _landed(point, "leak.bin") == 0
    wait_for(lambda: guard.fast - fast >= 4, 15, "cached answers", diagnose=guard.summary)
    blocked = run.events.wait_for(run.events.action("file.block", {"file.path": f"{point}/leak.bin"}))[0]
    assert "derived file" in blocked["event.reason"]

"""The sensors' parts on real files and processes, no devices needed (run anywhere)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

from agent.sensors import finished, procinfo, provenance
from agent.sensors.files import RecentCreates
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.formers import FormerVersions
from agent.sensors.mounts import parse_mountinfo
from agent.sensors.staging import StagingDetector, Written, looks_like_archive
from agent.sensors.tags import TagMap
from common.agentconfig import SensorSettings
from protos import exfilguard_pb2 as pb
from tests.sensors.recorder import Recorder

MOUNTINFO = (
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "90 27 7:3 / /media/alice/MY\\040STICK rw,nosuid,nodev,relatime shared:50 - vfat /dev/sdb1 rw,uid=1000\n"
    "91 27 7:4 / /mnt/ro ro,relatime - ext4 /dev/loop4 ro\n"
)


def test_mountinfo_parsing_unescapes_and_reads_options() -> None:
    table = parse_mountinfo(MOUNTINFO)
    assert table[90].point == "/media/alice/MY STICK"
    assert (table[90].source, table[90].fs_type, table[90].read_only) == ("/dev/sdb1", "vfat", False)
    assert table[91].read_only is True
    assert set(table) == {27, 90, 91}


def test_tag_map_globs_nesting_and_union(tmp_path: Path) -> None:
    for user in ("alice", "bob"):
        (tmp_path / "home" / user / "projects" / "secret").mkdir(parents=True)
    (tmp_path / "srv" / "db" / "inner").mkdir(parents=True)
    tags = TagMap({
        str(tmp_path / "home" / "*" / "projects" / "secret"): ["source-code"],
        str(tmp_path / "srv" / "db"): ["database"],
        str(tmp_path / "srv" / "db" / "inner"): ["crown-jewels"],
    })
    assert tags.tags_for(str(tmp_path / "home" / "bob" / "projects" / "secret" / "a.c")) == ["source-code"]
    assert tags.tags_for(str(tmp_path / "srv" / "db" / "inner" / "x")) == ["database", "crown-jewels"]
    assert tags.tags_for(str(tmp_path / "srv" / "dbx")) == []
    assert len(tags.top_roots()) == 3  # two homes and /srv/db; inner is inside db
    (tmp_path / "home" / "carol" / "projects" / "secret").mkdir(parents=True)
    assert len(tags.refresh()) == 5  # a new home directory matching the glob is picked up


def test_fingerprint_index_finds_renamed_copies_only(tmp_path: Path) -> None:
    root = tmp_path / "db"
    root.mkdir()
    original = root / "customers.sqlite"
    original.write_bytes(os.urandom(50_000))
    twin_size = root / "other.bin"
    twin_size.write_bytes(os.urandom(50_000))  # same size, other content
    (root / "empty").write_bytes(b"")
    index = FingerprintIndex(TagMap({str(root): ["database"]}))
    assert index.rebuild() == 3
    assert index.totals() == {"database": (3, 100_000)}

    copy = tmp_path / "holiday.jpg"
    copy.write_bytes(original.read_bytes())
    changed = tmp_path / "changed.bin"
    data = original.read_bytes()
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the last byte always differs
    empty = tmp_path / "empty-copy"
    empty.write_bytes(b"")
    for path, expected in ((copy, str(original)), (changed, None), (empty, None)):
        fd = os.open(path, os.O_RDONLY)
        try:
            found = index.match(fd, path.stat().st_size)
        finally:
            os.close(fd)
        assert (found[0] if found else None) == expected

    original.rename(root / "renamed.sqlite")
    index.move(str(original), str(root / "renamed.sqlite"))
    assert index.tags_of(str(root / "renamed.sqlite")) == ("database",)
    index.remove(str(twin_size))
    assert index.totals() == {"database": (2, 50_000)}


def test_fingerprint_index_looks_again_at_files_indexed_mid_write(tmp_path: Path) -> None:
    """A file indexed from its create event (stat'ed while still empty) whose close-after-write
    never reaches the index (written before its directory's mark, or by the agent itself) is
    stat'ed again on the next match and inventory check: a copy of it is still found."""
    root = tmp_path / "db"
    root.mkdir()
    index = FingerprintIndex(TagMap({str(root): ["database"]}))
    assert index.rebuild() == 0
    made = root / "cust2.csv"
    made.write_bytes(b"")
    index.update(str(made), written=False)  # the create event, handled before the write
    content = os.urandom(3400)
    made.write_bytes(content)  # its close-after-write is never seen
    copy = tmp_path / "holiday.jpg"
    copy.write_bytes(content)
    fd = os.open(copy, os.O_RDONLY)
    try:
        found = index.match(fd, len(content))
    finally:
        os.close(fd)
    assert found is not None and found[0] == str(made)
    assert index.totals() == {"database": (1, 3400)}

    # a close-after-write seen settles the entry: no stat on the next look-ups
    other = root / "cust3.csv"
    other.write_bytes(b"x" * 10)
    index.update(str(other), written=False)
    index.update(str(made))
    index.update(str(other))
    other.write_bytes(b"y" * 20)  # not reported: nothing looks at it again
    index.settle()
    assert index.totals() == {"database": (2, 3410)}


def test_the_index_hands_the_catalog_only_what_changed(tmp_path: Path) -> None:
    """A burst of new tagged files costs the catalog one look each (its change feed), not a
    snapshot of the whole index per file; a rebuild or the first look asks for a snapshot."""
    root = tmp_path / "db"
    root.mkdir()
    (root / "old.csv").write_bytes(b"old")
    index = FingerprintIndex(TagMap({str(root): ["database"]}))
    index.rebuild()
    version, changes = index.take_changes()
    assert changes is None and version == index.version  # no feed yet: take a snapshot
    assert index.take_changes() == (version, [])
    new = root / "new.csv"
    new.write_bytes(b"new data")
    index.update(str(new))
    index.remove(str(root / "old.csv"))
    version, changes = index.take_changes()
    assert version == index.version
    st = new.stat()
    assert changes == [(str(new), (8, st.st_mtime_ns, ("database",))), (str(root / "old.csv"), None)]
    index.rebuild()
    assert index.take_changes()[1] is None


def test_process_identity_live_and_gone() -> None:
    me = procinfo.read_proc(os.getpid())
    assert me is not None
    assert me.executable == os.path.realpath(sys.executable)
    assert me.uid == os.getuid()
    cache = procinfo.ProcessCache()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    seen = cache.lookup(child.pid)
    assert seen is not None and seen.pid == child.pid
    child.communicate(b"")
    assert procinfo.read_proc(child.pid) is None  # exited and reaped
    assert cache.lookup(child.pid) == seen       # still named from what was seen alive


def test_staging_mass_read_and_archive(tmp_path: Path) -> None:
    events = Recorder()
    staging = StagingDetector(SensorSettings(mass_read_files=3, archive_min_files=2), events)
    for i in range(5):
        staging.note_read(4242, None, f"/srv/db/f{i}", ["database"])
    mass = events.wait_for(events.action("file.mass_read", {"process.pid": 4242}), timeout=1)
    assert len(mass) == 1 and mass[0]["exfilguard.count"] == 3
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    archive = tmp_path / "out.bin"
    archive.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a zip, whatever its name
    for path in (plain, archive):
        fd = os.open(path, os.O_RDONLY)
        try:
            staging.note_write(Written(path=str(path), size=path.stat().st_size, pid=4242, fd=fd))
        finally:
            os.close(fd)
    found = events.matching(events.action("file.archive"))
    assert [e["file.path"] for e in found] == [str(archive)]
    assert found[0]["exfilguard.copy.files_read"] == 5
    assert looks_like_archive("/x/backup.tar.gz", None)
    assert not looks_like_archive("/x/notes.txt", None)


def test_process_known_by_its_exec_after_it_is_gone() -> None:
    cache = procinfo.ProcessCache()
    child = subprocess.Popen(["sleep", "5"])
    cache.note_exec(child.pid, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")  # the loader: ignored
    cache.note_exec(child.pid, "/usr/bin/sleep")
    child.kill()
    child.wait()
    info = cache.lookup(child.pid)  # never read from /proc while alive
    assert info is not None
    assert (info.executable, info.uid) == ("/usr/bin/sleep", os.getuid())


def test_a_forked_child_gone_unseen_is_named_from_its_parent() -> None:
    """rsync's receiver: forked by the generator, forked by rsync, never executes anything, and
    may be gone before its first write on the stick is handled. Looked at when its grandparent
    was, it is named by the grandparent's program and user, attribution inferred."""
    cache = procinfo.ProcessCache()
    script = "import os, sys, time\nif os.fork() == 0:\n    if os.fork() == 0:\n        sys.stdin.read()\n" \
             "        os._exit(0)\n    os.wait()\n    os._exit(0)\nos.wait()\n"
    # the system's interpreter: another user may not run the one in the checkout's venv
    argv = ["python3", "-c", script]
    runner = subprocess.Popen(["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv,
                              stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        top = runner.pid
        while time.monotonic() < deadline:  # runuser forks the interpreter; it forks twice
            tree = [top, *_children(top)]
            python = next((pid for pid in tree if "python" in _comm(pid)), 0)
            if python and _children(python) and _children(_children(python)[0]):
                break
            time.sleep(0.01)
        receiver = _children(_children(python)[0])[0]
        parent = cache.lookup(python)  # its first event: read while it lives
        assert parent is not None
        assert runner.stdin is not None
        runner.stdin.close()
        runner.wait(10)
        assert procinfo.read_proc(receiver) is None  # exited, never looked at itself
        info = cache.lookup(receiver)
        assert info is not None and info.inherited
        assert (info.pid, info.executable, info.uid) == (receiver, parent.executable, parent.uid)
        event = pb.Event()
        procinfo.describe(event, info, procinfo.EXACT, receiver)
        assert event.process.name == parent.name and event.exfilguard.attribution == procinfo.INFERRED
        if os.geteuid() == 0:
            assert event.user.name == "nobody"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def test_process_cache_sees_an_exec_at_once_and_checks_again_after_a_while() -> None:
    # a pid checked a moment ago is not read again, unless an exec of it was noted
    cache = procinfo.ProcessCache(recheck_seconds=60.0)
    script = "import os, sys; sys.stdin.readline(); os.execv('/bin/sleep', ['sleep', '30'])"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        before = cache.lookup(child.pid)
        assert before is not None and before.name.startswith("python")
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        deadline = time.monotonic() + 10
        while (now := procinfo.read_proc(child.pid)) is None or now.name != "sleep":
            assert time.monotonic() < deadline, "the child never executed sleep"
            time.sleep(0.01)
        assert cache.lookup(child.pid) == before  # within recheck_seconds: taken as checked
        cache.note_exec(child.pid, os.path.realpath("/bin/sleep"))  # fanotify's FAN_OPEN_EXEC
        after = cache.lookup(child.pid)
        assert after is not None and after.name == "sleep" and after.command_line == "sleep 30"
        quick = procinfo.ProcessCache(recheck_seconds=0.0)  # checked at every look-up
        assert quick.lookup(child.pid) == after
    finally:
        child.kill()
        child.communicate()


def test_catch_up_reports_writes_between_mount_and_watch(tmp_path: Path) -> None:
    """Files changed after the mount was seen and before the watch was placed are reported
    once; older files and files the watch itself sees are not."""
    import time

    from agent.sensors.copies import CopyDetector
    from agent.sensors.media import RemovableMedia, RemovableMount
    from common.agentconfig import Removable
    from protos import exfilguard_pb2 as pb

    events = Recorder()
    media = RemovableMedia(Removable())
    index = FingerprintIndex(TagMap({}))
    # the agent runs first: what changed before it started is the late examination's (late.py)
    copies = CopyDetector(index, media, StagingDetector(SensorSettings(), events), events)
    # file ctimes come from the kernel's coarse clock (a tick behind time.time()): a file
    # changed within a tick of the agent's start would carry a ctime from before it
    time.sleep(0.05)
    stick = tmp_path / "stick"
    (stick / "old").mkdir(parents=True)
    (stick / "old" / "photo.jpg").write_bytes(b"x")
    old_time = time.time() - 3600
    os.utime(stick / "old" / "photo.jpg", (old_time, old_time))  # mtime only: ctime stays now
    seen_at = time.time()
    (stick / "early.bin").write_bytes(b"written before the watch")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(stick / "early.bin", nobody, -1)  # as if nobody wrote it (the owner is the writer's uid)
    time.sleep(0.05)  # the kernel's file clock is coarse
    watched_at = time.time()
    time.sleep(0.05)
    (stick / "late.bin").write_bytes(b"the watch reports this one")
    mount = RemovableMount(str(stick), pb.Device(name="/dev/sdz", serial="S1", removable=True),
                           pb.Mount(point=str(stick)), seen_at=seen_at)
    media.add_mount(mount)
    # early.bin, and photo.jpg: utime left its ctime within the margin before the mount was seen
    assert copies.catch_up(mount, watched_at) == 2
    written = sorted(e["file.path"] for e in events.matching(events.action("file.write")))
    assert written == [str(stick / "early.bin"), str(stick / "old" / "photo.jpg")]
    assert all(e["device.serial"] == "S1" for e in events.matching(events.action("file.write")))
    # no process is known for what the scan finds: the file's owner is named, as inferred
    early = next(e for e in events.matching(events.action("file.write"))
                 if e["file.path"].endswith("early.bin"))
    assert (early["user.name"], early["exfilguard.attribution"]) == ("nobody", "inferred")
    present = RemovableMount(str(stick), mount.device, mount.mount, seen_at=0.0)
    assert copies.catch_up(present, watched_at) == 0  # there before the agent: not reported


def test_an_archive_whose_writer_is_gone_names_its_owner_in_the_copy_too(tmp_path: Path) -> None:
    """A tgz of tagged files whose writer (gzip, forked by tar) had exited before its close was
    handled: no process is known, so the file's owner names the user. The file.copy comes from
    the examiner after the sensor closed its descriptor; it named nobody (`?`), so the nightly
    backup's exception (its service account) never applied and the job paged on a busy machine."""
    from agent.content import ContentCatalog, ContentIdentifier
    from agent.content.examiner import Examiner
    from agent.sensors.copies import CopyDetector
    from agent.sensors.media import RemovableMedia, RemovableMount
    from common.agentconfig import Removable

    db = tmp_path / "srv" / "db"
    db.mkdir(parents=True)
    for i in range(4):
        (db / f"plan-{i}.txt").write_text(f"plan {i}: budget {i * 1000} and schedule\n" * (400 + i))
    index = FingerprintIndex(TagMap({str(db): ["database"]}))
    index.rebuild()
    catalog = ContentCatalog(index)
    catalog.start()
    examiner = Examiner(ContentIdentifier(catalog, index))
    examiner.start()
    try:
        assert catalog.wait_ready(20)
        events = Recorder()
        media = RemovableMedia(Removable())
        copies = CopyDetector(index, media, StagingDetector(SensorSettings(), events), events,
                              examiner=examiner)
        stick = tmp_path / "stick"
        stick.mkdir()
        media.add_mount(RemovableMount(str(stick), pb.Device(name="/dev/sdz", serial="S1", removable=True),
                                       pb.Mount(point=str(stick))))
        archive = stick / "docs.tgz"
        subprocess.run(["tar", "czf", str(archive), "-C", str(tmp_path / "srv"), "db"], check=True)
        os.chown(archive, pwd.getpwnam("nobody").pw_uid, -1)  # the writer's uid, as the kernel sets it
        fd = os.open(archive, os.O_RDONLY)
        try:
            copies.note_write(Written(path=str(archive), size=archive.stat().st_size, fd=fd))
        finally:
            os.close(fd)  # as the file sensor does once the write is handled
        copy = events.wait_for(events.action("file.copy"), 30)[0]
        assert copy["exfilguard.copy.identified_by"]  # found by its members, after the close
        write = events.matching(events.action("file.write"))[0]
        assert (write["user.name"], copy["user.name"]) == ("nobody", "nobody")
        assert copy["exfilguard.attribution"] == "inferred"
    finally:
        examiner.stop()
        catalog.stop()


def test_an_archive_event_whose_writer_is_gone_names_the_files_owner(tmp_path: Path) -> None:
    """file.archive of a writer known by its exec alone (gzip, forked by the backup account's tar,
    gone before its account was read): the archive's owner names the user, as inferred. It named
    nobody (user ?), and the nightly backup's exception (its service account) never applied."""
    events = Recorder()
    staging = StagingDetector(SensorSettings(), events)
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.txt").write_text("plan\n")
    archive = tmp_path / "docs.tgz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(tmp_path), "docs"], check=True)
    os.chown(archive, pwd.getpwnam("nobody").pw_uid, -1)  # the writer's uid, as the kernel sets it
    gzip = procinfo.ProcessInfo(pid=4242, executable="/usr/bin/gzip", command_line="gzip", name="gzip")
    fd = os.open(archive, os.O_RDONLY)
    try:
        written = Written(path=str(archive), size=archive.stat().st_size, pid=4242, info=gzip, fd=fd,
                          attribution=procinfo.INFERRED)
        assert staging.note_write(written, flow_files=40, flow_tags=("documents",)) == 40
    finally:
        os.close(fd)
    made = events.matching(events.action("file.archive"))[0]
    assert (made["process.name"], made["user.name"], made["exfilguard.attribution"]) == ("gzip", "nobody",
                                                                                         "inferred")


def test_tag_map_anchors_where_missing_paths_and_new_glob_matches_appear(tmp_path: Path) -> None:
    (tmp_path / "home" / "alice" / "projects" / "secret").mkdir(parents=True)
    (tmp_path / "home" / "bob").mkdir()
    (tmp_path / "home" / ".cache").mkdir()  # a wildcard matches no dotfile, as glob's
    pattern = str(tmp_path / "home" / "*" / "projects" / "secret")
    missing = str(tmp_path / "srv" / "db")
    tags = TagMap({pattern: ["source-code"], missing: ["database"]})
    assert tags.missing() == [missing]
    assert tags.all_tags() == ["source-code", "database"]
    assert tags.anchors() == {
        str(tmp_path): ("srv",),                                       # nearest existing of /srv/db
        str(tmp_path / "home"): ("*",),                                # a new user
        str(tmp_path / "home" / "bob"): ("projects",),                 # bob's projects, one level short
        str(tmp_path / "home" / "alice" / "projects"): ("secret",),    # the root's parent: its removal
    }
    (tmp_path / "srv" / "db").mkdir(parents=True)
    assert set(tags.refresh()) == {str(tmp_path / "home" / "alice" / "projects" / "secret"), missing}
    assert tags.missing() == []
    assert tags.anchors()[str(tmp_path / "srv")] == ("db",)
    assert str(tmp_path) not in tags.anchors()  # /srv exists now: no need to watch its parent


def test_recent_creates_reports_a_path_once_per_file(tmp_path: Path) -> None:
    created = RecentCreates(limit=2)
    path = tmp_path / "a"
    path.mkdir()
    assert created.first(str(path))
    assert not created.first(str(path))  # watchdog's walk of a new parent found it again
    path.rmdir()
    path.write_bytes(b"now a file")  # a file where the directory was (even on its inode): news
    assert created.first(str(path))
    assert not created.first(str(path))
    created.forget(str(path))  # deleted: a create there is news again
    assert created.first(str(path))
    assert created.first(str(tmp_path / "gone"))  # vanished already: reported, not remembered
    for name in ("b", "c"):
        (tmp_path / name).mkdir()
        assert created.first(str(tmp_path / name))
    assert created.first(str(path)), "bounded: the oldest entry made room"


def test_files_above_max_hash_bytes_match_by_size_and_sampled_hash(tmp_path: Path) -> None:
    root = tmp_path / "db"
    root.mkdir()
    big = root / "dump.bin"
    data = os.urandom(300_000)
    big.write_bytes(data)
    index = FingerprintIndex(TagMap({str(root): ["database"]}), max_hash_bytes=100_000)
    index.rebuild()
    middle = len(data) // 2
    copies = {
        "same.bin": (data, str(big)),
        # each edit changes its byte for certain (a random byte is 0 in 1 of 256 runs)
        "edited-start.bin": (bytes([data[0] ^ 1]) + data[1:], None),  # a sampled block differs: no match
        "edited-middle.bin": (data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:], None),
        # Between the samples: what the documented limit says goes unseen.
        "edited-between.bin": (data[:50_000] + bytes([data[50_000] ^ 1]) + data[50_001:], str(big)),
        "shorter.bin": (data[:-1], None),
    }
    for name, (content, expected) in copies.items():
        path = tmp_path / name
        path.write_bytes(content)
        fd = os.open(path, os.O_RDONLY)
        try:
            found = index.match(fd, len(content))
        finally:
            os.close(fd)
        assert found == ((expected, "") if expected else None), name  # "": not hashed whole
    assert provenance.sampled(str(big), ("database",), 300_000).identified_by == "sampled"


def test_own_reads_of_many_files_are_each_recognised_once(tmp_path: Path) -> None:
    # inotify cannot tell the agent's hashing reads from a user's: each own read hides one
    # open and one close of that file, however many files are read at once (a burst of new
    # tagged files fingerprinted within the entries' lifetime)
    index = FingerprintIndex(TagMap({str(tmp_path): ["database"]}))
    paths = [str(tmp_path / f"f{n}") for n in range(5000)]
    for name in paths:
        Path(name).write_bytes(b"x")
    for name in paths:
        assert index.read_own(name, os.fstat) is not None
    assert index.read_own(paths[0], os.fstat) is not None  # read twice: hides two of each
    for name in paths:
        assert index.read_by_us(name, "open") and index.read_by_us(name, "close")
    assert index.read_by_us(paths[0], "open") and index.read_by_us(paths[0], "close")
    assert not index.read_by_us(paths[0], "open")  # a user's open after ours
    assert not index.read_by_us(paths[1], "close")


def test_former_versions_are_bounded_in_time_and_number() -> None:
    kept = FormerVersions(keep_seconds=600, max_versions=2)
    for i in range(3):
        kept.add(f"/srv/db/f{i}", 10 + i, f"sha{i}", ("database",))
    assert len(kept) == 2 and kept.dropped == 1  # the oldest went first
    assert kept.find(10, "sha0") is None and not kept.has_size(10)
    found = kept.find(12, "sha2")
    assert found is not None and (found.path, found.tags) == ("/srv/db/f2", ("database",))
    assert kept.find(11, "sha2") is None  # same digest, other size: not this version
    assert kept.tags_of("/srv/db/f1") == ("database",)
    expired = FormerVersions(keep_seconds=0)
    expired.add("/srv/db/x", 5, "shax", ())
    assert expired.find(5, "shax") is None and len(expired) == 0 and not expired.has_size(5)


def test_stop_pipe_wakes_a_polling_thread_at_once() -> None:
    import select
    import threading
    import time

    from agent.background import Background
    from agent.sensors.stoppipe import StopPipe

    stop = StopPipe()
    returned: list[float] = []

    def run() -> None:
        poller = select.poll()
        stop.register(poller)
        while not stop.rang(poller.poll()):  # no timeout: only the pipe can end it
            pass
        returned.append(time.monotonic())

    thread = Background("test-poll", run)
    thread.start()
    started = time.monotonic()
    stop.wake(thread)
    alive = [t for t in threading.enumerate() if t.name == thread.name]
    assert not thread.running and not alive and returned and returned[0] - started < 5
    stop.close()
    stop.close()  # idempotent, as a sensor's stop()
    stop.wake(thread)  # nothing runs: nothing to wake


def test_a_removable_write_waits_only_for_temporary_names_and_files_still_being_written(
        tmp_path: Path) -> None:
    assert all(finished.temporary_name(n) for n in (".customers.csv.Ab12Cd", "ziAb12Cd", "x.part", "notes~"))
    assert not any(finished.temporary_name(n) for n in ("customers.csv", "db.zip", "part_aa", "db.tgz"))
    path = tmp_path / "x.bin"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    reader = os.open(path, os.O_RDONLY)
    try:
        assert finished.open_for_writing(reader)  # another writer holds it
        os.close(writer)
        assert not finished.open_for_writing(reader)
        assert not finished.open_for_writing(reader)  # the lease was dropped again
        again = os.open(path, os.O_WRONLY)  # a lease left held would stall this open
        os.close(again)
    finally:
        os.close(reader)


def test_what_catch_up_cannot_examine_is_an_agent_gap(tmp_path: Path) -> None:
    """A stick filled with more entries than the examination reads, or with directories nested
    deeper than PATH_MAX, may hide a copy written while it was not watched: an agent.gap says so
    (before, a log line only)."""
    import subprocess
    import time

    from agent.sensors.copies import CopyDetector
    from agent.sensors.media import RemovableMedia, RemovableMount
    from common.agentconfig import Removable
    from protos import exfilguard_pb2 as pb

    events = Recorder()
    media = RemovableMedia(Removable())
    staging = StagingDetector(SensorSettings(), events)
    copies = CopyDetector(FingerprintIndex(TagMap({})), media, staging, events)
    stick = tmp_path / "stick"
    stick.mkdir()
    level = "d" * 200
    subprocess.run(["bash", "-c", f'cd "$1" && for i in $(seq 25); do mkdir {level} && cd {level}; done '
                    "&& echo loot > loot.db", "-", str(stick)], check=True, timeout=60)
    for i in range(20):
        (stick / f"junk{i}").write_bytes(b"x")
    mount = RemovableMount(str(stick), pb.Device(name="/dev/sdz", serial="S1", removable=True),
                           pb.Mount(point=str(stick)), seen_at=time.time() - 1)
    media.add_mount(mount)

    def gaps() -> list[str]:
        return [e["event.reason"] for e in events.matching(events.action("agent.gap"))
                if e["exfilguard.gap.reason"] == "unexamined_files"]

    copies.examine_changed(str(stick), 0, time.time() + 60)
    assert len(gaps()) == 1
    assert str(stick) in gaps()[0]
    assert "deeper than PATH_MAX" in gaps()[0]
    copies.examine_changed(str(stick), 0, time.time() + 60, limit=5)
    assert "stopped after 5 entries" in gaps()[1]
    subprocess.run(["bash", "-c", f'cd "$1" && rm -rf {level}', "-", str(stick)], check=True, timeout=60)
    copies.examine_changed(str(stick), 0, time.time() + 60)
    assert len(gaps()) == 2  # everything examined: no gap

"""DataFlow and the lineage identification on real processes: pipes by inode and end, parents,
bounds; byte evidence against a guess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from agent.sensors import lineage, provenance
from agent.sensors.lineage import FORK_SLACK_SECONDS, DataFlow, SourceRead


def _read(path: str, size: int = 1000, at: float | None = None) -> SourceRead:
    return SourceRead(path, ("database",), size, time.time() if at is None else at)


@contextmanager
def _pipeline(command: str) -> Iterator[list[psutil.Process]]:
    """A shell pipeline whose members wait on stdin: (its processes, left to right)."""
    shell = subprocess.Popen(["bash", "-c", command], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            members = [p for p in psutil.Process(shell.pid).children() if p.name() != "bash"]
            if len(members) == command.count("|") + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        yield sorted(members, key=lambda p: p.pid)
    finally:
        assert shell.stdin is not None
        shell.stdin.close()
        shell.wait(10)


def test_data_flows_downstream_through_pipes_and_not_upstream() -> None:
    flow = DataFlow()
    with _pipeline("cat | tr a b | cat > /dev/null") as (reader, middle, writer):
        for proc in (reader, middle, writer):
            flow.note_exec(proc.pid)  # as fanotify's exec event records them
        assert not flow.carrying()
        flow.note_read(reader.pid, [_read("/srv/db/customers.csv")])
        assert flow.carrying()
        found = flow.flow([writer.pid])
        assert [s.path for s in found.sources] == ["/srv/db/customers.csv"]
        assert found.processes >= 3
        # the one-file question (an exact copy: did its writer read that file?) agrees
        assert flow.reached([writer.pid], "/srv/db/customers.csv")
        assert not flow.reached([writer.pid], "/srv/db/orders.sql")
        # the reader's own pipe leads downstream only: data read by the last one goes nowhere up
        flow.note_read(writer.pid, [_read("/srv/db/orders.sql")])
        assert [s.path for s in flow.flow([reader.pid]).sources] == ["/srv/db/customers.csv"]
        assert not flow.reached([reader.pid], "/srv/db/orders.sql")


def test_a_child_carries_what_its_parent_read_and_exited_processes_stay_linked() -> None:
    flow = DataFlow()
    parent = subprocess.Popen(["bash", "-c", "read x; sleep 5 & wait"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        flow.note_read(parent.pid, [_read("/srv/db/a.db")])  # read before the fork
        assert parent.stdin is not None
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.01)
        child = psutil.Process(parent.pid).children()[0]
        flow.note_exec(child.pid)
        assert [s.path for s in flow.flow([child.pid]).sources] == ["/srv/db/a.db"]
        child.kill()
        child.wait(5)
        # gone from /proc: the records still link it
        assert [s.path for s in flow.flow([child.pid]).sources] == ["/srv/db/a.db"]
    finally:
        parent.kill()
        parent.communicate(timeout=5)


def test_a_parent_upstream_of_its_childs_pipe_hands_on_what_it_read_after_the_fork() -> None:
    """`tar czf`: tar forks gzip and feeds it through a pipe; what tar reads long after the
    fork reaches gzip through the pipe (the parent link alone stops at the fork). gzip's exec
    was never handled (a busy agent, gzip gone since): tar's first tagged read recorded it."""
    flow = DataFlow()
    tar = subprocess.Popen(["bash", "-c", "exec 3> >(cat > /dev/null); read x"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(tar.pid).children() and time.monotonic() < deadline:
            time.sleep(0.01)
        gzip = psutil.Process(tar.pid).children()[0]
        late = gzip.create_time() + 30 * FORK_SLACK_SECONDS
        flow.note_read(tar.pid, [_read("/srv/db/early.db", at=gzip.create_time()),
                                 _read("/srv/db/late.db", at=late)])
        gzip.kill()
        gzip.wait(5)
        assert {s.path for s in flow.flow([gzip.pid]).sources} == {"/srv/db/early.db", "/srv/db/late.db"}
        assert flow.reached([gzip.pid], "/srv/db/late.db")
    finally:
        assert tar.stdin is not None
        tar.stdin.close()
        tar.wait(10)


def test_a_parent_gone_before_its_pipe_was_seen_is_upstream_of_the_child_reading_it() -> None:
    """`tar cJf` on a busy machine: tar's exec was recorded before it made the pipe to xz, and
    tar was gone before its first tagged read was handled, so nobody is known holding the write
    end of xz's input. The parent that forked xz is taken as that writer: what it read long
    after the fork reaches xz (the parent link alone stops at the fork)."""
    flow = DataFlow()
    tar = subprocess.Popen(["bash", "-c", "read x; exec 3> >(cat > /dev/null); read y"],
                           stdin=subprocess.PIPE)
    assert tar.stdin is not None
    try:
        flow.note_exec(tar.pid)  # no pipe yet
        tar.stdin.write(b"go\n")
        tar.stdin.flush()
        deadline = time.monotonic() + 10
        while not psutil.Process(tar.pid).children() and time.monotonic() < deadline:
            time.sleep(0.01)
        xz = psutil.Process(tar.pid).children()[0]
        flow.note_exec(xz.pid, tar.pid)  # its pipe's read end
        tar.kill()
        tar.wait(5)
        late = xz.create_time() + 30 * FORK_SLACK_SECONDS
        flow.note_read(tar.pid, [_read("/srv/db/early.db", at=xz.create_time()),
                                 _read("/srv/db/late.db", at=late)])  # tar gone: no fresh look
        assert {s.path for s in flow.flow([xz.pid]).sources} == {"/srv/db/early.db", "/srv/db/late.db"}
        # a child whose input pipe's writer is known gets its parent's reads only until the fork
        with _pipeline("cat | cat > /dev/null") as (first, second):
            flow.note_exec(first.pid)
            flow.note_exec(second.pid)
            shell = second.ppid()
            flow.note_read(shell, [_read("/srv/db/shell.db", at=second.create_time() + 30)])
            assert flow.flow([second.pid]).sources == ()
    finally:
        tar.kill()
        tar.wait(5)
        tar.stdin.close()


def test_an_exited_process_keeps_the_pipes_it_held_and_a_live_one_has_those_it_holds(
        monkeypatch: Any) -> None:
    """`tar cJf`'s xz: it closes its archive and exits, and the agent looks at it at that close
    (a moment later on a busy machine) finding a zombie without descriptors. The pipe it read
    from links it still: what tar read after forking it reaches the archive (it was the parent
    link alone: what tar read before the fork). A live process that closed a pipe is no longer
    linked by it (a script capturing each command's output would carry what all of them read)."""
    monkeypatch.setattr(lineage, "REFRESH_SECONDS", 0.0)  # every look reads /proc afresh
    flow = DataFlow()
    tar = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert tar.stdin is not None and tar.stdout is not None
    xz = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.buffer.read()"], stdin=tar.stdout)
    tar.stdout.close()
    try:
        flow.note_exec(tar.pid)
        flow.note_exec(xz.pid)
        flow.note_read(tar.pid, [_read("/srv/db/late.db", at=time.time() + 30 * FORK_SLACK_SECONDS)])
        tar.stdin.close()  # tar ends; xz reads to the end and exits, unreaped
        deadline = time.monotonic() + 10
        while psutil.Process(xz.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert psutil.Process(xz.pid).status() == psutil.STATUS_ZOMBIE
        flow.note_process(xz.pid)  # looked at again: no descriptor left
        assert [s.path for s in flow.flow([xz.pid]).sources] == ["/srv/db/late.db"]
    finally:
        tar.wait(10)
        xz.wait(10)
    # alive, its pipe closed: the link goes
    closer = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.buffer.read(); os.close(0); "
                               "sys.stdout.write('closed\\n'); sys.stdout.flush(); sys.stdin = None; "
                               "import time; time.sleep(30)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert closer.stdin is not None and closer.stdout is not None
    try:
        flow.note_exec(closer.pid)
        # upstream of its stdin: this process (long after it forked it: not by the parent link)
        flow.note_read(os.getpid(), [_read("/srv/db/mine.db", at=time.time() + 30 * FORK_SLACK_SECONDS)])
        assert [s.path for s in flow.flow([closer.pid]).sources][-1:] == ["/srv/db/mine.db"]
        closer.stdin.close()
        assert closer.stdout.readline() == b"closed\n"
        flow.note_process(closer.pid)
        assert "/srv/db/mine.db" not in [s.path for s in flow.flow([closer.pid]).sources]
    finally:
        closer.kill()
        closer.wait(10)
        closer.stdout.close()


def test_a_process_that_has_begun_to_exit_is_exiting_before_it_is_a_zombie() -> None:
    """`tar cJf` runs `sh -c xz` with the archive as its output: the shell exits after xz,
    closing its stdin pipe and then the archive, whose close-after-write the agent handles while
    the shell is still exiting (state R or D, the kernel's PF_EXITING set, no descriptor left).
    Taken for a live process that had closed its pipe, it lost its link to tar, and the staged
    archive was derived from nothing (its split parts then tied to nothing) in 2-5 of 8 runs."""
    line = Path(f"/proc/{os.getpid()}/stat").read_bytes()
    head, fields = line[: line.rindex(b")") + 2], line[line.rindex(b")") + 2 :].split()
    ppid, exiting, started = lineage.stat_fields(line)
    assert (ppid, exiting) == (os.getppid(), False)
    assert started == int(fields[19])
    fields[6] = str(int(fields[6]) | 0x4).encode()  # PF_EXITING: do_exit has begun
    assert lineage.stat_fields(head + b" ".join(fields)) == (ppid, True, started)
    fields[6] = str(int(fields[6]) & ~0x4).encode()
    fields[0] = b"Z"
    assert lineage.stat_fields(head + b" ".join(fields))[1] is True
    odd = b"1234 (a) b (c) S " + b" ".join(line[line.rindex(b")") + 4 :].split()[:48])  # ") " in a name
    assert lineage.stat_fields(odd)[0] == ppid


def test_the_next_command_of_the_writers_script_is_found_holding_the_new_derived_file(tmp_path: Path) -> None:
    """`tar czf x.tgz ... && openssl enc -in x.tgz`: when x.tgz becomes derived, openssl may
    hold it open before the agent has heard of openssl's exec: a child of the writer's parent
    (the script's shell) holding the file is one of its openers."""
    derived = tmp_path / "x.tgz"
    derived.write_bytes(b"staged")
    shell = subprocess.Popen(["bash", "-c", f'sleep 30 & exec 3<"{derived}"; sleep 30 & wait'])
    try:
        deadline = time.monotonic() + 10
        while len(psutil.Process(shell.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        writer, reader = sorted(psutil.Process(shell.pid).children(), key=lambda p: p.pid)
        flow = DataFlow()
        flow.note_exec(writer.pid)  # the writer is known; the reader's exec not yet handled
        st = derived.stat()
        found = flow.openers(st.st_dev, st.st_ino, time.time(), writer=writer.pid)
        assert reader.pid in found and writer.pid not in found
        assert reader.pid not in flow.openers(st.st_dev, st.st_ino, time.time())  # without the writer
    finally:
        for child in psutil.Process(shell.pid).children():
            child.kill()
        shell.wait(10)


def test_unrelated_processes_share_nothing_and_bounds_count_what_they_drop() -> None:
    flow = DataFlow(max_processes=4, max_sources=2)
    flow.note_read(os.getpid(), [_read(f"/srv/db/f{i}") for i in range(3)])
    assert flow.dropped == 1
    assert len(flow.flow([os.getpid()]).sources) == 2
    assert flow.flow([10_000_999]).sources == ()  # a process never linked to a reader
    for pid in range(10_000_000, 10_000_008):  # fake pids: no /proc entry, only data
        flow.note_read(pid, [_read("/srv/db/x")])
    assert flow.dropped > 1


def test_a_process_writing_tagged_files_in_turn_is_looked_at_once_per_program(monkeypatch: Any) -> None:
    """Each write forgets the open before it; the next open is not a first read again: the
    process's pipes and children are read once (then at most once a second), not per file."""
    looks: list[int] = []
    read_link = lineage._read_link

    def counted(pid: int, pairs: Any) -> Any:
        looks.append(pid)
        return read_link(pid, pairs)

    monkeypatch.setattr(lineage, "_read_link", counted)
    flow = DataFlow()
    me = os.getpid()
    for i in range(50):
        flow.note_read(me, [_read(f"/srv/db/f{i}")])
        flow.forget_read(me, f"/srv/db/f{i}")
    assert looks.count(me) == 1  # (its children, if any, are looked at with it)
    assert not flow.carrying()
    flow.note_exec(me)  # a new program: its first tagged read looks again
    flow.note_read(me, [_read("/srv/db/g")])
    assert looks.count(me) == 3
    assert flow.carrying()


def test_byte_evidence_needs_reads_while_the_file_was_written() -> None:
    now = time.time()
    during = DataFlow()
    during.note_read(1_000_001, [_read("/srv/db/big.db", 1_000_000, now)])
    flow = during.flow([1_000_001])
    made = provenance.by_lineage(flow, 300_000, created=now - 0.5)
    assert made is not None and made.identified_by == provenance.LINEAGE_BYTES and made.evidence
    assert made.source == "/srv/db/big.db" and made.bytes_read == 1_000_000
    # written more than it read: an unrelated file
    bigger = provenance.by_lineage(flow, 5_000_000, created=now - 0.5)
    assert bigger is not None and bigger.identified_by == provenance.LINEAGE_PROCESS
    # read long before the file was created: a guess
    later = provenance.by_lineage(flow, 300_000, created=now + 60)
    assert later is not None and later.identified_by == provenance.LINEAGE_PROCESS
    assert not later.evidence and later.confidence < 0.5
    assert provenance.by_lineage(flow, 0, created=now) is None  # empty: nothing was copied
    assert provenance.by_lineage(DataFlow().flow([1]), 10, created=now) is None


def test_what_a_bound_forgets_is_reported_as_a_lineage_gap_at_most_once_a_minute() -> None:
    from agent.sensors.access import AccessReporter
    from agent.sensors.copies import CopyDetector
    from agent.sensors.fingerprints import FingerprintIndex
    from agent.sensors.media import RemovableMedia
    from agent.sensors.staging import StagingDetector
    from agent.sensors.tags import TagMap
    from common.agentconfig import Removable, SensorSettings
    from tests.sensors.recorder import Recorder

    events = Recorder()
    index = FingerprintIndex(TagMap({}))
    flow = DataFlow(max_sources=1)
    staging = StagingDetector(SensorSettings(), events)
    copies = CopyDetector(index, RemovableMedia(Removable()), staging, events, flow=flow)
    reporter = AccessReporter(TagMap({}), index, copies, copies.staging, events)
    reporter.report_dropped()
    assert not events.events  # nothing forgotten, nothing said
    flow.note_read(10_000_123, [_read("/srv/db/a"), _read("/srv/db/b"), _read("/srv/db/c")])
    reporter.report_dropped()
    gap = events.wait_for(events.action("agent.gap"))[0]
    assert gap["exfilguard.gap.reason"] == "lineage_limit"
    assert gap["exfilguard.gap.lost"] == 2
    flow.note_read(10_000_123, [_read("/srv/db/d")])
    reporter.report_dropped()  # within the minute: counted, said later
    assert len(events.matching(events.action("agent.gap"))) == 1
    reporter.report_dropped(every=0.0)
    assert [e["exfilguard.gap.lost"] for e in events.matching(events.action("agent.gap"))] == [2, 1]


def test_data_flows_through_a_socketpair_both_ways_but_not_through_a_daemon_socket(tmp_path: Path) -> None:
    """Two sibling processes holding the ends of one socketpair (as rsync's sender and receiver)
    share what either read; two clients of one listening socket (a daemon) do not."""
    flow = DataFlow()
    ours, theirs = socket.socketpair()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "daemon.sock"))
    server.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(tmp_path / "daemon.sock"))
    accepted, _addr = server.accept()
    holders = []
    try:
        for end in (ours, theirs, client, accepted):  # each end held by a process of its own
            holders.append(subprocess.Popen(["bash", "-c", "read x"], stdin=subprocess.PIPE,
                                            pass_fds=[end.fileno()]))
        for end in (ours, theirs, client, accepted):
            end.close()
        sender, receiver, talker, daemon = holders
        for proc in holders:
            flow.note_exec(proc.pid)
        flow.note_read(sender.pid, [_read("/srv/db/customers.csv")])
        assert [s.path for s in flow.flow([receiver.pid]).sources] == ["/srv/db/customers.csv"]
        assert flow.carried_by(receiver.pid) and not flow.carried_by(talker.pid)
        flow.note_read(receiver.pid, [_read("/srv/db/orders.sql")])  # and back the other way
        assert {s.path for s in flow.flow([sender.pid]).sources} == {"/srv/db/customers.csv",
                                                                     "/srv/db/orders.sql"}
        flow.note_read(daemon.pid, [_read("/srv/db/ledger.db")])
        assert not flow.flow([talker.pid]).sources  # a daemon's reads do not reach its clients
    finally:
        for proc in holders:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
        server.close()


def test_the_later_volumes_of_one_writer_are_judged_from_the_reads_before_the_first() -> None:
    """`7z a -v64k`: every volume is born as the one before is closed; the last volumes' bytes
    were read long before they were born. A volume born within 2 s of the close of the same
    process's volume with byte evidence is judged from the reads since the first was born."""
    volumes = provenance.Volumes()
    now = time.time()
    reads = (_read("/srv/db/a.db", 300_000, at=now - 10), _read("/srv/db/b.db", 300_000, at=now - 9.5))
    flow = lineage.Flow(reads, 1)
    first = provenance.by_lineage(flow, 65536, volumes.start(7, now - 10.2))
    assert first is not None and first.identified_by == provenance.LINEAGE_BYTES
    volumes.closed(7, now - 10.2, first)
    # born later than 2 s after those reads: alone, a guess; as the next volume, evidence
    alone = provenance.by_lineage(flow, 65536, now - 0.5)
    assert alone is not None and alone.identified_by == provenance.LINEAGE_PROCESS
    nxt = provenance.by_lineage(flow, 65536, volumes.start(7, now - 0.5))
    assert nxt is not None and nxt.identified_by == provenance.LINEAGE_BYTES
    # another process, a volume born long after the last close, or after a guess: not continued
    assert volumes.start(8, now - 0.5) == now - 0.5
    assert volumes.start(7, now + 60) == now + 60
    volumes.closed(7, now - 0.4, alone)
    assert volumes.start(7, now - 0.3) == now - 0.3


def _holds(pid: int, path: Path) -> bool:
    """Whether the process has `path` open (False while its descriptors change: an exec)."""
    try:
        return str(path) in {str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return False


def test_data_flows_through_a_named_pipe_opened_after_the_readers_exec(tmp_path: Path) -> None:
    """`mkfifo f; cat db/x > f & openssl enc -in f -out stick/x`: the FIFO is a path in
    /proc/PID/fd, not `pipe:[N]`, and the reader opens it after its exec was recorded. Its first
    write on the stick looks at it afresh and finds the FIFO's writer upstream; a process
    holding another FIFO is not linked."""
    fifo, other = tmp_path / "f", tmp_path / "g"
    os.mkfifo(fifo)
    os.mkfifo(other)
    out = tmp_path / "out"
    flow = DataFlow()
    script = "import sys, time; sys.stdin.readline(); f = open(sys.argv[1], 'rb'); time.sleep(30)"
    reader = subprocess.Popen([sys.executable, "-c", script, str(fifo)], stdin=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", script, str(other)], stdin=subprocess.PIPE, text=True)
    writers: list[subprocess.Popen[str]] = []
    try:
        flow.note_exec(reader.pid)  # recorded at its exec: no FIFO open yet
        flow.note_exec(bystander.pid)
        for proc, path in ((reader, fifo), (bystander, other)):
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            writers.append(subprocess.Popen(["bash", "-c", f'exec sleep 30 > "{path}"'], text=True))
        deadline = time.monotonic() + 10
        # both ends: the reader's open returns as the writer's is still being completed
        ends = ((reader, fifo), (bystander, other), (writers[0], fifo), (writers[1], other))
        while not all(_holds(p.pid, path) for p, path in ends):
            assert time.monotonic() < deadline, "the FIFOs were not opened"
            time.sleep(0.01)
        flow.note_read(writers[0].pid, [_read("/srv/db/ledger.db")])  # its tagged read: its FIFO is recorded
        flow.note_read(writers[1].pid, [])
        flow.note_exec(writers[1].pid)
        assert flow.flow([reader.pid]).sources == ()  # its record predates the FIFO
        with out.open("wb") as fh:
            flow.note_write(reader.pid, fh.fileno())  # its first write on the stick: a fresh look
            flow.note_write(bystander.pid, fh.fileno())
        assert [s.path for s in flow.flow([reader.pid]).sources] == ["/srv/db/ledger.db"]
        assert flow.flow([bystander.pid]).sources == ()
    finally:
        for proc in (reader, bystander, *writers):
            proc.kill()
            proc.communicate(timeout=10)

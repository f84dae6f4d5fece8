"""The guard never leaves a process hanging: the real `exfilguard-agent` with
prevent.removable_writes: block and fail: closed, stopped (SIGSTOP, with its responder process)
while a copy waits, denies it when it runs again (and says so); killed while a copy waits, the
kernel lets the copy go on; its responder killed alone, it starts another and guards again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.loopstick import LoopStick
from tests.e2e.harness import free_port, wait_for
from tests.prevent.carrier import CARRIER, perm_marked

pytestmark = pytest.mark.root

AGENT = str(Path(sys.executable).parent / "exfilguard-agent")


def _state(proc: subprocess.Popen[bytes]) -> str:
    try:
        return f"exit {proc.poll()}; " + Path(f"/proc/{proc.pid}/syscall").read_text() + Path(
            f"/proc/{proc.pid}/stat").read_text()
    except OSError as exc:
        return f"exit {proc.poll()}; {exc}"


def _responders(agent: int) -> list[int]:
    """The agent's responder processes (agent/prevent/responder.py) among its children (not
    `ldconfig`, which ctypes runs a moment while the guard makes its groups anew)."""
    found = []
    for task in Path(f"/proc/{agent}/task").iterdir():
        try:
            children = [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue  # a thread that ended meanwhile
        for child in children:
            with contextlib.suppress(OSError):
                if b"agent.prevent.responder" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
    return found


def _responder(agent: int) -> int:
    """The agent's responder process: there is one."""
    found = _responders(agent)
    assert len(found) == 1, found
    return found[0]


def _stop(agent: int, sig: signal.Signals) -> None:
    """Stop or resume the agent and the responder that holds the opens for it."""
    for pid in (_responder(agent), agent):
        os.kill(pid, sig)


def _waiting_to_open(pid: int, path: Path) -> bool:
    """Whether the process sleeps in an unanswered openat of `path` (the name its call passes, read
    from its memory: not an open of a library or locale file on its way)."""
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()
        if not call or call[0] != "257" or not _waiting_in_open(pid):
            return False
        with Path(f"/proc/{pid}/mem").open("rb") as mem:
            mem.seek(int(call[2], 16))
            name = os.fsencode(path)
            return mem.read(len(name) + 1) == name + b"\0"  # no further: argv ends its mapping
    except (OSError, ValueError, IndexError):
        return False


def _waiting_in_open(pid: int) -> bool:
    """Whether the process sleeps in an open the guard has not answered."""
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return bool(call) and call[0] == "257" and state in {"S", "D"}


def test_stopped_agent_fails_closed_and_a_killed_one_releases(
        tmp_path: Path, loop_stick: Callable[..., LoopStick]) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "customers.db").write_bytes(os.urandom(50_000))
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(50_000))
    stick = loop_stick(label=f"SF{os.getpid() % 10000}", serial=f"EGSF{os.getpid()}")
    point = stick.mount()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"collector: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'state'}\n"
        f"tags:\n  {db}: [database]\nsensors: {{fanotify: 'off'}}\n"
        "prevent: {removable_writes: block, fail: closed, decision_timeout_ms: 200}\n")
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([AGENT, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    copies: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: f"guarding writes to {point}" in log.read_text(), 60, "the agent to guard the stick",
                 diagnose=log.read_text)
        _carrier(db / "customers.db", point, agent.pid, copies)
        # stopped: the copy of untagged data waits; resumed: the responder sees it stood still and
        # answers by fail: closed
        _stop(agent.pid, signal.SIGSTOP)
        copies.append(subprocess.Popen(["cp", str(plain), f"{point}/plain.bin"], stderr=subprocess.PIPE))
        wait_for(lambda: _waiting_in_open(copies[-1].pid), 15, "cp to wait in open",
                 diagnose=lambda: _state(copies[-1]))
        time.sleep(0.4)  # not a wait for an event: the stall itself, twice decision_timeout_ms long
        _stop(agent.pid, signal.SIGCONT)
        _, err = copies[-1].communicate(timeout=15)
        assert copies[-1].returncode != 0
        assert b"Operation not permitted" in err
        assert not (point / "plain.bin").exists() or (point / "plain.bin").stat().st_size == 0
        wait_for(lambda: "prevent_timeout" in log.read_text() or "denied undecided" in log.read_text(), 15,
                 "the defaulted decision to be reported", diagnose=log.read_text)
        # the responder killed: the agent starts another, which guards the stick as before
        first = _responder(agent.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "starting another" in log.read_text()
                 and _responders(agent.pid) not in ([], [first]), 30, "another responder",
                 diagnose=log.read_text)
        wait_for(lambda: subprocess.run(["cp", str(db / "customers.db"), f"{point}/again.db"],
                                        capture_output=True, check=False).returncode != 0, 30,
                 "a tagged copy to be refused again", diagnose=log.read_text)
        # killed while a copy of tagged data waits: the kernel allows it when the group closes
        _stop(agent.pid, signal.SIGSTOP)
        copies.append(subprocess.Popen(["cp", str(db / "customers.db"), f"{point}/c.db"]))
        wait_for(lambda: _waiting_in_open(copies[-1].pid), 15, "cp to wait in open",
                 diagnose=lambda: _state(copies[-1]))
        agent.kill()
        agent.wait(15)
        assert copies[-1].wait(15) == 0
        assert (point / "c.db").read_bytes() == (db / "customers.db").read_bytes()
    finally:
        for proc in (*copies, agent):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _carrier(tagged: Path, point: Path, agent: int, procs: list[subprocess.Popen[bytes]]) -> None:
    """A process of another session that read tagged data and lives on (killed with `procs`): the
    sticks stay armed while it does (agent/prevent/arming.py)."""
    carrier = subprocess.Popen([sys.executable, "-c", CARRIER, str(tagged)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, start_new_session=True)
    procs.append(carrier)
    assert carrier.stdout is not None
    assert carrier.stdout.readline() == b"read\n"
    wait_for(lambda: perm_marked(agent, point) is True, 15, "the sticks to be armed")


# writes one file on the stick and keeps it open (the tagged trees stay armed), then, told to,
# opens a second one for writing: its verdict is cached by then
WRITER = """
import sys
point = sys.argv[1]
first = open(f"{point}/one.bin", "wb")
first.write(b"holiday photo")
first.flush()
print("wrote", flush=True)
sys.stdin.readline()
try:
    with open(f"{point}/two.bin", "wb") as fh:
        fh.write(b"more")
    print("two: written", flush=True)
except PermissionError:
    print("two: refused", flush=True)
"""


def _armed(responder: int) -> bool:
    """Whether the responder's permission group has a tagged tree marked (FAN_OPEN_PERM)."""
    try:
        infos = list(Path(f"/proc/{responder}/fdinfo").iterdir())
    except OSError:
        return False  # gone (the agent replaces it)
    for info in infos:
        try:
            lines = info.read_text().splitlines()
        except OSError:
            continue
        if any(line.startswith("fanotify ino") and int(line.split("mask:")[1].split()[0], 16) & 0x10000
               for line in lines):
            return True
    return False


@contextlib.contextmanager
def _guarding(tmp_path: Path, loop_stick: Callable[..., LoopStick]) -> Iterator[tuple[
        subprocess.Popen[bytes], Path, Path, Path, list[subprocess.Popen[bytes]]]]:
    """An agent guarding a stick (fail closed, 10 s to decide, no file sensor), with a tagged
    file: (agent, tagged file, mount point, log, processes to kill at the end)."""
    db = tmp_path / "db"
    db.mkdir()
    (db / "customers.db").write_bytes(os.urandom(50_000))
    stick = loop_stick(label=f"SG{os.getpid() % 10000}", serial=f"EGSG{os.getpid()}")
    point = stick.mount()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"collector: 127.0.0.1:{free_port()}\nstate_dir: {tmp_path / 'state'}\n"
        f"tags:\n  {db}: [database]\nsensors: {{fanotify: 'off'}}\n"
        "prevent: {removable_writes: block, fail: closed, decision_timeout_ms: 10000}\n")
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([AGENT, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: f"guarding writes to {point}" in log.read_text(), 60, "the agent to guard the stick",
                 diagnose=log.read_text)
        yield agent, db / "customers.db", point, log, procs
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGCONT)
        for proc in (*procs, agent):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def test_a_cached_write_waits_while_a_tagged_read_of_its_group_waits_for_the_agent(
        tmp_path: Path, loop_stick: Callable[..., LoopStick]) -> None:
    """The responder answers a writer from its verdict only while no tagged open of the writer's
    process group is with the agent: the agent looks at both in one step (a pipeline's write let
    through here while its tagged read is let through there would pass both)."""
    with _guarding(tmp_path, loop_stick) as (agent, tagged, point, log, procs):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(point)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, process_group=0)
        procs.append(writer)
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline() == b"wrote\n"
        responder = _responder(agent.pid)
        wait_for(lambda: _armed(responder), 15, "the tagged trees to be armed", diagnose=log.read_text)
        # the agent stands still: a tagged read of the writer's group waits for it
        agent.send_signal(signal.SIGSTOP)
        reader = subprocess.Popen(["cat", str(tagged)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, process_group=writer.pid)
        procs.append(reader)
        wait_for(lambda: _waiting_in_open(reader.pid), 5, "the tagged read to wait",
                 diagnose=lambda: _state(reader))
        # with no carrier the sticks were unarmed: the tagged read arms them before it is answered
        # (agent/prevent/arming.py), the agent standing still
        wait_for(lambda: perm_marked(agent.pid, point) is True, 5, "the tagged read to arm the sticks")
        writer.stdin.write(b"go\n")
        writer.stdin.flush()
        # its write waits for the agent too, instead of being answered from its verdict
        wait_for(lambda: _waiting_in_open(writer.pid), 5, "the write to wait for the agent",
                 diagnose=lambda: _state(writer))
        agent.send_signal(signal.SIGCONT)
        assert writer.stdout.readline() == b"two: refused\n"
        assert reader.wait(15) != 0
        assert not (point / "two.bin").exists() or (point / "two.bin").stat().st_size == 0


def test_an_innocent_reader_is_answered_while_armed_and_the_writers_group_is_not(
        tmp_path: Path, loop_stick: Callable[..., LoopStick]) -> None:
    """While a write keeps the tagged trees armed, the responder answers the tagged opens of a
    process that is not known to write to removable media, nor any process of its group, with
    the agent standing still; a process of the writer's group waits for the agent and is refused,
    even right after the same file was read by the innocent one. The same after the responder is
    replaced: the agent tells the new one the writers it knows."""
    with _guarding(tmp_path, loop_stick) as (agent, tagged, point, log, procs):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(point)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, process_group=0)
        procs.append(writer)
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"wrote\n"
        _reads_while_the_agent_stands_still(agent, tagged, writer, log, procs)
        first = _responder(agent.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _responders(agent.pid) not in ([], [first]), 30, "another responder",
                 diagnose=log.read_text)
        _reads_while_the_agent_stands_still(agent, tagged, writer, log, procs)


def _reads_while_the_agent_stands_still(agent: subprocess.Popen[bytes], tagged: Path,
                                        writer: subprocess.Popen[bytes], log: Path,
                                        procs: list[subprocess.Popen[bytes]]) -> None:
    """An innocent reader's tagged read goes through with the agent stopped; one of the writer's
    process group waits for the agent and is refused once it runs again."""
    responder = _responder(agent.pid)
    wait_for(lambda: _armed(responder), 15, "the tagged trees to be armed", diagnose=log.read_text)
    # and it has read what the agent told it when it started (it waits in poll only with nothing
    # left to read): a new one answers from verdicts and for innocent readers once told it may
    wait_for(lambda: Path(f"/proc/{responder}/syscall").read_text().split()[0] in {"7", "271"}, 15,
             "the responder to wait for events", diagnose=log.read_text)
    agent.send_signal(signal.SIGSTOP)
    try:
        # another program, in a session of its own: answered without the agent (before, it
        # waited for the stopped agent until decision_timeout_ms and was refused)
        innocent = subprocess.run(["cat", str(tagged)], capture_output=True, timeout=5, check=False,
                                  start_new_session=True)
        assert innocent.returncode == 0
        assert innocent.stdout == tagged.read_bytes()
        grouped = subprocess.Popen(["cat", str(tagged)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, process_group=writer.pid)
        procs.append(grouped)
        wait_for(lambda: _waiting_to_open(grouped.pid, tagged), 5, "the writer's group's read to wait",
                 diagnose=lambda: _state(grouped))
    finally:
        agent.send_signal(signal.SIGCONT)
    assert grouped.wait(15) != 0
    assert grouped.stdout is not None and grouped.stdout.read() == b""


def test_a_tagged_read_waits_while_a_write_of_its_group_is_with_the_agent(
        tmp_path: Path, loop_stick: Callable[..., LoopStick]) -> None:
    """A write the agent is still deciding is not among the writers the responder knows yet: while
    one waits for the agent, a tagged open of its process group is not answered by the responder
    (the agent looks at both in one step), and the two do not both go through."""
    with _guarding(tmp_path, loop_stick) as (agent, tagged, point, log, procs):
        _carrier(tagged, point, agent.pid, procs)  # the sticks armed: the shell's write is asked
        keeper = subprocess.Popen([sys.executable, "-c", WRITER, str(point)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, start_new_session=True)
        procs.append(keeper)
        assert keeper.stdout is not None
        assert keeper.stdout.readline() == b"wrote\n"
        responder = _responder(agent.pid)
        wait_for(lambda: _armed(responder), 15, "the tagged trees to be armed", diagnose=log.read_text)
        agent.send_signal(signal.SIGSTOP)
        try:
            shell = subprocess.Popen(["sh", "-c", f"echo data > {point}/w2.bin"], process_group=0,
                                     stderr=subprocess.PIPE)
            procs.append(shell)
            wait_for(lambda: _waiting_in_open(shell.pid), 5, "the write to wait for the agent",
                     diagnose=lambda: _state(shell))
            reader = subprocess.Popen(["cat", str(tagged)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      process_group=shell.pid)
            procs.append(reader)
            wait_for(lambda: _waiting_to_open(reader.pid, tagged), 5, "the tagged read to wait for the agent",
                     diagnose=lambda: _state(reader))
        finally:
            agent.send_signal(signal.SIGCONT)
        assert not (shell.wait(15) == 0 and reader.wait(15) == 0)

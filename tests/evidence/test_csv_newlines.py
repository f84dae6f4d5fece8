"""CSV exports keep CR and LF inside their cell and neutralise formulas at every line start.

A multi-line `python3 -c` or a file name holding a newline used to break its row: an untampered
export then failed `verify`, and `x\\n=1+1` put a live formula at the start of a spreadsheet row.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.sensors import procinfo
from collector.evidence import formats, keys, verify
from collector.evidence.keys import SigningKey
from protos import chain, events
from protos import exfilguard_pb2 as pb
from tests.evidence.helpers import make_event, write
from tests.helpers import AgentStream, run_cli, start_collector, write_collector_config
from tests.helpers import make_event as wire_event

# A spreadsheet starts a new line at CR, LF or CRLF, inside a quoted cell too.
_LINES = re.compile(r"\r\n|\r|\n")
NASTY = [
    "/media/usb/report\n=1+1.csv",
    "/media/usb/a\r\n@SUM(A1)\rb\n\n-2+3",
    '/media/usb/"quoted",\n+cmd|x',
    "plain",
]


def _chained(paths: list[str], lines: list[str]) -> list[dict[str, Any]]:
    out = []
    prev = chain.GENESIS
    for seq, (path, command) in enumerate(zip(paths, lines, strict=True), start=1):
        event = make_event("agent-a", seq, path=path)
        event.process.command_line = command
        mapping = events.to_mapping(event)
        value = chain.link(prev, mapping)
        out.append({**mapping, formats.PREV: prev.hex(), formats.HASH: value.hex()})
        prev = value
    return out


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return keys.load_or_create(tmp_path / "state")


def _no_formula_at_any_line_start(text: str) -> None:
    header, rows = text.split("\n", 1)
    assert header.startswith('"@timestamp",')  # fixed ECS names, nothing an agent controls
    for line in _LINES.split(rows):
        # A physical line begins a quoted cell ('"'), continues one after a break, or is empty.
        cell = line[1:] if line.startswith('"') else line
        assert not cell or cell[0] not in formats.FORMULA_TRIGGERS, repr(line)


def test_cells_with_line_breaks_verify_and_show_no_formula(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "out.csv"
    write(_chained(NASTY, ["python3 -c 'import os\nprint(1)'", "x\r\n=1", "", "-rf"]), path, "csv", key)
    text = path.read_bytes().decode()  # as written: no newline translation
    assert text.count("\n") > len(NASTY) + 1  # the breaks are really in the file, inside quotes
    report = verify.verify(path, public_key=key.public)
    assert report.ok, [str(p) for p in report.problems]
    assert report.rows == len(NASTY)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["file.path"] for r in rows] == [
        "/media/usb/report\n'=1+1.csv",
        "/media/usb/a\r\n'@SUM(A1)\rb\n\n'-2+3",
        "/media/usb/\"quoted\",\n'+cmd|x",
        "plain",
    ]
    assert rows[0]["process.command_line"] == "python3 -c 'import os\nprint(1)'"
    assert rows[3]["process.command_line"] == "'-rf"
    _no_formula_at_any_line_start(text)


def test_an_edit_inside_a_multi_line_cell_is_named_at_the_rows_first_line(
    tmp_path: Path, key: SigningKey
) -> None:
    path = tmp_path / "out.csv"
    write(_chained(NASTY, ["a", "b", "c", "d"]), path, "csv", key)
    text = path.read_bytes().decode()  # as written: no newline translation
    path.write_bytes(text.replace("'=1+1.csv", "'=1+2.csv", 1).encode())
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.sequence, first.line) == ("altered", 1, 2)
    # The row of sequence 2 starts on line 4: header, then the two lines of row 1.
    path.write_bytes(text.replace("'@SUM(A1)", "'@SUM(A2)", 1).encode())
    first = verify.verify(path, public_key=key.public).first
    assert first is not None
    assert (first.kind, first.sequence, first.line) == ("altered", 2, 4)


def test_a_real_multi_line_command_and_file_name_through_collector_export_and_verify(tmp_path: Path) -> None:
    # A real file whose name holds a newline, and a real process started with a multi-line -c.
    named = tmp_path / "stick" / "q3 report\n=HYPERLINK(1).xlsx"
    named.parent.mkdir()
    named.write_bytes(b"x" * 100)
    script = "import sys, time\nsys.stdout.write('up\\n'); sys.stdout.flush()\ntime.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"up\n"
            info = procinfo.read_proc(child.pid)
        finally:
            child.kill()
    assert info is not None and "\n" in info.command_line
    event = wire_event(
        "ws-1",
        1,
        action="file.write",
        file=pb.File(path=str(named), size=named.stat().st_size),
        process=pb.Process(pid=info.pid, executable=info.executable, command_line=info.command_line),
    )
    config = write_collector_config(tmp_path / "collector")
    with start_collector(config) as collector:
        with AgentStream(collector.address, "ws-1") as agent:
            agent.send_events([event, wire_event("ws-1", 2)])
            acks = [agent.ack()]
            while acks[-1] < 2 and len(acks) < 10:
                acks.append(agent.ack())
            assert acks[-1] == 2
        assert collector.stop() == 0
    pub = tmp_path / "collector.pub"
    assert run_cli("key", "export", "--config", str(config), "--out", str(pub)).returncode == 0
    out = tmp_path / "ws-1.csv"
    done = run_cli("export", "--config", str(config), "--format", "csv", "--out", str(out), "--agent", "ws-1")
    assert done.returncode == 0, done.stderr
    done = run_cli("verify", str(out), "--public-key", str(pub))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: 2 records verified" in done.stdout
    text = out.read_bytes().decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert rows[0]["file.path"] == str(named).replace("\n=", "\n'=")
    assert rows[0]["process.command_line"] == info.command_line
    _no_formula_at_any_line_start(text)

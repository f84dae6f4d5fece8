"""StagingDetector (agent/sensors/staging.py) on real files: an archive counts as staging only
when its writer read the tagged files while it built it, not hours before."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

from agent.sensors.staging import StagingDetector, Written
from common.agentconfig import SensorSettings
from protos import exfilguard_pb2 as pb

TAGS = ["documents"]


def _zip(path: Path) -> int:
    """An office document (a zip) of the user's own text; returns a descriptor open on it."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        zf.writestr("content.xml", "<office:text>Team lunch on Friday</office:text>")
    return os.open(path, os.O_RDONLY)


def _detector() -> tuple[StagingDetector, list[pb.Event]]:
    events: list[pb.Event] = []
    return StagingDetector(SensorSettings(), events.append), events


def test_a_save_long_after_tagged_reads_is_no_archive(tmp_path: Path) -> None:
    detector, events = _detector()
    pid = os.getpid()
    morning = time.monotonic() - 3600
    for i in range(3):
        detector.note_read(pid, None, f"/srv/docs/plan-{i}.txt", TAGS, at=morning)
    fd = _zip(tmp_path / "minutes.odt")
    try:
        written = Written(path=str(tmp_path / "minutes.odt"), size=os.fstat(fd).st_size, pid=pid, fd=fd)
        assert detector.note_write(written) == 0
        assert events == []
        # the same reads reaching it through its pipeline as byte evidence still make it one
        assert detector.note_write(written, flow_files=3, flow_tags=tuple(TAGS)) == 3
        assert [e.event.action for e in events] == ["file.archive"]
    finally:
        os.close(fd)


def test_an_archive_built_while_reading_tagged_files_is_one(tmp_path: Path) -> None:
    detector, events = _detector()
    pid = os.getpid()
    fd = _zip(tmp_path / "stage.zip")  # born first, then its files read into it
    try:
        detector.note_read(pid, None, "/srv/docs/old.txt", TAGS, at=time.monotonic() - 3600)
        for i in range(3):
            detector.note_read(pid, None, f"/srv/docs/plan-{i}.txt", TAGS)
        written = Written(path=str(tmp_path / "stage.zip"), size=os.fstat(fd).st_size, pid=pid, fd=fd)
        assert detector.note_write(written) == 3  # the morning's read is not counted
        (archive,) = events
        assert archive.event.action == "file.archive"
        assert archive.exfilguard.count == 3
        assert list(archive.tags) == TAGS
    finally:
        os.close(fd)

"""Archives opened as bounded streams: real archives from real tools, and hostile ones.

Every bad input ends in a note naming the reason, with `complete` False where the
inspection stopped; nothing raises, and nothing is ever written to disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.content.archive import ArchiveLimits, ArchiveReport, inspect_archive

SMALL = ArchiveLimits(max_members=1000, max_bytes=32 << 20, max_seconds=20, max_ratio=50, bomb_floor=1 << 20)


class _Digest:
    def __init__(self, seen: dict[str, str], name: str) -> None:
        self.seen, self.name, self.sha = seen, name, hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.sha.update(data)

    def finish(self) -> None:
        self.seen[self.name] = self.sha.hexdigest()


def _inspect(path: Path, limits: ArchiveLimits = SMALL) -> tuple[ArchiveReport, dict[str, str]]:
    seen: dict[str, str] = {}
    with path.open("rb") as raw:
        report = inspect_archive(raw, str(path), lambda name, _size: _Digest(seen, name), limits)
    return report, seen


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, str]:
    """A small directory `d` (two files and a symlink) and the SHA-256 of each file."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_bytes(b"id,name\n1,alice\n" * 100)
    (tmp_path / "d" / "b.bin").write_bytes(os.urandom(70_000))
    (tmp_path / "d" / "link").symlink_to("a.csv")
    return {f"d/{n}": hashlib.sha256((tmp_path / "d" / n).read_bytes()).hexdigest()
            for n in ("a.csv", "b.bin")}


@pytest.mark.parametrize(("tool", "name", "fmt"), [
    (["tar", "czf"], "x.tgz", "tar.gz"),
    (["tar", "cJf"], "x.txz", "tar.xz"),
    (["tar", "cjf"], "x.tbz", "tar.bz2"),
    (["tar", "--zstd", "-cf"], "x.tar.zst", "tar.zst"),
    (["tar", "cf"], "x.tar", "tar"),
    (["zip", "-qry"], "x.zip", "zip"),
    (["7z", "a", "-bd", "-snl"], "x.7z", "7z"),
])
def test_every_format_streams_each_member_and_skips_links(
        tmp_path: Path, tree: dict[str, str], tool: list[str], name: str, fmt: str) -> None:
    subprocess.run([*tool, str(tmp_path / name), "d"], cwd=tmp_path, check=True, capture_output=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    report, seen = _inspect(tmp_path / name)
    assert report.format == fmt
    assert seen == tree
    assert report.members_total == 2
    assert report.complete
    assert any("link member 'd/link'" in n for n in report.notes), report.notes
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted


def test_a_lone_compressed_file_is_one_member_named_without_its_suffix(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    (tmp_path / "dump.sql").write_bytes(data)
    subprocess.run(["xz", "-k", str(tmp_path / "dump.sql")], check=True)
    report, seen = _inspect(tmp_path / "dump.sql.xz")
    assert (report.format, report.members_total) == ("xz", 1)
    assert seen == {"dump.sql": hashlib.sha256(data).hexdigest()}


def test_zip_bomb_is_refused_by_ratio_before_inflating(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", bytes(16 << 20))
    report, seen = _inspect(bomb)
    assert not report.complete
    assert any("zip bomb" in n and "zeros.bin" in n for n in report.notes), report.notes
    assert seen == {}


def test_gzip_bomb_is_stopped_by_ratio_while_streaming(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tgz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 16 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    report, _seen = _inspect(bomb)
    assert not report.complete
    assert any("decompression bomb" in n for n in report.notes), report.notes


def test_zip_announcing_100k_members_is_refused_before_parsing(tmp_path: Path) -> None:
    fake = tmp_path / "many.zip"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("one.txt", b"x")
    blob = bytearray(fake.read_bytes())
    at = blob.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", blob, at + 8, 0xFFFF - 1, 0xFFFF - 1)  # 65,534 entries on this disk / total
    fake.write_bytes(bytes(blob))
    report, seen = _inspect(fake)
    assert not report.complete and seen == {}
    assert any("announces 65534 members" in n for n in report.notes), report.notes


def test_tar_with_more_members_than_the_limit_stops_at_the_limit(tmp_path: Path) -> None:
    many = tmp_path / "many.tar"
    with tarfile.open(many, "w") as tar:
        for i in range(1200):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    report, seen = _inspect(many)
    assert not report.complete
    assert len(seen) == 1000
    assert any("member limit: more than 1000 members" in n for n in report.notes)


def test_hostile_names_are_noted_and_still_fingerprinted(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name in ("../../etc/cron.d/x", "/abs/path", "ok/name"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("hard")
        link.type, link.linkname = tarfile.LNKTYPE, "/etc/shadow"
        tar.addfile(link)
    report, seen = _inspect(evil)
    assert set(seen) == {"../../etc/cron.d/x", "/abs/path", "ok/name"}  # renaming must not hide data
    assert any("hostile member name '../../etc/cron.d/x'" in n for n in report.notes)
    assert any("hostile member name '/abs/path'" in n for n in report.notes)
    assert any("link member 'hard' -> '/etc/shadow'" in n for n in report.notes)
    assert not (tmp_path.parent / "etc").exists()


class _EndlessTar(io.RawIOBase):
    """A tar whose one member claims 64 GiB and whose bytes never stop coming."""

    def __init__(self) -> None:
        info = tarfile.TarInfo("endless.bin")
        info.size = 64 << 30
        self.head = info.tobuf(format=tarfile.GNU_FORMAT)
        self.block = os.urandom(1 << 16)

    def read(self, n: int | None = -1) -> bytes:
        if self.head:
            out, self.head = self.head[: n or 512], self.head[n or 512 :]
            return out
        return self.block[: n if n and n > 0 else len(self.block)]

    def readable(self) -> bool:
        return True


def _ignore(name: str, _size: int) -> _Digest:
    return _Digest({}, name)


def test_a_tar_that_never_ends_is_bounded_by_bytes() -> None:
    report = inspect_archive(_EndlessTar(), "/dev/loopX", _ignore, SMALL, seekable=False)
    assert report.format == "tar" and not report.complete
    assert any("byte limit" in n for n in report.notes), report.notes


def test_a_tar_that_never_ends_is_bounded_by_time() -> None:
    slow = ArchiveLimits(max_bytes=1 << 40, max_seconds=0.5)
    report = inspect_archive(_EndlessTar(), "/dev/loopX", _ignore, slow, seekable=False)
    assert any("time limit" in n for n in report.notes), report.notes


def test_encrypted_members_are_not_read(tmp_path: Path, tree: dict[str, str]) -> None:
    for cmd in (["zip", "-q", "-r", "-P", "secret", "x.zip", "d/a.csv"],
                ["7z", "a", "-bd", "-psecret", "x.7z", "d/a.csv"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    report, seen = _inspect(tmp_path / "x.zip")
    assert seen == {} and any("encrypted member 'd/a.csv'" in n for n in report.notes)
    report, seen = _inspect(tmp_path / "x.7z")
    assert seen == {} and any("encrypted" in n for n in report.notes) and not report.complete


def _truncations(path: Path) -> Iterator[bytes]:
    blob = path.read_bytes()
    yield blob[: len(blob) // 2]
    yield blob[:600]
    yield blob[:40] + os.urandom(4000)


@pytest.mark.parametrize("name", ["x.tgz", "x.zip", "x.7z", "x.tar.zst"])
def test_corrupt_and_truncated_archives_end_with_a_note(
        tmp_path: Path, tree: dict[str, str], name: str) -> None:
    tool = {"x.tgz": ["tar", "czf"], "x.zip": ["zip", "-qr"], "x.7z": ["7z", "a", "-bd"],
            "x.tar.zst": ["tar", "--zstd", "-cf"]}[name]
    subprocess.run([*tool, str(tmp_path / name), "d"], cwd=tmp_path, check=True, capture_output=True)
    for i, blob in enumerate(_truncations(tmp_path / name)):
        broken = tmp_path / f"broken{i}-{name}"
        broken.write_bytes(blob)
        report, _seen = _inspect(broken)
        assert not report.complete, (broken.name, report)
        assert report.notes and report.format, (broken.name, report)

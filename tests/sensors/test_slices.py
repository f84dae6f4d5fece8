"""DerivedSlices on real files: the parts `split` cut from an archive staged outside the tagged
trees are found in it, at their offsets, and carry its provenance; other files are not."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from agent.sensors.derivedinodes import follow
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.lineage import SourceRead
from agent.sensors.provenance import LINEAGE_BYTES, Provenance
from agent.sensors.slices import MIN_PART_BYTES, DerivedSlices, Slice
from agent.sensors.tags import TagMap


def _staged(tmp_path: Path) -> tuple[FingerprintIndex, Path]:
    db = tmp_path / "db"
    db.mkdir()
    for i in range(3):
        (db / f"ledger{i}.db").write_bytes(os.urandom(90_000))
    index = FingerprintIndex(TagMap({str(db): ["database"]}))
    archive = tmp_path / "stage" / "d.txz"
    archive.parent.mkdir()
    subprocess.run(["tar", "cJf", str(archive), "-C", str(tmp_path), "db"], check=True)
    reads = tuple(SourceRead(str(p), ("database",), p.stat().st_size, time.time())
                  for p in sorted(db.iterdir()))
    index.add_derived(str(archive), Provenance(LINEAGE_BYTES, 0.8, reads, len(reads), bytes_read=270_000))
    return index, archive


def _slice(slices: DerivedSlices, path: Path) -> Slice | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return slices.find(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _find(slices: DerivedSlices, path: Path) -> tuple[str, int] | None:
    found = _slice(slices, path)
    return (found.path, found.offset) if found is not None else None


def test_the_parts_split_cut_from_a_derived_archive_are_found_in_it(tmp_path: Path) -> None:
    index, archive = _staged(tmp_path)
    slices = DerivedSlices(index)  # told of derived files from now on, and knows those there are
    parts = tmp_path / "parts"
    parts.mkdir()
    subprocess.run(["split", "-b", "64K", str(archive), str(parts / "part.")], check=True)
    cut = sorted(parts.iterdir())
    assert len(cut) >= 3
    for number, part in enumerate(cut):
        assert _find(slices, part) == (str(archive), number * 65536), part.name
    provenance = index.provenance(str(archive))
    assert provenance is not None and provenance.files == 3  # what a part's copy inherits

    # the last part of a split (a few hundred bytes), guessed from split's own reads: the
    # copy is judged by the archive it is part of
    last = parts / "last"
    last.write_bytes(archive.read_bytes()[-300:])
    assert _find(slices, last) == (str(archive), archive.stat().st_size - 300)
    # the tail of it (tail -c), and a part of an archive derived after the slices were made
    tail = tmp_path / "tail"
    tail.write_bytes(archive.read_bytes()[-20_000:])
    assert _find(slices, tail) == (str(archive), archive.stat().st_size - 20_000)
    later = tmp_path / "stage" / "e.bin"
    later.write_bytes(os.urandom(50_000))
    index.add_derived(str(later), Provenance(LINEAGE_BYTES, 0.8, (), 0))
    half = tmp_path / "half"
    half.write_bytes(later.read_bytes()[:25_000])
    assert _find(slices, half) == (str(later), 0)


def test_files_that_are_no_part_of_a_derived_one_are_not_found(tmp_path: Path) -> None:
    index, archive = _staged(tmp_path)
    slices = DerivedSlices(index)
    data = archive.read_bytes()
    other = tmp_path / "other"
    cases = {
        "unrelated": os.urandom(65536),
        "shifted": data[100 : 100 + 65536],  # not at a multiple of its size
        "changed": data[:65535] + bytes([data[65535] ^ 1]),  # one byte differs at the end
        "whole": data,  # the archive itself is the exact match's, not a part
        "small": data[: MIN_PART_BYTES - 1],
        "zeros": bytes(65536),
    }
    for name, content in cases.items():
        other.write_bytes(content)
        assert _find(slices, other) is None, name
    index.remove(str(archive))
    other.write_bytes(data[:65536])
    assert _find(slices, other) is None  # no longer derived


def test_a_derived_file_renamed_before_the_index_heard_of_it_is_found_under_its_new_name(
        tmp_path: Path) -> None:
    # zip writes ziXXXXXX, renames it d.zip; the part of d.zip is copied before the index moves
    index, archive = _staged(tmp_path)
    slices = DerivedSlices(index)
    renamed = archive.with_name("final.txz")
    archive.rename(renamed)
    part = tmp_path / "part"
    part.write_bytes(renamed.read_bytes()[65536:131072])
    found = _slice(slices, part)
    assert found is not None
    assert (found.path, found.offset, found.now) == (str(archive), 65536, str(renamed))
    renamed.unlink()
    assert _find(slices, part) is None  # gone


def test_a_derived_file_renamed_since_is_found_whole_under_its_new_name(tmp_path: Path) -> None:
    """`7z a -v` writes v.7z.001.tmp and renames it v.7z.001 as it ends; a `cp` of the volumes
    right after was examined before the agent followed the rename: no exact match knew the new
    name, and the first volume's copy was a guess. A copy of the renamed file is the whole of it."""
    index, archive = _staged(tmp_path)
    slices = DerivedSlices(index)
    copy = tmp_path / "copy"
    copy.write_bytes(archive.read_bytes())
    assert _find(slices, copy) is None  # not renamed: the exact match's
    renamed = archive.with_name("d.txz.final")
    archive.rename(renamed)
    found = _slice(slices, copy)
    assert found is not None
    assert (found.path, found.offset, found.now) == (str(archive), 0, str(renamed))
    copy.write_bytes(renamed.read_bytes()[:-1] + b"\0")  # the same size, one byte apart
    assert _find(slices, copy) is None


def test_a_derived_file_moved_to_another_directory_is_known_by_its_inode_and_followed(
        tmp_path: Path) -> None:
    """`mv /tmp/x.enc ~/Downloads/notes.bin` keeps the inode (and its mark), not the name: the
    index finds the derived file by its inode and follows it to its new name, so a read of it
    there carries its sources and a copy of it matches it whole."""
    index, archive = _staged(tmp_path)
    st = archive.stat()
    assert index.derived_inodes.path_of(st.st_dev, st.st_ino) == str(archive)
    moved = tmp_path / "downloads" / "notes.bin"
    moved.parent.mkdir()
    archive.rename(moved)
    assert index.derived_inodes.path_of(st.st_dev, st.st_ino) == str(archive)  # as derived, until followed
    assert follow(index, str(archive), str(moved))
    assert index.derived_inodes.path_of(st.st_dev, st.st_ino) == str(moved)
    assert not index.is_derived(str(archive)) and index.is_derived(str(moved))
    followed = index.provenance(str(moved))
    assert followed is not None and followed.files == 3
    fd = os.open(moved, os.O_RDONLY)
    try:
        assert index.match(fd, st.st_size) == (str(moved), hashlib.sha256(moved.read_bytes()).hexdigest())
    finally:
        os.close(fd)
    # a hard link: both names stay derived; a file that is not derived is not followed
    link = tmp_path / "link.bin"
    os.link(moved, link)
    assert follow(index, str(moved), str(link))
    assert index.is_derived(str(moved)) and index.is_derived(str(link))
    assert not follow(index, str(tmp_path / "nothing"), str(link))
    index.remove(str(link))
    index.remove(str(moved))
    assert index.derived_inodes.path_of(st.st_dev, st.st_ino) is None


def test_a_copy_of_a_derived_file_gone_since_matches_its_sample_taken_as_it_was_derived(
        tmp_path: Path) -> None:
    """`mv /tmp/r.enc /tmp/r.jpg && mv /tmp/r.jpg stick/`: on a busy machine the agent heard of
    the derived file after the second `mv` had read it and deleted it; the copy on the stick
    matches the sample the index took as the file was derived (size and three blocks)."""
    index, archive = _staged(tmp_path)
    data = archive.read_bytes()
    copy = tmp_path / "copy"
    copy.write_bytes(data)
    archive.unlink()

    def match(path: Path) -> tuple[str, str] | None:
        fd = os.open(path, os.O_RDONLY)
        try:
            return index.match(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    assert match(copy) == (str(archive), "")  # sampled: nothing to hash it whole against
    middle = len(data) // 2
    copy.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    assert match(copy) is None  # a byte of its sampled middle block differs

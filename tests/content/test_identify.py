"""ContentIdentifier on files made by real tools from a real tagged tree: archives, split parts,
edited, truncated and transformed copies are identified with method, confidence and share;
unrelated data is not."""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.content import ContentCatalog, ContentIdentifier, Identification, saved
from agent.content.examiner import Examiner
from agent.content.textsim import MIN_SAMPLE, TextFeatures, line_features, too_few_features
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.tags import TagMap
from protos import exfilguard_pb2 as pb
from protos.events import new_event, to_mapping


def _csv(path: Path, rows: int = 2000) -> None:
    rng = random.Random(7)
    lines = ["id,name,email,city,iban"]
    for i in range(rows):
        surname = rng.choice(["Smith", "Jones", "Brown"])
        lines.append(f"{i},Name{i} {surname},user{i}.{rng.randrange(10**6)}@corp.example,"
                     f"City{i % 40},GB{rng.randrange(10**16):016d}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    root = tmp_path / "srv" / "db"
    root.mkdir(parents=True)
    rng = random.Random(11)  # fixed bytes: the chunk cut points (and so the shares) repeat
    for i in range(3):
        (root / f"blob{i}.bin").write_bytes(rng.randbytes(150_000 + 10_000 * i))
    _csv(root / "customers.csv")
    return root


@pytest.fixture
def identify(db: Path) -> Iterator[ContentIdentifier]:
    index = FingerprintIndex(TagMap({str(db): ["database"]}))
    index.rebuild()
    catalog = ContentCatalog(index)
    catalog.start()
    try:
        assert catalog.wait_ready(20)
        yield ContentIdentifier(catalog, index)
    finally:
        catalog.stop()


def _run(cmd: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", cmd], cwd=cwd, check=True, capture_output=True)


def _of(identify: ContentIdentifier, path: Path) -> Identification:
    fd = os.open(path, os.O_RDONLY)
    try:
        return identify.identify_fd(fd, os.fstat(fd).st_size, str(path))
    finally:
        os.close(fd)


@pytest.mark.parametrize(("cmd", "fmt"), [
    ("tar czf out/x.tgz -C srv db", "tar.gz"),
    ("tar cJf out/x.txz -C srv db", "tar.xz"),
    ("tar --zstd -cf out/x.tzst -C srv db", "tar.zst"),
    ("cd srv && zip -qr ../out/x.zip db", "zip"),
    ("cd srv && 7z a -bd ../out/x.7z db", "7z"),
])
def test_an_archive_of_the_tree_names_every_member_and_source(
        identify: ContentIdentifier, db: Path, cmd: str, fmt: str) -> None:
    work = db.parent.parent
    (work / "out").mkdir()
    _run(cmd, work)
    found = _of(identify, next((work / "out").iterdir()))
    assert (found.identified_by, found.format, found.members_total) == ("member", fmt, 4)
    assert sorted(found.sources) == sorted(str(p) for p in db.iterdir())
    assert {(m.name, m.source, m.identified_by) for m in found.members} == {
        (f"db/{p.name}", str(p), "exact") for p in db.iterdir()}
    assert found.share == 1.0 and found.confidence >= 0.95
    assert found.tags == ["database"]
    assert found.entropy > 7.5  # compressed
    event = new_event("file.copy")
    found.fill(event)
    mapping = to_mapping(event)
    assert mapping["exfilguard.copy.identified_by"] == "member"
    assert len(mapping["exfilguard.copy.members"]) == 4


def test_split_parts_edited_and_truncated_copies_are_chunk_matches(
        identify: ContentIdentifier, db: Path) -> None:
    work = db.parent.parent
    blob = db / "blob2.bin"
    _run(f"split -b 60000 {blob} part_ && {{ cat {blob}; echo; }} > edited.bin && "
         f"head -c 90000 {blob} > cut.bin && {{ head -c 5000 /dev/urandom; cat {blob}; }} > prefixed.bin",
         work)
    parts = sorted(work.glob("part_*"))
    assert len(parts) == 3
    shares = []
    for part in parts:
        found = _of(identify, part)
        assert (found.identified_by, found.sources) == ("chunks", [str(blob)]), part
        assert found.confidence >= 0.6
        shares.append(found.share)
    assert 0.6 < sum(shares) <= 1.0  # the parts together hold most of the source
    for name, least in (("edited.bin", 0.7), ("prefixed.bin", 0.7), ("cut.bin", 0.3)):
        found = _of(identify, work / name)
        assert (found.identified_by, found.sources) == ("chunks", [str(blob)]), name
        assert least <= found.share <= 1.0, (name, found.share)
    assert _of(identify, work / "cut.bin").share < 0.6


def test_text_features_are_the_same_in_every_process() -> None:
    """A tagged text's sample is chosen by its features' keys: keys from hash() (seeded per
    process) gave the sed-edited export below a score of 0.3 in some runs and above it in
    others (the flake of the test below); they must not depend on PYTHONHASHSEED."""
    lines = [b"17,Name17 Smith,user17.4242@corp.example,City17,GB0000000000004242", b"id,name,email"]
    ours = [list(line_features(line)) for line in lines]
    code = ("import sys, json; from agent.content.textsim import line_features; "
            "print(json.dumps([list(line_features(l.encode())) for l in sys.argv[1:]]))")
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code, *(line.decode() for line in lines)], check=True,
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed},
                              cwd=Path(__file__).resolve().parents[2])
        assert json.loads(done.stdout) == ours


def test_a_text_left_unfeaturized_for_its_size_could_never_have_made_a_sample() -> None:
    """The catalog skips the text features of a small whole text that has too few lines and
    fields: every such text gives fewer than MIN_SAMPLE features, every larger one is read."""
    texts = [b"x" * 1024, b"a,b;c\td|e", b"id,name\n1,alice\n", b"one line of words only\n",
             b"\n".join(b"%d,name%d,city%d" % (i, i, i) for i in range(2)),
             b"\n".join(b"%d,name%d,city%d,street %d" % (i, i, i, i) for i in range(3))]
    for text in texts:
        count = 0

        def counted(_key: int) -> None:
            nonlocal count
            count += 1

        features = TextFeatures(counted)
        features.update(text)
        features.finish()
        if too_few_features(text):
            assert count < MIN_SAMPLE, text
    assert too_few_features(b"x" * 1024)
    assert not too_few_features(texts[-1])


def test_transformed_exports_are_text_matches_with_a_score(identify: ContentIdentifier, db: Path) -> None:
    work = db.parent.parent
    src = db / "customers.csv"
    _run(f"sed 's/@corp.example/@mail.test/' {src} > sed.csv && "
         f"awk -F, '{{print $5\";\"$3\";\"$1\";\"$2\";\"$4}}' {src} > reordered.csv && "
         f"sed -n '1,700p' {src} > head.csv", work)
    reordered = _of(identify, work / "reordered.csv")
    assert (reordered.identified_by, reordered.sources) == ("text", [str(src)])
    assert reordered.share > 0.9 and reordered.confidence > 0.8
    edited = _of(identify, work / "sed.csv")
    assert (edited.identified_by, edited.sources) == ("text", [str(src)])
    assert 0.3 <= edited.share < reordered.share
    part = _of(identify, work / "head.csv")
    assert part.sources == [str(src)] and part.share < 0.6


@pytest.mark.parametrize(("cmd", "expected"), [
    ("base64 {db}/blob0.bin", ("base64", "exact")),
    ("base32 {db}/blob1.bin", ("base32", "exact")),
    ("xxd -p {db}/blob2.bin", ("hex", "exact")),
    ("xxd {db}/customers.csv", ("xxd", "exact")),
    ("hexdump -C {db}/customers.csv", ("hexdump", "exact")),
    ("od -t x1 {db}/blob0.bin", ("od", "exact")),
    ("od -A x -t x1 {db}/blob1.bin | head -n 4000", ("od", "chunks")),  # cut short: its first part
    # a squeezed run of zeros (hexdump's `*`) is expanded back
    ("{{ head -c 5000 /dev/zero; cat {db}/blob2.bin; }} | hexdump -C", ("hexdump", "chunks")),
    ("tar cz -C {db}/.. db | base64", ("base64+tar.gz", "member")),
    # a CSV saved in a wide Unicode form (a Windows tool, a spreadsheet): no chunk, line or
    # field of it is left; decoded back, it is the CSV byte for byte
    # od's other types and xxd's bits: 3 to 11 times the bytes they stand for
    ("od -b {db}/customers.csv", ("od-o1", "exact")),
    ("od {db}/blob0.bin", ("od-o2", "exact")),
    ("od -t d1 {db}/blob1.bin", ("od-d1", "exact")),
    ("od -A d -t u1 {db}/customers.csv", ("od-d1", "exact")),
    ("od -x {db}/customers.csv", ("od-x2", "exact")),
    ("xxd -b {db}/blob2.bin", ("xxd-b", "exact")),
    ("iconv -t UTF-16 {db}/customers.csv", ("utf-16", "exact")),
    ("iconv -t UTF-16LE {db}/customers.csv", ("utf-16-le", "exact")),
    ("iconv -t UTF-16BE {db}/customers.csv", ("utf-16-be", "exact")),
    ("iconv -t UTF-32 {db}/customers.csv", ("utf-32", "exact")),
    ("sed 's/,/;/' {db}/customers.csv | iconv -t UTF-16", ("utf-16", "text")),
])
def test_binary_turned_into_text_is_decoded_and_matched(identify: ContentIdentifier, db: Path, tmp_path: Path,
                                                        cmd: str, expected: tuple[str, str]) -> None:
    """base64, base32 and hex dumps share no chunk, line or field with what they encode, and a
    hex dump is ~5x larger than it (past what byte lineage allows): the text is decoded."""
    _run(f"{cmd.format(db=db)} > out.txt", tmp_path)
    found = _of(identify, tmp_path / "out.txt")
    assert (found.format, found.identified_by) == expected
    assert found.sources and all(s.startswith(str(db) + "/") for s in found.sources)


def test_unrelated_data_is_not_identified(identify: ContentIdentifier, db: Path, tmp_path: Path) -> None:
    other = tmp_path / "holiday"
    other.mkdir()
    (other / "photo.jpg").write_bytes(os.urandom(400_000))
    _csv(other / "contacts.csv", rows=1500)  # same shape, other people
    (other / "contacts.csv").write_text((other / "contacts.csv").read_text().replace("Name", "Person")
                                        .replace("user", "friend").replace("GB", "DE"))
    _run("tar czf backup.tgz holiday && cp holiday/photo.jpg photo.jpg && cp holiday/contacts.csv c.csv && "
         "base64 holiday/photo.jpg > photo.b64 && hexdump -C holiday/contacts.csv > c.hex && "
         "iconv -t UTF-16 holiday/contacts.csv > c16.csv && od -t d1 holiday/photo.jpg > p.od && "
         "seq 1 4000 | paste -d ' ' - - - - - - - - > numbers.txt", tmp_path)
    for name in ("backup.tgz", "photo.jpg", "c.csv", "photo.b64", "c.hex", "c16.csv", "p.od", "numbers.txt"):
        found = _of(identify, tmp_path / name)
        assert not found.found, (name, found)
    assert _of(identify, tmp_path / "backup.tgz").members_total == 2


def test_the_catalog_follows_changes_and_reports_when_full(db: Path, tmp_path: Path) -> None:
    index = FingerprintIndex(TagMap({str(db): ["database"]}))
    index.rebuild()
    losses: list[tuple[str, int]] = []
    catalog = ContentCatalog(index, max_chunks=40, on_loss=lambda reason, n: losses.append((reason, n)))
    catalog.start()
    try:
        assert catalog.wait_ready(20)
        assert losses == [("content_index_full", 1)]  # once, not once per file
        assert len(catalog.chunks) <= 40
        catalog.stop()  # the index's changes have one reader (take_changes): both woke at a change
        full = ContentCatalog(index)
        full.start()
        assert full.wait_ready(20)
        blob = db / "blob0.bin"
        copy = tmp_path / "copy.bin"
        copy.write_bytes(blob.read_bytes()[:100_000])
        assert _of(ContentIdentifier(full, index), copy).sources == [str(blob)]
        blob.write_bytes(os.urandom(150_000))  # rewritten: the old content is no longer tagged
        index.update(str(blob))
        assert full.wait_ready(20)
        assert not _of(ContentIdentifier(full, index), copy).found
        full.stop()
    finally:
        catalog.stop()


def test_an_event_without_identification_carries_entropy_only() -> None:
    event = new_event("file.copy")
    Identification(entropy=7.9).fill(event)
    assert event.exfilguard.content.entropy == pytest.approx(7.9)
    assert not event.exfilguard.copy.identified_by
    assert event.exfilguard.copy == pb.Copy()


def test_the_examiner_names_what_it_could_not_read_and_counts_a_full_queue(
        identify: ContentIdentifier, db: Path, tmp_path: Path) -> None:
    losses: list[tuple[str, int]] = []
    examiner = Examiner(identify, max_queued=1, on_loss=lambda reason, n: losses.append((reason, n)))
    assert not examiner.examine(str(db / "blob0.bin"), lambda _found: None)  # not started: refused
    examiner.start()
    try:
        results: queue.Queue[Identification] = queue.Queue()
        gone = tmp_path / "pulled.bin"
        assert examiner.examine(str(gone), results.put)
        found = results.get(timeout=30)
        assert not found.found and str(gone) in found.refused and "not readable" in found.refused
        # a file renamed after its write: read through the descriptor handed over
        moved = tmp_path / "tmp123"
        moved.write_bytes((db / "blob1.bin").read_bytes()[:100_000])
        fd = os.open(moved, os.O_RDONLY)
        moved.rename(tmp_path / "final.bin")
        assert examiner.examine(str(moved), results.put, fd=fd)
        assert results.get(timeout=30).sources == [str(db / "blob1.bin")]
        # a full queue refuses (the caller reports without content evidence) and says so once
        block, busy = threading.Event(), threading.Event()

        def stuck(_found: Identification) -> None:
            busy.set()
            block.wait(30)

        assert examiner.examine(str(gone), stuck)
        assert busy.wait(30)  # the worker is held; the queue (of one) fills with the next job
        assert examiner.examine(str(gone), lambda _found: None)
        for _ in range(6):
            assert not examiner.examine(str(gone), lambda _found: None)
        block.set()
        deadline = time.monotonic() + 30
        while sum(n for _, n in losses) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        # the first refusal at once, the rest of the burst in one report once it is over
        assert losses[0] == ("content_queue_full", 1) and len(losses) <= 2, losses
        assert sum(n for _, n in losses) == 6, losses
    finally:
        examiner.stop()


def test_a_file_growing_while_examined_is_read_to_its_size_then(
        identify: ContentIdentifier, db: Path, tmp_path: Path) -> None:
    growing = tmp_path / "growing.bin"
    growing.write_bytes((db / "blob0.bin").read_bytes())
    size = growing.stat().st_size
    fd = os.open(growing, os.O_RDONLY)
    stop = threading.Event()

    def append() -> None:  # a writer that never stops
        with growing.open("ab") as out:
            while not stop.is_set():
                out.write(os.urandom(1 << 16))
                out.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        found = identify.identify_fd(fd, size, str(growing))
        assert found.identified_by == "exact" and found.sources == [str(db / "blob0.bin")]  # its first bytes
    finally:
        stop.set()
        writer.join()
        os.close(fd)


def test_the_catalog_is_saved_and_only_files_changed_since_are_read_again(
        db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = str(state / saved.FILE_NAME)

    def started() -> ContentCatalog:
        index = FingerprintIndex(TagMap({str(db): ["database"]}))
        index.rebuild()
        catalog = ContentCatalog(index, saved_path=path)
        catalog.start()
        assert catalog.wait_ready(20)
        return catalog

    first = started()
    first.stop()  # saved at stop
    assert first.loaded == 0 and Path(path).is_file()
    (db / "blob1.bin").write_bytes(random.Random(3).randbytes(90_000))  # changed while stopped
    work = db.parent.parent
    _run(f"awk -F, '{{print $5\";\"$3\";\"$1\";\"$2\";\"$4}}' {db / 'customers.csv'} > reordered.csv && "
         f"head -c 100000 {db / 'blob2.bin'} > part.bin && head -c 60000 {db / 'blob1.bin'} > new.bin", work)
    second = started()
    try:
        assert second.loaded == 3  # the changed file alone was read again
        identify = ContentIdentifier(second, second.index)
        assert _of(identify, work / "reordered.csv").sources == [str(db / "customers.csv")]  # text, saved
        part = _of(identify, work / "part.bin")
        assert (part.identified_by, part.sources) == ("chunks", [str(db / "blob2.bin")])  # chunks, saved
        again = _of(identify, work / "new.bin")
        assert (again.identified_by, again.sources) == ("chunks", [str(db / "blob1.bin")])  # read again
    finally:
        second.stop()
    damaged = bytearray(Path(path).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(damaged))
    third = started()
    try:
        assert third.loaded == 0 and "checksum mismatch" in caplog.text  # refused, named, rebuilt
        identify = ContentIdentifier(third, third.index)
        assert _of(identify, work / "part.bin").sources == [str(db / "blob2.bin")]
    finally:
        third.stop()

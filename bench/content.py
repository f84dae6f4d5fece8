"""Content identification cost, against the plain tools in the same run.

    python -m bench.content [--full] [--skip-stick | --stick-only]

Figures (keys of the final JSON line):
  - archive_ratio: seconds to identify a tar.gz of a tagged tree (every member fingerprinted
    and looked up; agent/content/identify.py) / seconds of `tar tzf` on the same file
    (target <= 1.5), best of 3 rounds; archive_cpu_ratio the same in CPU seconds (tar's gzip
    child included), steadier on a shared machine; archive_mib, archive_seconds,
    archive_base_seconds (tar tzf), archive_members;
  - chunk_ratio: throughput of chunk fingerprinting (FastCDC + BLAKE2b keys, ChunkStream)
    / throughput of `sha256sum` on the same file (target >= 0.5), chunk_cpu_throughput_ratio
    the same in CPU seconds; chunk_mib_s, sha256sum_mib_s;
  - rss_mib: resident memory of the sensors (a child process, build_sensors) once 20,000
    tagged files are indexed and chunk-fingerprinted (target < 120); rss_empty_mib: the same
    with nothing tagged; tagged_files, tagged_mib, chunk_entries;
  - cp_ratio: `cp -r` of 2,000 files onto a loop-device stick (+ sync) with the sensors
    running / without (target <= 1.2), for tagged files (exact matches) and for untagged
    ones (each examined for content): cp_tagged_ratio, cp_untagged_ratio, cp_tagged_seconds,
    cp_untagged_seconds ([without, with] medians); cp_tagged_agent_ms_per_file,
    cp_untagged_agent_ms_per_file: CPU milliseconds the sensors spent per copied file (from
    the copy's start until they are quiet), steadier than the wall-clock ratio on a shared
    machine.
Default: a 256 MiB tar.gz, 20,000 files of 10 KiB (200 MiB); --full: a 1 GiB tar.gz and
20,000 files of 100 KiB (2 GiB). Needs root, udev and loop devices for the stick figure
(--skip-stick leaves it out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._watchers import settle
from bench.sensors import Agent


def _tree(root: Path, files: int, size: int, seed: int = 1) -> int:
    """`files` distinct files of `size` bytes, half random (a database page file), half CSV
    text (an export); returns the total bytes."""
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        sub = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        if i % 2:
            # every column differs between seeds: two trees share no customer data
            rows = (f"{i},{n},name{rng.randrange(10**6)},user{n}.{i}.{seed}@corp.example,"
                    f"GB{rng.randrange(10**12)}\n" for n in range(size // 40 + 1))
            body = "".join(rows).encode()[:size]
        else:
            body = rng.randbytes(size)
        (sub / f"f{i:06d}.{'csv' if i % 2 else 'bin'}").write_bytes(body)
        total += size
    return total


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of a command, its children included (tar runs gzip)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


class _Clock:
    """(wall, CPU) seconds of this process's work between start and stop."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


Times = list[tuple[float, float]]


def _ratios(prefix: str, ours: Times, theirs: Times) -> dict[str, Any]:
    """Best of the rounds, wall and CPU (the machine is shared: CPU time is the steadier)."""
    wall, cpu = min(w for w, _ in ours), min(c for _, c in ours)
    base_wall, base_cpu = min(w for w, _ in theirs), min(c for _, c in theirs)
    return {f"{prefix}_seconds": round(wall, 3), f"{prefix}_cpu_seconds": round(cpu, 3),
            f"{prefix}_base_seconds": round(base_wall, 3),
            f"{prefix}_base_cpu_seconds": round(base_cpu, 3),
            f"{prefix}_wall_ratio": round(wall / base_wall, 3),
            f"{prefix}_cpu_ratio": round(cpu / base_cpu, 3)}


def archive(work: Path, mib: int) -> dict[str, Any]:
    """identify_fd on a tar.gz of a tagged tree vs `tar tzf`."""
    from agent.content import ContentCatalog, ContentIdentifier
    from agent.sensors.fingerprints import FingerprintIndex
    from agent.sensors.tags import TagMap

    tree = work / "archive" / "db"
    size = 1 << 20
    _tree(tree, mib, size, seed=2)
    tgz = work / "archive" / "db.tgz"
    subprocess.run(["tar", "czf", str(tgz), "-C", str(tree.parent), "db"], check=True)
    index = FingerprintIndex(TagMap({str(tree): ["database"]}))
    index.rebuild()
    catalog = ContentCatalog(index)
    catalog.start()
    try:
        catalog.wait_ready(600)
        identifier = ContentIdentifier(catalog, index)
        ours, theirs = [], []
        for _round in range(3):  # the first round warms the page cache for both
            theirs.append(_timed(["tar", "tzf", str(tgz)]))
            fd = os.open(tgz, os.O_RDONLY)
            try:
                with _Clock() as clock:
                    found = identifier.identify_fd(fd, os.fstat(fd).st_size, str(tgz))
                ours.append((clock.wall, clock.cpu))
            finally:
                os.close(fd)
    finally:
        catalog.stop()
    assert found.identified_by == "member" and len(found.sources) == mib, found
    out = _ratios("archive", ours, theirs)
    out.update({"archive_mib": round(tgz.stat().st_size / (1 << 20), 1),
                "archive_members": found.members_total, "archive_ratio": out["archive_wall_ratio"]})
    return out


def chunking(work: Path, mib: int) -> dict[str, Any]:
    """ChunkStream throughput vs sha256sum on the same file."""
    from agent.content.chunks import ChunkStream

    data = work / "chunk.bin"
    with data.open("wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))
    ours, theirs = [], []
    count = [0]

    def counted(_key: int, _length: int) -> None:
        count[0] += 1

    for _round in range(3):
        theirs.append(_timed(["sha256sum", str(data)]))
        count[0] = 0
        stream = ChunkStream(counted)
        fd = os.open(data, os.O_RDONLY)
        try:
            with _Clock() as clock:
                offset = 0
                while piece := os.pread(fd, 1 << 20, offset):
                    stream.update(piece)
                    offset += len(piece)
                stream.finish()
            ours.append((clock.wall, clock.cpu))
        finally:
            os.close(fd)
    data.unlink()
    out = _ratios("chunk", ours, theirs)
    # a throughput ratio: sha256sum's time over ours (>= 0.5 wanted)
    out.update({"chunk_mib_s": round(mib / out["chunk_seconds"], 1),
                "sha256sum_mib_s": round(mib / out["chunk_base_seconds"], 1),
                "chunk_ratio": round(out["chunk_base_seconds"] / out["chunk_seconds"], 3),
                "chunk_cpu_throughput_ratio": round(
                    out["chunk_base_cpu_seconds"] / out["chunk_cpu_seconds"], 3),
                "chunks": count[0]})
    return out


def memory(work: Path, files: int, size: int) -> dict[str, Any]:
    """RSS of the sensors with `files` tagged files indexed and chunk-fingerprinted."""
    tree = work / "rss" / "db"
    total = _tree(tree, files, size, seed=3)
    empty = Agent(work, {"tags": {}})
    try:
        settle(empty.busy, quiet=2.0, limit=60, poll=0.1)
        rss_empty = empty.rss()
    finally:
        empty.stop()
    agent = Agent(work, {"tags": {str(tree): ["database"]}})
    try:
        start = time.monotonic()
        settle(agent.busy, quiet=3.0, limit=900, poll=0.1)
        settle_seconds = time.monotonic() - start
        rss = agent.rss()
    finally:
        agent.stop()
    shutil.rmtree(tree)
    return {"rss_mib": round(rss / (1 << 20), 1), "rss_empty_mib": round(rss_empty / (1 << 20), 1),
            "tagged_files": files, "tagged_mib": round(total / (1 << 20)),
            "index_seconds": round(settle_seconds, 1)}


def copying(work: Path, files: int, rounds: int) -> dict[str, Any]:
    """`cp -r` + sync of `files` files onto a loop stick, with and without the sensors."""
    from lab.loopstick import LoopStick, ensure_udevd

    ensure_udevd()
    tagged, plain = work / "cp" / "db", work / "cp" / "plain"
    _tree(tagged, files, 16 * 1024, seed=4)
    _tree(plain, files, 16 * 1024, seed=5)
    stick = LoopStick(work / "stick", label="EGCBENCH", serial=f"EGCBENCH{os.getpid()}",
                      size_mib=files * 2 * 24 // 1024 + 128)
    stick.create()
    out: dict[str, Any] = {}
    try:
        stick.plug()
        point = stick.mount()

        def cp(tree: Path) -> float:
            dest = point / tree.name
            start = time.perf_counter()
            subprocess.run(["cp", "-r", str(tree), str(point)], check=True)
            subprocess.run(["sync", "-f", str(point)], check=True)
            elapsed = time.perf_counter() - start
            shutil.rmtree(dest)
            subprocess.run(["sync", "-f", str(point)], check=True)
            return elapsed

        for tree in (tagged, plain):
            without: list[float] = []
            with_agent: list[float] = []
            agent_cpu: list[float] = []
            for _round in range(rounds):
                without.append(cp(tree))
                agent = Agent(work, {"tags": {str(tagged): ["database"]}})
                try:
                    settle(agent.busy, quiet=2.0, limit=120, poll=0.1)  # indexed and fingerprinted
                    cpu = agent.cpu()
                    with_agent.append(cp(tree))
                    settle(agent.busy, quiet=2.0, limit=300, poll=0.1)
                    agent_cpu.append(agent.cpu() - cpu)
                finally:
                    agent.stop()
            kind = "tagged" if tree is tagged else "untagged"
            out[f"cp_{kind}_ratio"] = round(statistics.median(with_agent) / statistics.median(without), 3)
            out[f"cp_{kind}_seconds"] = [round(statistics.median(without), 3),
                                         round(statistics.median(with_agent), 3)]
            # steadier on a shared machine than the wall-clock ratio: what the agent spent
            out[f"cp_{kind}_agent_ms_per_file"] = round(statistics.median(agent_cpu) * 1000 / files, 3)
        out["cp_ratio"] = max(out["cp_tagged_ratio"], out["cp_untagged_ratio"])
    finally:
        stick.remove()
    return out


def main() -> None:
    """Run the figures and print them, then the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.content", description=__doc__)
    parser.add_argument("--full", action="store_true", help="1 GiB archive, 2 GiB tagged")
    parser.add_argument("--skip-stick", action="store_true", help="leave out the cp -r figure")
    parser.add_argument("--stick-only", action="store_true", help="only the cp -r figure")
    args = parser.parse_args()
    figures: dict[str, Any] = {"full": args.full}
    with tempfile.TemporaryDirectory(prefix="eg-bench-content-") as tmp:
        work = Path(tmp)
        if args.stick_only:
            figures.update(copying(work, 2000, 3 if args.full else 2))
            _print_copying(figures)
            print(json.dumps(figures))
            return
        figures.update(archive(work, 1024 if args.full else 256))
        print(f"archive: {figures['archive_seconds']} s vs tar tzf {figures['archive_base_seconds']} s "
              f"-> {figures['archive_ratio']}x (CPU {figures['archive_cpu_ratio']}x)", flush=True)
        shutil.rmtree(work / "archive")
        figures.update(chunking(work, 1024 if args.full else 256))
        print(f"chunks: {figures['chunk_mib_s']} MiB/s vs sha256sum {figures['sha256sum_mib_s']} MiB/s "
              f"-> {figures['chunk_ratio']}x (CPU {figures['chunk_cpu_throughput_ratio']}x)", flush=True)
        figures.update(memory(work, 20_000, (100 if args.full else 10) * 1024))
        print(f"rss: {figures['rss_mib']} MiB with {figures['tagged_files']} files "
              f"({figures['tagged_mib']} MiB) tagged; {figures['rss_empty_mib']} MiB with none", flush=True)
        if not args.skip_stick:
            figures.update(copying(work, 2000, 3 if args.full else 2))
            _print_copying(figures)
    print(json.dumps(figures))


def _print_copying(figures: dict[str, Any]) -> None:
    print(f"cp -r: tagged {figures['cp_tagged_ratio']}x, untagged {figures['cp_untagged_ratio']}x; "
          f"agent CPU per file: tagged {figures['cp_tagged_agent_ms_per_file']} ms, "
          f"untagged {figures['cp_untagged_agent_ms_per_file']} ms", flush=True)


if __name__ == "__main__":
    main()

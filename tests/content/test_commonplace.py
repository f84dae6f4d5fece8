"""Commonplace content (agent/content/commonplace.py): git's templates and bookkeeping, and the
system's licence texts, never match."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from agent.content import ContentCatalog, ContentIdentifier
from agent.content.commonplace import TEMPLATE_DIRS, commonplace, commonplace_source, git_bookkeeping
from agent.content.identify import Identification
from agent.sensors.fingerprints import FingerprintIndex
from agent.sensors.tags import TagMap


def _identify_all(index: FingerprintIndex, out: Path) -> dict[str, Identification]:
    """What content identification finds in each file of `out`, by name."""
    catalog = ContentCatalog(index)
    catalog.start()
    try:
        assert catalog.wait_ready(20)
        identify = ContentIdentifier(catalog, index)
        found = {}
        for path in sorted(out.iterdir()):
            fd = os.open(path, os.O_RDONLY)
            try:
                found[path.name] = identify.identify_fd(fd, os.fstat(fd).st_size, str(path))
            finally:
                os.close(fd)
    finally:
        catalog.stop()
    return found


def test_a_git_template_is_commonplace_and_other_content_is_not() -> None:
    template = Path(TEMPLATE_DIRS[0]) / "description"
    if not template.is_file():
        pytest.skip("git's templates are not installed here")
    assert commonplace(hashlib.sha256(template.read_bytes()).hexdigest())
    assert not commonplace(hashlib.sha256(b"customers,balances\n").hexdigest())
    assert not commonplace("")


def test_git_bookkeeping_is_no_source_but_the_repositorys_files_and_objects_are() -> None:
    assert git_bookkeeping("/home/a/projects/secret/.git/HEAD")
    assert git_bookkeeping("/home/a/projects/secret/.git/hooks/pre-commit.sample")
    assert not git_bookkeeping("/home/a/projects/secret/.git/objects/pack/pack-1.pack")
    assert not git_bookkeeping("/home/a/projects/secret/main.c")
    assert not git_bookkeeping("/home/a/projects/secret/.github/workflow.yml")
    assert commonplace_source("/srv/x/.git/config", hashlib.sha256(b"x").hexdigest())
    assert not commonplace_source("/srv/x/main.c", hashlib.sha256(b"x").hexdigest())


def test_a_tagged_repositorys_licence_text_matches_no_copy_of_it_whole_or_in_part(tmp_path: Path) -> None:
    # a tagged repository's LICENSE is the Apache-2.0 text word for word: so is every
    # Apache-licensed project's, and the licence texts the system ships
    licence = Path("/usr/share/common-licenses/Apache-2.0")
    if not licence.is_file():
        pytest.skip("the system's licence texts are not installed here")
    repo = tmp_path / "srv" / "code"
    repo.mkdir(parents=True)
    shutil.copy(licence, repo / "LICENSE")
    (repo / "main.c").write_text("".join(f"int f{i}(void) {{ return {i}; }}\n" for i in range(2000)))
    out = tmp_path / "stick"
    out.mkdir()
    shutil.copy(licence, out / "LICENSE")
    (out / "LICENSE.edited").write_bytes(licence.read_bytes() + b"\nCopyright 2026 someone else\n")
    shutil.copy(repo / "main.c", out / "main.c")  # the repository's own file still matches
    index = FingerprintIndex(TagMap({str(repo): ["source-code"]}))
    index.rebuild()
    found = _identify_all(index, out)
    assert not found["LICENSE"].found, found["LICENSE"]
    assert not found["LICENSE.edited"].found, found["LICENSE.edited"]
    assert found["main.c"].sources == [str(repo / "main.c")]


def test_a_few_bytes_equal_to_a_tagged_file_are_no_copy_of_it_unless_staged_from_it(tmp_path: Path) -> None:
    # a tagged repository's one-line requirements.txt, .gitignore and empty package marker are
    # byte for byte those of the user's own project: no content evidence, whole or as members
    from agent.content.commonplace import MIN_EVIDENT_BYTES, too_small
    from agent.sensors import provenance

    repo = tmp_path / "srv" / "code"
    (repo / "tools").mkdir(parents=True)
    small = {"requirements.txt": b"requests\n", ".gitignore": b"__pycache__/\n*.pyc\nbuild/\n",
             "tools/__init__.py": b"\n"}
    for name, data in small.items():
        (repo / name).write_bytes(data)
        assert too_small(len(data))
    secret = os.urandom(MIN_EVIDENT_BYTES)  # as large as a file must be to say something alone
    (repo / "key.bin").write_bytes(secret)
    out = tmp_path / "stick"
    out.mkdir()
    for name, data in small.items():
        (out / name.replace("/", "_")).write_bytes(data)
    (out / "key.bin").write_bytes(secret)
    index = FingerprintIndex(TagMap({str(repo): ["source-code"]}))
    index.rebuild()
    found = _identify_all(index, out)
    assert [name for name, result in found.items() if result.found] == ["key.bin"]
    # the same few bytes staged from the tagged file (a derived file the agent saw made) are found
    digest = hashlib.sha256(small["requirements.txt"]).hexdigest()
    assert index.match_digest(len(small["requirements.txt"]), digest) == str(repo / "requirements.txt")
    assert index.match_digest(len(small["requirements.txt"]), digest, derived=True) is None
    staged = tmp_path / "staged.txt"
    staged.write_bytes(small["requirements.txt"])
    index.add_derived(str(staged), provenance.exact(str(repo / "requirements.txt"), ("source-code",), 9))
    assert index.match_digest(len(small["requirements.txt"]), digest, derived=True) == str(staged)

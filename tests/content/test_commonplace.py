"""Commonplace content (agent/content/commonplace.py): git's templates and bookkeeping never match."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.content.commonplace import TEMPLATE_DIRS, commonplace, commonplace_source, git_bookkeeping


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

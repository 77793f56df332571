# Written with AI assistance; review before relying on it.
"""Every source file in the repository carries the AI-assistance notice within its first lines.

Source files are the ones git tracks or would track (`git ls-files --cached --others --exclude-standard`):
code, configuration and requirements files, `.ci/run` and extension-less scripts under scripts/. Data (JSON,
images), prose (README, Markdown) and benchmark results are exempt.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import REPO_ROOT

NOTICE = "Written with AI assistance"
FIRST_LINES = 8
SOURCE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".toml", ".html", ".css", ".cfg", ".code-workspace"}
EXTRA_FILES = {".ci/run"}


def needs_notice(relative: str) -> bool:
    """Whether a repository-relative POSIX path is a source file that must carry the notice."""
    path = PurePosixPath(relative)
    if relative in EXTRA_FILES:
        return True
    if path.parts[0] == "scripts" and path.suffix == "" and not path.name.startswith("."):
        return True
    if path.suffix == ".txt":
        return path.name.startswith("requirements")
    return path.suffix in SOURCE_SUFFIXES


def has_notice(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as f:
        head = [line for _, line in zip(range(FIRST_LINES), f, strict=False)]
    return any(NOTICE in line for line in head)


def offenders(root: Path, relatives: Iterable[str]) -> list[str]:
    """The paths among `relatives` (existing files under `root`) that need the notice and lack it."""
    return sorted(
        rel
        for rel in relatives
        if needs_notice(rel) and (root / rel).is_file() and not has_notice(root / rel)
    )


def repository_files(root: Path) -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return [p for p in result.stdout.split("\0") if p]


@pytest.fixture(scope="module")
def files() -> list[str]:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip(f"{REPO_ROOT} is not a git checkout (or git is missing): cannot list its files")
    return repository_files(REPO_ROOT)


def test_every_source_file_carries_the_notice(files: list[str]) -> None:
    checked = [f for f in files if needs_notice(f)]
    assert any(f.endswith("tests/unit/test_notice.py") for f in checked), "the file list looks wrong"
    bad = offenders(REPO_ROOT, files)
    listing = "\n".join(bad)
    assert not bad, f"{len(bad)} file(s) lack {NOTICE!r} in their first {FIRST_LINES} lines:\n{listing}"


# ----------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    "path",
    [
        "cerebro/predict.py",
        "scripts/test",
        "scripts/check.sh",
        ".ci/run",
        "cog.yaml",
        ".github/workflows/ci.yml",
        "pyproject.toml",
        "requirements.txt",
        "requirements-dev.txt",
        "setup.cfg",
        "web/index.html",
        "web/style.css",
        "cerebro.code-workspace",
    ],
)
def test_source_files_need_the_notice(path: str) -> None:
    assert needs_notice(path)


@pytest.mark.parametrize(
    "path",
    [
        "README.md",
        "docs/guide.md",
        "benchmarks/results/h100.json",
        "tests/data/case.json",
        "tests/data/image.png",
        "notes.txt",
        "LICENSE",
        ".gitignore",
        "scripts/.keep",
    ],
)
def test_data_and_prose_are_exempt(path: str) -> None:
    assert not needs_notice(path)


def test_checker_flags_a_file_without_the_notice(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "good.py").write_text(f"# {NOTICE}; review before relying on it.\nx = 1\n")
    (tmp_path / "scripts" / "run").write_text(f"#!/bin/sh\n# {NOTICE}; review before relying on it.\n")
    (tmp_path / "bad.py").write_text("x = 1\n")
    (tmp_path / "late.sh").write_text("\n" * FIRST_LINES + f"# {NOTICE}\n")
    (tmp_path / "data.json").write_text("{}\n")
    rels = ["good.py", "scripts/run", "bad.py", "late.sh", "data.json", "deleted.py"]
    assert offenders(tmp_path, rels) == ["bad.py", "late.sh"]

# Written with AI assistance; review before relying on it.
"""Shared test fixtures: where ../shared lives, and tiny models the tests build themselves.

Tests that need ../shared/fixtures FAIL when CI=true and the folder is missing (CI must never pass by
skipping them) and skip with the reason elsewhere. The folder is `$CEREBRO_SHARED_DIR` when set, else
`../shared` beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("CEREBRO_SHARED_DIR") or REPO_ROOT.parent / "shared")


def require_shared(relative: str) -> Path:
    """Path to something in ../shared, or fail (CI) / skip (elsewhere) with the reason."""
    path = shared_dir() / relative
    if not path.exists():
        reason = (
            f"{path} is missing (set CEREBRO_SHARED_DIR to the folder that holds PHI35V.md and fixtures/)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_shared("fixtures")


@pytest.fixture(scope="session")
def tokenizer_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "phi35v-tiny"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random checkpoint written by our own writer (other sizes and seed than the shared one)."""
    from cerebro.models.phi3_v.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"), tokenizer_dir, seed=1234, num_crops=4)

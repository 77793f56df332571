# Written with AI assistance; review before relying on it.
"""Importing the Cog runner module stays light: no torch, no transformers until setup().

The Cog server imports the runner module before setup(), and `cerebro serve` imports it once more in its
own process only to write the OpenAPI schema; torch and transformers cost seconds there (1.5 s measured),
so they are imported by setup() and nowhere before it.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "xgrammar")


def test_importing_the_runner_imports_no_torch_or_transformers() -> None:
    code = f"import sys, cerebro.predict; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "", f"importing cerebro.predict imported {result.stdout.strip()}"

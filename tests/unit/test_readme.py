# Written with AI assistance; review before relying on it.
"""The README tells the truth about the code: every error code, input limit, setting and CLI verb."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from cerebro.errors import CODES
from cerebro.request import LIMITS
from cerebro.settings import Settings
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_error_code_is_documented(code: str) -> None:
    row = re.search(rf"^\| {code} \| (.+) \|$", README, flags=re.MULTILINE)
    assert row is not None, f"README's error table lacks {code}"
    assert row.group(1) == CODES[code]


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_every_numeric_input_is_documented_with_its_range(name: str) -> None:
    row = re.search(rf"^\| `{name}` \| (\w+) \| ([^|]+) \| ([^|]+) \|$", README, flags=re.MULTILINE)
    assert row is not None, f"README's input table lacks {name}"
    limit = LIMITS[name]
    high = f"{int(limit.high)}" if limit.integer else f"{limit.high:g}"
    assert high in row.group(3), f"{name}: README says {row.group(3)!r}, the limit is {high}"


def test_every_setting_is_documented_with_its_default() -> None:
    """Settings owns the defaults; the README's table shows each one (a computed default, 0 or empty in
    Settings, is described in words there instead)."""
    defaults = Settings()
    for field in fields(Settings):
        variable = f"CEREBRO_{field.name.upper()}"
        row = re.search(rf"^\| `{variable}` \| ([^|]+) \|", README, flags=re.MULTILINE)
        assert row is not None, f"README's settings table lacks {variable}"
        value = getattr(defaults, field.name)
        if value in (0, "", None) and not isinstance(value, bool):
            continue  # chosen at load time: the README says how
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        assert shown in row.group(1).replace("`", ""), f"{variable}: README {row.group(1)!r}, default {shown}"


def test_quickstart_test_command_is_what_ci_runs() -> None:
    assert "bash scripts/test" in README
    assert "bash scripts/test" in (REPO_ROOT / ".ci/run").read_text()

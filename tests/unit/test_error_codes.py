# Written with AI assistance; review before relying on it.
"""Every error code raised in cerebro/ is in the vocabulary (errors.CODES, hence the README's table) and is
raised through the right branch of the tree: E1xxx by an InputError (the caller's to fix), E2xxx by a
ServerError (ours). Read from the source with `ast`, so a new raise cannot slip past."""

from __future__ import annotations

import ast

import pytest

from cerebro import errors
from tests.conftest import REPO_ROOT


def _raised() -> list[tuple[str, int, str, str]]:
    """(file, line, error class, code) for every `SomeError(..., code="E....")` in cerebro/."""
    found = []
    for path in sorted((REPO_ROOT / "cerebro").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if not isinstance(getattr(errors, node.func.id, None), type):
                continue
            for keyword in node.keywords:
                if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    where = str(path.relative_to(REPO_ROOT))
                    found.append((where, node.lineno, node.func.id, str(keyword.value.value)))
    return found


RAISED = _raised()


def test_the_scan_finds_the_raises() -> None:
    # A guard on the guard: if the scan broke, the tests below would pass on nothing.
    assert len(RAISED) > 40
    assert {code for *_, code in RAISED} >= {"E1106", "E1107", "E1301", "E2021"}


@pytest.mark.parametrize(("where", "line", "name", "code"), RAISED, ids=[f"{w}:{n}" for w, n, *_ in RAISED])
def test_every_raised_code_is_known_and_on_the_right_branch(
    where: str, line: int, name: str, code: str
) -> None:
    assert code in errors.CODES, f"{where}:{line} raises {code}, which errors.CODES does not define"
    cls = getattr(errors, name)
    if code.startswith("E1"):
        assert issubclass(cls, errors.InputError), f"{where}:{line}: {code} is a caller error, {name} is not"
    else:
        assert issubclass(cls, errors.ServerError), (
            f"{where}:{line}: {code} is ours, {name} is a caller error"
        )


def test_every_class_default_code_is_known_and_on_its_branch() -> None:
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.CerebroError) and cls is not errors.CerebroError:
            assert cls.code in errors.CODES, cls
            assert cls.code.startswith("E1") == issubclass(cls, errors.InputError), cls

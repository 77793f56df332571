# Written with AI assistance; review before relying on it.
"""The docs site: docs/index.html is what scripts/build_docs.py makes of README.md, and its links resolve."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BUILD = ROOT / "scripts" / "build_docs.py"
REGENERATE = "python scripts/build_docs.py"


class Page(HTMLParser):
    """Ids and the href/src of every element, from an HTML file."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.code_classes: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.ids.add(values["id"])
        for name in ("href", "src"):
            if name in values:
                self.refs.append((tag, values[name]))
        if tag == "code" and "class" in values:
            self.code_classes.append(values["class"])


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD), *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def page() -> Page:
    return Page((DOCS / "index.html").read_text(encoding="utf-8"))


def test_index_html_is_what_the_readme_gives(tmp_path: Path) -> None:
    fresh = tmp_path / "index.html"

    result = _build("--out", str(fresh))

    assert result.returncode == 0, result.stderr
    assert (DOCS / "index.html").exists(), f"docs/index.html is missing: run {REGENERATE}"
    assert fresh.read_bytes() == (DOCS / "index.html").read_bytes(), (
        f"docs/index.html is stale: run {REGENERATE}"
    )


def test_the_build_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a.html", tmp_path / "b.html"
    assert _build("--out", str(first)).returncode == 0
    assert _build("--out", str(second)).returncode == 0

    assert first.read_bytes() == second.read_bytes()


def test_check_mode_fails_on_a_stale_page(tmp_path: Path) -> None:
    stale = tmp_path / "index.html"
    stale.write_text("<!DOCTYPE html><title>old</title>\n")

    assert _build("--check", "--out", str(stale)).returncode == 1
    assert _build("--out", str(stale)).returncode == 0
    assert _build("--check", "--out", str(stale)).returncode == 0


def test_every_in_page_link_has_a_target(page: Page) -> None:
    fragments = {url[1:] for _, url in page.refs if url.startswith("#")}

    assert fragments, "expected in-page links (the contents list at least)"
    assert not fragments - page.ids, f"links to missing ids: {sorted(fragments - page.ids)}"


def test_every_local_href_and_src_exists(page: Page) -> None:
    missing = []
    for tag, url in page.refs:
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or url.startswith("#"):
            continue
        target = (DOCS / unquote(parts.path)).resolve()
        if not target.exists():
            missing.append(f"<{tag}> {url}")

    assert not missing, f"local links to missing files: {missing}"


def test_the_page_has_what_a_standalone_site_needs(page: Page) -> None:
    text = (DOCS / "index.html").read_text(encoding="utf-8")

    assert text.startswith("<!DOCTYPE html>")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert ("link", "style.css") in page.refs
    assert {"quickstart", "api-reference"} <= page.ids
    assert all(cls.startswith("language-") for cls in page.code_classes)
    assert not [url for _, url in page.refs if url.startswith("docs/")], "docs/ prefixes must be rewritten"
    loaded = [url for tag, url in page.refs if tag in ("link", "script", "img")]
    remote = [url for url in loaded if urlsplit(url).scheme not in ("", "data")]
    assert not remote, f"the page must load nothing from the network: {remote}"

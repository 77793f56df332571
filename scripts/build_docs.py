# Written with AI assistance; review before relying on it.
"""Build the documentation site (docs/index.html, served by GitHub Pages from docs/) from README.md.

    python scripts/build_docs.py            # write docs/index.html
    python scripts/build_docs.py --check    # exit 1 if docs/index.html is not what README.md gives

The page is the README rendered with Python-Markdown (tables, fenced code, heading ids), a contents
list built from the h2 headings, and docs/style.css. The same README always gives byte-identical
HTML. Links and images are rewritten for a page that lives in docs/: `docs/cerebro.png` becomes
`cerebro.png`; a link to another file of the repository becomes a link to it under the `Source` URL in
pyproject.toml's [project.urls] when there is one, else `../path` (with a warning: GitHub Pages
serves docs/ alone, so such a link only works in a checkout).

This script knows nothing about Cerebro itself; it does not build the diagram (scripts/draw_diagram.py).
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import tomllib
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

import markdown

ROOT = Path(__file__).resolve().parent.parent
SITE = "docs"  # the folder GitHub Pages serves; index.html lives at its top
AI_NOTE = "<!-- Written with AI assistance; review before relying on it. -->"

PAGE = """<!DOCTYPE html>
{ai_note}
<!-- Generated from README.md by scripts/build_docs.py: edit the README, not this file. -->
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<meta name="description" content="{description}">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="style.css">
</head>
<body>
<a class="skip" href="#content">Skip to content</a>
<div class="layout">
<nav class="toc" aria-label="Contents">
<p class="toc-title"><a href="#top">{site_name}</a></p>
<ul>
{nav}
</ul>
</nav>
<main id="content">
<span id="top"></span>
{body}
</main>
<footer>Generated from <code>README.md</code> by <code>scripts/build_docs.py</code>.</footer>
</div>
</body>
</html>
"""


def github_slug(value: str, separator: str = "-") -> str:
    """Heading ids as GitHub makes them, so README links like `#api-reference` work on both.

    Lower-case, drop punctuation except `-` and `_`, one separator per space.
    """
    value = unicodedata.normalize("NFKC", html.unescape(re.sub(r"<[^>]+>", "", value)))
    value = re.sub(r"[^\w\- ]", "", value.strip().lower())
    return value.replace(" ", separator)


def source_url(root: Path = ROOT) -> str | None:
    """[project.urls] Source from pyproject.toml, as the base for links to repository files."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    url = project.get("urls", {}).get("Source")
    return url.rstrip("/") + "/" if isinstance(url, str) and url else None


def rewrite_url(url: str, *, source: str | None, warnings: list[str]) -> str:
    """A README-relative URL as seen from docs/index.html."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith(("#", "/")) or not parts.path:
        return url
    if parts.path.startswith(f"{SITE}/"):
        return url[len(SITE) + 1 :]
    if source is not None:
        return source + url
    warnings.append(f"link to {url!r} leaves {SITE}/; it works in a checkout, not on GitHub Pages")
    return "../" + url


def render(readme: str, *, source: str | None = None, warnings: list[str] | None = None) -> str:
    """The whole page for README text. Pure: the same arguments give the same string."""
    warnings = [] if warnings is None else warnings
    md = markdown.Markdown(
        extensions=["tables", "fenced_code", "toc"],
        extension_configs={"toc": {"slugify": github_slug}},
        output_format="html",
    )
    body = md.convert(readme)
    body = re.sub(
        r'\b(href|src)="([^"]*)"',
        lambda m: (
            f'{m[1]}="{html.escape(rewrite_url(html.unescape(m[2]), source=source, warnings=warnings))}"'
        ),
        body,
    )
    # Wide tables scroll inside their own box instead of widening the page on a phone.
    body = body.replace("<table>", '<div class="table-scroll">\n<table>').replace(
        "</table>", "</table>\n</div>"
    )
    body = body.replace(AI_NOTE + "\n", "")  # the README's own note; the page carries one in its head

    headings = _flatten(md.toc_tokens)
    h1 = next((h for h in headings if h["level"] == 1), None)
    title = h1["name"] if h1 else "Cerebro"
    nav = "\n".join(f'<li><a href="#{h["id"]}">{h["name"]}</a></li>' for h in headings if h["level"] == 2)
    first_paragraph = re.search(r"<p>(.*?)</p>", body, re.DOTALL)
    description = re.sub(r"<[^>]+>", "", first_paragraph[1]) if first_paragraph else title
    description = " ".join(description.split())
    return PAGE.format(
        ai_note=AI_NOTE,
        title=title,
        site_name=title,
        description=html.escape(html.unescape(description), quote=True),
        nav=nav,
        body=body.strip(),
    )


def _flatten(tokens: list[dict]) -> list[dict]:
    flat = []
    for token in tokens:
        flat.append(token)
        flat.extend(_flatten(token.get("children", [])))
    return flat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="input (default: README.md)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / SITE / "index.html", help="default: docs/index.html"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if --out differs from what would be built"
    )
    args = parser.parse_args(argv)

    warnings: list[str] = []
    page = render(args.readme.read_text(encoding="utf-8"), source=source_url(), warnings=warnings)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.check:
        current = args.out.read_bytes() if args.out.exists() else None
        if current != page.encode("utf-8"):
            print(f"{args.out} is out of date: run python scripts/build_docs.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(page.encode("utf-8"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

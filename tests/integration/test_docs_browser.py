# Written with AI assistance; review before relying on it.
"""Open docs/index.html in headless Chromium, served from loopback, and look for anything broken.

Fails on a console error, an uncaught page error, a failed or non-2xx request, a request that leaves
the loopback server, an image that did not load, a local link that does not resolve, and horizontal
overflow: a page wider than the viewport, any element that sticks out of the box that holds it (a code
line or a table spilling out of the text column), and, at laptop width, any box that hides part of its
content behind a sideways scroll (a table whose last column is off to the right). On a phone a wide
table may scroll inside its own box; nothing may spill out of it. Screenshots of the whole page at
1280x900 and 390x844 go to screenshots/ (git ignored) for a person to look at.

Needs the `playwright` Python package and Debian's Chromium at /usr/bin/chromium (or CHROMIUM_PATH);
Playwright's own browser downloads are not used. Where either is missing the tests skip, except under
CI=true, where they fail: CI must install them.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCREENSHOTS = ROOT / "screenshots"
# Flags that keep Chromium off the network (no updates, sync, field trials or QUIC probes).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORTS = {"laptop": (1280, 900), "phone": (390, 844)}
# Boxes that may scroll sideways (hiding part of their content until scrolled), per viewport.
SCROLL_ALLOWED = {"laptop": False, "phone": True}
# Every in-flow element, measured against its parent; those inside a box that clips or scrolls sideways
# are measured only through that box. Returns one line per problem (at most 20).
OVERFLOW_JS = """
(scrollAllowed) => {
  const problems = [];
  const name = (el) => {
    const text = (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 60);
    return `<${el.tagName.toLowerCase()}${el.className ? "." + el.className : ""}> "${text}"`;
  };
  const outOfFlow = (el) => ["absolute", "fixed"].includes(getComputedStyle(el).position);
  const clips = (el) => getComputedStyle(el).overflowX !== "visible";
  for (const el of document.body.querySelectorAll("*")) {
    if (["SCRIPT", "STYLE"].includes(el.tagName) || el.getClientRects().length === 0) continue;
    let inScrollBox = false;
    for (let a = el; a && a !== document.body; a = a.parentElement) {
      if (outOfFlow(a)) { inScrollBox = true; break; }  // the skip link waits off-screen on purpose
      if (a !== el && clips(a)) { inScrollBox = true; break; }
    }
    if (clips(el) && !scrollAllowed && el.scrollWidth > el.clientWidth + 1) {
      problems.push(`${name(el)} hides ${el.scrollWidth - el.clientWidth} px of its content sideways`);
    }
    if (inScrollBox) continue;
    const box = el.getBoundingClientRect();
    const parent = el.parentElement.getBoundingClientRect();
    const out = Math.max(box.right - parent.right, parent.left - box.left);
    if (out > 1) problems.push(`${name(el)} sticks out of its container by ${Math.round(out)} px`);
  }
  return problems.slice(0, 20);
}
"""

pytestmark = pytest.mark.browser


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the CI image must provide it)")
    pytest.skip(reason)


def _chromium() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _unavailable(f"Chromium not found at {path} (Debian: apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(DOCS))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -r requirements-dev.txt)")
    profile = tmp_path_factory.mktemp("chromium-profile")  # fresh, so no state leaks between runs
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        yield context
        context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=list(VIEWPORTS))
def test_the_docs_page_loads_cleanly(browser_context: Any, site: str, viewport: str) -> None:
    width, height = VIEWPORTS[viewport]
    page = browser_context.new_page()
    page.set_viewport_size({"width": width, "height": height})
    problems: list[str] = []
    requested: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("request", lambda r: requested.append(r.url))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    page.goto(f"{site}/index.html", wait_until="load")
    page.wait_for_load_state("networkidle")

    broken_images = page.eval_on_selector_all(
        "img", "els => els.filter(e => !e.complete || e.naturalWidth === 0).map(e => e.getAttribute('src'))"
    )
    links = page.eval_on_selector_all("a[href]", "els => els.map(e => [e.getAttribute('href'), e.href])")
    broken_links = []
    for raw, resolved in links:
        if raw.startswith("#"):
            if raw != "#" and page.locator(f"[id='{raw[1:]}']").count() == 0:
                broken_links.append(raw)
        elif resolved.startswith(site):
            status = page.request.get(resolved).status
            if status != 200:
                broken_links.append(f"{raw} -> HTTP {status}")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    spills = page.evaluate(OVERFLOW_JS, SCROLL_ALLOWED[viewport])

    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"docs-{width}x{height}.png"), full_page=True)
    page.close()

    assert not problems, "\n".join(problems)
    assert not [url for url in requested if not url.startswith((site, "data:"))], "requests left loopback"
    assert not broken_images, f"images that did not load: {broken_images}"
    assert not broken_links, f"links that do not resolve: {broken_links}"
    assert overflow <= 0, f"the page is {overflow} px wider than the {width} px viewport"
    assert not spills, f"horizontal overflow at {width} px:\n" + "\n".join(spills)

"""The built HTML book, opened offline in headless Chromium (Playwright driving Debian's ``chromium``).

Every chapter page is opened from ``file://`` at 1280 x 900 and checked: the math is typeset with no raw TeX
left, nothing is logged as an error, no request leaves the machine, no code block scrolls sideways and no
displayed equation is wider than the column, the explorers swap frames without a kernel, and the download
menu offers the student notebook. Screenshots (light and dark theme) go to ``_build/screenshots/``.

The book is built once per session (tests/book_build.py). Needs Debian's ``chromium`` (``.ci/install``)
and the vendored assets. ``COMPANION_SKIP_BROWSER=1`` skips these tests deliberately.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from book_build import HTML_DIR, ROOT

SCREENSHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("*.ipynb"))
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome:", "devtools:")

pytestmark = pytest.mark.skipif(os.environ.get("COMPANION_SKIP_BROWSER") == "1",
                                reason="COMPANION_SKIP_BROWSER=1")


class OpenPage:
    """A page plus everything it logged and requested while loading."""

    def __init__(self, context: Any, url: str) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.failed: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} {r.failure}"))
        self.page.goto(url)
        self.page.wait_for_load_state("load")
        self.page.wait_for_function("!!(window.MathJax && MathJax.startup && MathJax.startup.promise)")
        self.page.evaluate("MathJax.startup.promise.then(() => document.fonts.ready).then(() => true)")

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)


@pytest.fixture(scope="module", params=CHAPTERS)
def chapter(request: Any, built_book: Path, chromium: Any) -> Iterator[OpenPage]:
    opened = OpenPage(chromium, (built_book / "book" / f"{request.param}.html").as_uri())
    opened.name = request.param
    yield opened
    opened.page.close()


# ---------------------------------------------------------------------------------------------------------
# the checks, on every chapter


def test_math_is_typeset_and_no_raw_tex_is_left(chapter: OpenPage):
    assert chapter.evaluate("document.querySelectorAll('mjx-container').length") >= 2
    assert chapter.evaluate("document.querySelectorAll('mjx-merror').length") == 0
    leftover = chapter.evaluate("""() => {
        const copy = document.querySelector('main').cloneNode(true);
        copy.querySelectorAll('pre, code, script, .highlight, mjx-container').forEach(e => e.remove());
        const text = copy.innerText;
        const raw = ['\\\\(', '\\\\)', '\\\\[', '\\\\]', '$$', '{eval}', '{cite}', ':::{'];
        return raw.filter(d => text.includes(d));
    }""")
    assert leftover == []


def test_no_console_errors(chapter: OpenPage):
    chapter.page.wait_for_timeout(300)
    assert chapter.errors == []


def test_no_request_leaves_the_machine(chapter: OpenPage):
    assert any("mathjax" in url for url in chapter.requests), "MathJax must load from the vendored copy"
    assert [url for url in chapter.requests if not url.startswith(LOCAL_SCHEMES)] == []
    assert chapter.failed == []


def test_code_and_equations_fit_the_column(chapter: OpenPage):
    """At 1280 px with both sidebars: no code line scrolls sideways, no displayed equation is cut."""
    wide = chapter.evaluate("""() => {
        const over = e => e.scrollWidth > e.clientWidth + 1;
        const code = [...document.querySelectorAll('div.cell_input pre, div.cell_output pre')].filter(over)
            .map(e => 'code: ' + e.innerText.split('\\n').find(l => l.length > 80));
        const maths = [...document.querySelectorAll('mjx-container[display="true"]')]
            .filter(e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().left < 0)
            .map(e => 'equation: ' + (e.getAttribute('aria-label') || e.textContent).slice(0, 80));
        return [...code, ...maths];
    }""")
    assert wide == []


def test_download_menu_offers_the_student_notebook(chapter: OpenPage):
    href = chapter.evaluate("""() => {
        const a = document.querySelector('a[href$="student/' + document.location.pathname.split('/').pop()
            .replace('.html', '.ipynb') + '"]');
        return a && a.href;
    }""")
    assert href, "no student .ipynb link in the download menu"
    student = Path(href.removeprefix("file://"))
    assert student.is_file() and student.resolve().parent == (HTML_DIR / "student").resolve()
    assert "{solution}" not in student.read_text()


def test_static_explorers_swap_frames(chapter: OpenPage):
    if not chapter.evaluate("document.querySelectorAll('.companion-explorer').length"):
        pytest.skip(f"{chapter.name} has no explorer")
    chapter.page.wait_for_function("""() => [...document.querySelectorAll('.companion-explorer img')]
        .every(i => i.complete && i.naturalWidth > 0)""")
    states = chapter.evaluate("""() => [...document.querySelectorAll('.companion-explorer')].map(root => {
        const frame = () => { const v = root.querySelector('.cpx-view'); return v.innerHTML; };
        const before = frame();
        const control = root.querySelector('[data-control]');
        const options = control.tagName === 'SELECT' ? control.options.length : Number(control.max) + 1;
        control.value = String((Number(control.value) + 1) % options);
        control.dispatchEvent(new Event(control.tagName === 'SELECT' ? 'change' : 'input'));
        const box = root.querySelector('.cpx-view').getBoundingClientRect();
        return {frames: Number(root.dataset.nFrames), changed: frame() !== before,
                width: box.width, height: box.height};
    })""")
    for state in states:
        assert state["frames"] >= 2 and state["changed"], "moving a control must swap the picture"
        assert state["width"] > 100 and state["height"] > 50


def set_theme(page: Any, mode: str) -> None:
    page.evaluate("m => { const d = document.documentElement.dataset; d.theme = m; d.mode = m; }", mode)


def test_screenshots_light_and_dark(chapter: OpenPage):
    page = chapter.page
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=SCREENSHOTS / f"{chapter.name}_light.png")
    if page.evaluate("document.querySelectorAll('.companion-explorer').length"):
        page.evaluate("document.querySelector('.companion-explorer').scrollIntoView({block: 'center'})")
    set_theme(page, "dark")
    page.wait_for_timeout(200)
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(255, 255, 255)"
    page.screenshot(path=SCREENSHOTS / f"{chapter.name}_dark.png")
    set_theme(page, "light")
    for mode in ("light", "dark"):
        assert (SCREENSHOTS / f"{chapter.name}_{mode}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


AXE = ROOT / "tests" / "_vendor" / "axe-core" / "axe.min.js"
SERIOUS = ("serious", "critical")


def test_no_serious_accessibility_violations(chapter: OpenPage):
    """axe-core (vendored for tests only, .ci/vendor-assets) finds nothing serious or critical on the page."""
    assert AXE.exists(), "axe-core is not vendored: run .ci/vendor-assets"
    chapter.page.add_script_tag(path=str(AXE))
    violations = chapter.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations.map(v => ({id: v.id, impact: v.impact,
            nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ') + ': ' + n.failureSummary.slice(0, 160)),
            html: v.nodes.slice(0, 3).map(n => n.html.slice(0, 200))}));
    }""")
    assert [v for v in violations if v["impact"] in SERIOUS] == []


def test_a_slide_deck_works_offline(built_book: Path, chromium: Any):
    """The first chapter's reveal.js deck, from file://: it steps to its second slide, typesets its math,
    logs no error and requests nothing from the network."""
    deck = built_book / "slides" / f"{CHAPTERS[0]}.html"
    assert deck.exists(), "the build wrote no deck for the first chapter"
    opened = OpenPage(chromium, deck.as_uri())
    page = opened.page
    page.wait_for_function("() => window.Reveal && Reveal.isReady()")
    page.evaluate("Reveal.next()")
    page.wait_for_timeout(600)
    assert page.evaluate("Reveal.getIndices().h") == 1
    assert page.evaluate("document.querySelectorAll('.reveal mjx-container').length") > 0
    assert page.evaluate("document.querySelectorAll('.reveal mjx-merror').length") == 0
    assert opened.errors == [] and opened.failed == []
    assert [url for url in opened.requests if not url.startswith(LOCAL_SCHEMES)] == []
    page.screenshot(path=SCREENSHOTS / "slides_second.png")
    page.close()

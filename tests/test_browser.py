"""The built HTML book, opened offline in headless Chromium through the DevTools protocol.

Builds the book (``jupyter-book build . -W --keep-going``) unless ``_build/html`` is newer than every
source, opens a chapter from ``file://``, and checks that the math is typeset, the explorer renders and
swaps frames without a kernel, nothing is logged as an error, and no request leaves the machine.
Screenshots (light and dark theme) are saved under ``_build/screenshots/`` for people to look at.

Needs Debian's ``chromium`` (``.ci/install`` installs it) and the vendored assets
(``.ci/vendor-assets``). Set ``COMPANION_SKIP_BROWSER=1`` to skip deliberately.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
BUILD_OK = ROOT / "_build" / ".companion-build-ok"  # written after a build that succeeded
CHAPTER = "book/ch02_one_objective"  # the chapter with the first explorer
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-port=0", "--window-size=1280,900",
]
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome:", "devtools:")

pytestmark = pytest.mark.skipif(os.environ.get("COMPANION_SKIP_BROWSER") == "1",
                                reason="COMPANION_SKIP_BROWSER=1")


# ---------------------------------------------------------------------------------------------------------
# the book


def book_sources() -> list[Path]:
    sources = [ROOT / "_config.yml", ROOT / "_toc.yml"]
    skip = {"_vendor", "__pycache__", ".ipynb_checkpoints"}
    sources += [p for p in (ROOT / "book").rglob("*") if p.is_file() and not skip & set(p.parts)]
    sources += [p for p in (ROOT / "companion").rglob("*.py") if "__pycache__" not in p.parts]
    return sources


def build_is_fresh(page: Path) -> bool:
    if not page.exists() or not BUILD_OK.exists():
        return False
    built = BUILD_OK.stat().st_mtime  # a build that failed (--keep-going still writes pages) leaves no stamp
    return all(source.stat().st_mtime < built for source in book_sources())


@pytest.fixture(scope="module")
def built_book() -> Path:
    """The built HTML directory; builds the book when the last build is older than a source."""
    assert (ROOT / "book" / "_vendor" / "VERSIONS").exists(), "vendored assets missing: run .ci/vendor-assets"
    page = HTML_DIR / f"{CHAPTER}.html"
    if not build_is_fresh(page):
        BUILD_OK.unlink(missing_ok=True)
        command = [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "-W", "--keep-going"]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"the book build failed:\n{output[-6000:]}"
        assert "build succeeded" in output
        BUILD_OK.touch()
    assert page.exists()
    return HTML_DIR


# ---------------------------------------------------------------------------------------------------------
# a minimal DevTools-protocol client


class DevTools:
    """Send CDP commands over one websocket; keep every event that arrives meanwhile."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for: {expression}")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[str]:
    """A fresh headless Chromium; yields the websocket URL of its first page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: run .ci/install (apt-get install chromium)"
    profile = Path(tempfile.mkdtemp(prefix="companion-chromium-"))
    process = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None, "chromium exited at start-up"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def chapter(built_book: Path, browser: str) -> Iterator[DevTools]:
    """The chapter, loaded from file:// with MathJax finished."""
    tools = DevTools(browser)
    for domain in ("Page", "Runtime", "Log", "Network"):
        tools.send(f"{domain}.enable")
    tools.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
               mobile=False)
    tools.send("Page.navigate", url=(built_book / f"{CHAPTER}.html").as_uri())
    tools.wait_for("document.readyState === 'complete'")
    tools.wait_for("!!(window.MathJax && MathJax.startup && MathJax.startup.promise)")
    tools.evaluate("MathJax.startup.promise.then(() => true)")
    tools.wait_for("document.fonts.status === 'loaded'")
    yield tools
    tools.close()


# ---------------------------------------------------------------------------------------------------------
# the checks


def test_math_is_typeset(chapter: DevTools):
    assert chapter.evaluate("document.querySelectorAll('mjx-container').length") >= 2
    assert chapter.evaluate("document.querySelectorAll('mjx-container[display=\"true\"]').length") >= 1
    # no raw TeX delimiters left in the prose (code cells may legitimately contain backslashes)
    leftover = chapter.evaluate("""(() => {
        const copy = document.querySelector('main').cloneNode(true);
        copy.querySelectorAll('pre, code, script, .highlight').forEach(e => e.remove());
        const text = copy.innerText;
        return ['\\\\(', '\\\\)', '\\\\[', '\\\\]', '$$'].filter(d => text.includes(d));
    })()""")
    assert leftover == []
    assert chapter.evaluate("document.querySelectorAll('mjx-merror').length") == 0


def test_static_explorer_renders_and_swaps_frames(chapter: DevTools):
    chapter.wait_for("(() => { const i = document.querySelector('.companion-explorer img.cpx-frame');"
                     " return i && i.complete && i.naturalWidth > 0; })()")
    state = chapter.evaluate("""(() => {
        const root = document.querySelector('.companion-explorer');
        const img = root.querySelector('img.cpx-frame');
        const before = img.src;
        const control = root.querySelector('[data-control]');
        const options = control.tagName === 'SELECT' ? control.options.length : Number(control.max) + 1;
        control.value = String((Number(control.value) + 1) % options);
        control.dispatchEvent(new Event(control.tagName === 'SELECT' ? 'change' : 'input'));
        const box = img.getBoundingClientRect();
        return {frames: Number(root.dataset.nFrames),
                controls: root.querySelectorAll('[data-control]').length,
                changed: img.src !== before, width: box.width, height: box.height};
    })()""")
    assert state["frames"] >= 2 and state["controls"] >= 1
    assert state["changed"], "moving a control must swap the picture"
    assert state["width"] > 100 and state["height"] > 50


def test_no_console_errors(chapter: DevTools):
    chapter.evaluate("new Promise(r => setTimeout(() => r(true), 500))")
    errors = []
    for event in chapter.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")
    assert errors == []


def test_no_request_leaves_the_machine(chapter: DevTools):
    requests = [e for e in chapter.events if e.get("method") == "Network.requestWillBeSent"]
    urls = [e["params"]["request"]["url"] for e in requests]
    assert any(url.endswith(".js") or ".js?" in url for url in urls), "expected the page's scripts to load"
    assert any("mathjax" in url for url in urls), "MathJax must load from the vendored copy"
    remote = [url for url in urls if not url.startswith(LOCAL_SCHEMES)]
    assert remote == []
    failed = [e["params"] for e in chapter.events if e.get("method") == "Network.loadingFailed"]
    assert failed == []


def test_screenshots_light_and_dark(chapter: DevTools):
    chapter.evaluate("window.scrollTo(0, 0)")
    chapter.screenshot(SCREENSHOTS / "chapter_light.png")
    chapter.evaluate("document.querySelector('.companion-explorer').scrollIntoView({block: 'center'})")
    chapter.evaluate("new Promise(r => setTimeout(() => r(true), 200))")
    chapter.screenshot(SCREENSHOTS / "explorer_light.png")
    chapter.evaluate("document.documentElement.dataset.theme = 'dark';"
                     " document.documentElement.dataset.mode = 'dark'")
    chapter.evaluate("new Promise(r => setTimeout(() => r(true), 200))")
    assert chapter.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(255, 255, 255)"
    chapter.screenshot(SCREENSHOTS / "explorer_dark.png")
    for name in ("chapter_light.png", "explorer_light.png", "explorer_dark.png"):
        assert (SCREENSHOTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_widgets_render_if_any(chapter: DevTools):
    """ipywidgets saved by the build render from the vendored manager (explorers use static HTML instead)."""
    views = chapter.evaluate(
        "document.querySelectorAll('script[type=\"application/vnd.jupyter.widget-view+json\"]').length")
    if views == 0:
        pytest.skip("this chapter saves no ipywidgets")
    chapter.wait_for(f"document.querySelectorAll('.jupyter-widgets.widget-inline-hbox, .widget-box,"
                     f" .jupyter-widgets').length >= {views}")

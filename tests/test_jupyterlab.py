"""A chapter as a self-study reader meets it: a real JupyterLab server, Run All, and a real browser.

A local, offline JupyterLab (with jupyterlab-myst) serves a copy of the chapter; headless Chromium, driven
by Playwright, opens it, runs every cell, and checks that no cell fails or writes to stderr, that the
prose is rendered MyST with the numbers filled in (no raw ``{eval}``, ``{cite}`` or ``:::{`` markup), that
solutions are collapsed, and that moving a control of the live explorer changes its picture; then it
switches to the dark theme, checks that the explorer's picture sits on a light card, and saves
screenshots under ``_build/screenshots/``. ``COMPANION_SKIP_BROWSER=1`` skips it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_browser import SCREENSHOTS

from book_build import ROOT

CHAPTER = "ch01_group_rl.ipynb"  # prose numbers, a proposition, exercises with solutions, a live explorer
RUN_ALL_SECONDS = 300
LAB_SETTINGS = {
    # no news or update checks: the machine is offline
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
    # every cell in the page, not only those scrolled into view, so the whole chapter can be read
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

pytestmark = pytest.mark.skipif(os.environ.get("COMPANION_SKIP_BROWSER") == "1",
                                reason="COMPANION_SKIP_BROWSER=1")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_settings(folder: Path) -> None:
    for name, values in LAB_SETTINGS.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def jupyterlab() -> Iterator[str]:
    """A JupyterLab server on a copy of the chapter; yields the URL that opens it."""
    home = Path(tempfile.mkdtemp(prefix="companion-lab-"))
    notebooks = home / "book"
    notebooks.mkdir()
    shutil.copy(ROOT / "book" / CHAPTER, notebooks / CHAPTER)
    write_settings(home / "settings")
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("COMPANION_BOOK_BUILD", "PYTEST_CURRENT_TEST")}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--allow-root",
               f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.token={token}",
               f"--ServerApp.root_dir={notebooks}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None"]
    log = (home / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"jupyter lab exited:\n{(home / 'server.log').read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "jupyter lab did not start within 60 s"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/lab/tree/{CHAPTER}?token={token}&reset"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def notebook(jupyterlab: str, chromium: Any) -> Iterator[Any]:
    """The chapter open in JupyterLab (in the session's Chromium), with every cell run."""
    page = chromium.new_page()
    page.goto(jupyterlab)
    page.wait_for_function("() => window.jupyterapp && jupyterapp.shell.currentWidget"
                           " && jupyterapp.shell.currentWidget.sessionContext"
                           " && jupyterapp.shell.currentWidget.sessionContext.session"
                           " && jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=120_000)
    page.evaluate("jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(ALL_CELLS_RAN, timeout=RUN_ALL_SECONDS * 1000, polling=1000)
    page.wait_for_timeout(1500)  # the last markdown cells render their expressions
    yield page
    page.close()


# every code cell has an execution count and the kernel is idle
ALL_CELLS_RAN = """() => {
    const panel = jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets.filter(c => c.model.type === 'code');
    const status = panel.sessionContext.session.kernel.status;
    return status === 'idle' && cells.every(c => c.model.executionCount !== null);
}"""


def test_every_cell_runs_without_error_or_stderr(notebook: Any):
    problems = notebook.evaluate("""() => {
        const found = [];
        document.querySelectorAll('.jp-OutputArea-output').forEach(o => {
            const mime = o.getAttribute('data-mime-type') || '';
            if (mime.includes('stderr') || mime.includes('error')) { found.push(o.innerText.slice(0, 300)); }
            if (o.innerText.includes('Error displaying widget')) { found.push(o.innerText.slice(0, 300)); }
        });
        return found;
    }""")
    assert problems == []


def test_prose_is_rendered_myst_with_the_numbers_filled_in(notebook: Any):
    state = notebook.evaluate("""() => {
        const prose = [...document.querySelectorAll('.jp-MarkdownCell')].map(e => e.innerText).join('\\n');
        return {raw: ['{eval}', '{cite}', ':::{', '{glue', 'f"{'].filter(m => prose.includes(m)),
                errors: document.querySelectorAll('.myst-RenderedExpressionError').length,
                proofs: document.querySelectorAll('.jp-MarkdownCell .proof, .jp-MarkdownCell aside').length,
                length: prose.length};
    }""")
    assert state["length"] > 5000, "the markdown cells did not render"
    assert state["raw"] == [], f"raw MyST markup in the rendered prose: {state['raw']}"
    assert state["errors"] == 0, "an inline {eval} expression failed"
    uniform = notebook.evaluate("""() => [...document.querySelectorAll('.jp-MarkdownCell')]
        .map(e => e.innerText).find(t => t.includes("expected reward is")) || ''""")
    assert any(ch.isdigit() for ch in uniform.split("expected reward is", 1)[1][:8]), uniform[:200]


def test_solutions_are_collapsed(notebook: Any):
    solutions = notebook.evaluate("""() => [...document.querySelectorAll('.jp-MarkdownCell details')]
        .filter(d => d.innerText.includes('Solution')).map(d => d.open)""")
    assert solutions, "no solution dropdowns rendered"
    assert not any(solutions), "a solution is open"


def explorer_image(notebook: Any) -> str:
    return notebook.evaluate("""() => {
        const area = [...document.querySelectorAll('.jp-OutputArea')]
            .find(a => a.querySelector('.cpx-title') && a.querySelector('.widget-dropdown, .widget-hslider'));
        const img = area && area.querySelector('.jp-RenderedImage img');
        return img ? img.src : '';
    }""")


def test_explorer_title_controls_and_picture_respond(notebook: Any):
    before = explorer_image(notebook)
    assert before.startswith("data:image/png"), "the live explorer shows no picture"
    select = notebook.locator(".jp-OutputArea:has(.cpx-title) .widget-dropdown select").first
    select.scroll_into_view_if_needed()
    labels = select.evaluate("s => [...s.options].map(o => o.textContent)")
    current = select.evaluate("s => s.options[s.selectedIndex].textContent")
    select.select_option(label=next(label for label in labels if label != current))
    deadline = time.monotonic() + 120
    while explorer_image(notebook) == before:
        assert time.monotonic() < deadline, "moving a control did not change the explorer's picture"
        time.sleep(0.5)
    description = notebook.evaluate("""() => [...document.querySelectorAll(
        '.jp-OutputArea:has(.cpx-title) .widget-label')]
        .map(l => [l.scrollWidth, l.clientWidth, l.innerText])""")
    assert description and all(scroll <= client + 1 for scroll, client, _ in description), description
    tracks = notebook.evaluate("""() => [...document.querySelectorAll(
        '.jp-OutputArea:has(.cpx-title) .widget-hslider .slider-container')].map(t => t.clientWidth)""")
    assert tracks and min(tracks) > 100, f"slider tracks too narrow to use: {tracks} px"


def test_dark_theme_gives_pictures_a_light_card_and_screenshots(notebook: Any):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    notebook.locator(".jp-OutputArea:has(.cpx-title)").first.scroll_into_view_if_needed()
    notebook.screenshot(path=SCREENSHOTS / "jupyterlab_light.png")
    notebook.evaluate("jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    notebook.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    notebook.wait_for_timeout(500)
    card = notebook.evaluate("""() => {
        const img = document.querySelector('.jp-OutputArea:has(.cpx-title) .jp-RenderedImage img');
        return img ? getComputedStyle(img).backgroundColor : '';
    }""")
    assert card not in ("", "rgba(0, 0, 0, 0)", "transparent"), "the explorer's picture has no light card"
    notebook.screenshot(path=SCREENSHOTS / "jupyterlab_dark.png")
    assert (SCREENSHOTS / "jupyterlab_dark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

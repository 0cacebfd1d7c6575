"""Shared test set-up: one torch thread (tiny models are fastest that way on a shared box), fixed seeds,
and the built book (once per session, for the tests that read the executed chapters or open the pages)."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from book_build import build_book

torch.set_num_threads(int(os.environ.get("COMPANION_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def built_book() -> Path:
    """``_build/html`` of a successful ``jupyter-book build . -W`` newer than every source."""
    return build_book()


# ---------------------------------------------------------------------------------------------------------
# one headless Chromium per session, shared by the browser tests (Playwright allows one sync session)

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-quic", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--mute-audio", "--hide-scrollbars",
]
VIEWPORT = {"width": 1280, "height": 900}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed: run .ci/install (apt-get install chromium)"
    return path


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium with an empty profile, driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="companion-chromium-")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)

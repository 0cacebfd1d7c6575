"""The HTML book, built once per test session and shared by every test that needs it.

``jupyter-book build . -W --keep-going`` executes every chapter once (``execute_notebooks: inline``) and
writes the executed notebooks to ``_build/jupyter_execute/book/``: tests/test_chapters.py checks those
(stored check outputs, stderr, silent cells) instead of executing the chapters a second time with nbval,
and tests/test_browser.py opens the pages. The build is skipped when the last successful build is newer
than every source.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
HTML_DIR = BUILD / "html"
EXECUTED_DIR = BUILD / "jupyter_execute" / "book"
BUILD_OK = BUILD / ".companion-build-ok"  # written after a build that succeeded


def book_sources() -> list[Path]:
    sources = [ROOT / "_config.yml", ROOT / "_toc.yml"]
    skip = {"_vendor", "__pycache__", ".ipynb_checkpoints"}
    sources += [p for p in (ROOT / "book").rglob("*") if p.is_file() and not skip & set(p.parts)]
    sources += [p for p in (ROOT / "companion").rglob("*.py") if "__pycache__" not in p.parts]
    return sources


def build_is_fresh() -> bool:
    if not BUILD_OK.exists():
        return False
    built = BUILD_OK.stat().st_mtime  # a build that failed (--keep-going still writes pages) leaves no stamp
    return all(source.stat().st_mtime < built for source in book_sources())


def build_book() -> Path:
    """The built HTML directory; builds the book when the last build is older than a source."""
    assert (ROOT / "book" / "_vendor" / "VERSIONS").exists(), "vendored assets missing: run .ci/vendor-assets"
    if not build_is_fresh():
        BUILD_OK.unlink(missing_ok=True)
        command = [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "-W", "--keep-going"]
        # the chapters' kernels must not think they run under pytest: their progress lines (silent under
        # pytest) are what test_no_cell_runs_silently_for_long reads
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600, env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"the book build failed:\n{output[-6000:]}"
        assert "build succeeded" in output
        BUILD_OK.touch()
    return HTML_DIR

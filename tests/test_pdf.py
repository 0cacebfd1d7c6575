"""The whole book as one PDF (book/_ext/pdf.py): one page range per page of the table of contents, in
order, with typeset math (no raw TeX left in the text) and the figures. Read with poppler's pdftotext."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from book_build import ROOT

sys.path.insert(0, str(ROOT / "book" / "_ext"))

import pdf

pytestmark = pytest.mark.skipif(os.environ.get("COMPANION_SKIP_BROWSER") == "1",
                                reason="COMPANION_SKIP_BROWSER=1 (printing uses the browser)")
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\frac|\\begin\{|\\sum|\\mathbb")


@pytest.fixture(scope="module")
def book_pdf(built_book: Path, tmp_path_factory) -> Path:
    assert shutil.which("pdftotext"), "poppler-utils is not installed: run .ci/install"
    out = tmp_path_factory.mktemp("pdf") / "book.pdf"
    subprocess.run([sys.executable, str(ROOT / "book" / "_ext" / "pdf.py"), "--out", str(out)], check=True,
                   capture_output=True, text=True, timeout=600)
    return out


def page_texts(path: Path) -> list[str]:
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout
    return text.split("\f")[:-1]


def heading(built_book: Path, page: str) -> str:
    """The first heading of a built page, as its text (section numbers included)."""
    article = pdf.article((built_book / f"{page}.html").read_text())
    first = re.search(r"<h1[^>]*>(.*?)</h1>", article, re.S).group(1)
    return " ".join(re.sub(r"<[^>]+>", "", first).replace("#", "").split())


def test_every_page_of_the_book_starts_a_pdf_page_in_order(built_book: Path, book_pdf: Path):
    starts = [" ".join(text.split())[:200] for text in page_texts(book_pdf)]
    found = []
    for page in pdf.toc_pages(ROOT / "_toc.yml"):
        title = heading(built_book, page)[:30]
        found.append(next((i for i, start in enumerate(starts) if start.startswith(title)), None))
    assert None not in found, dict(zip(pdf.toc_pages(ROOT / "_toc.yml"), found, strict=True))
    assert found == sorted(found) and len(set(found)) == len(found)


def test_math_is_typeset_and_figures_are_there(book_pdf: Path):
    text = "\f".join(page_texts(book_pdf))
    assert RAW_TEX.findall(text) == [], "raw TeX in the PDF"
    assert "Σ" in text or "∑" in text  # typeset sums
    images = subprocess.run(["pdfimages", "-list", str(book_pdf)], check=True, capture_output=True,
                            text=True).stdout.splitlines()[2:]
    figures = len(list((ROOT / "_build" / "html" / "_images").glob("*.png")))
    assert len(images) >= figures > 0

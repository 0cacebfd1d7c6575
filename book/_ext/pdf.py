"""The whole book as one PDF, printed by headless Chromium from the built HTML (no LaTeX toolchain).

Run after ``jupyter-book build``::

    .venv/bin/python book/_ext/pdf.py            # writes _build/pdf/book.pdf

Every page of ``_toc.yml``, in order, is taken from ``_build/html`` (its article, with the executed
figures and the static explorers), joined into one print page (``_build/html/print/book.html``) that
loads the book's own stylesheets and the vendored MathJax, and printed to A4 by Chromium (Playwright
driving Debian's ``chromium``, offline). Each page of the book starts a new PDF page; navigation, the
explorers' controls and the notes under them are hidden (an explorer prints its first frame); code wraps
instead of being cut.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRINT_CSS = """
@page { size: A4; margin: 16mm 14mm 18mm 14mm; }
html, body { background: white !important; }
body { font-size: 10.5pt; }
.print-title { text-align: center; padding-top: 30vh; break-after: page; }
.print-page { break-before: page; }
.cpx-controls, .cpx-note, .copybtn, .toggle-button, .headerlink, .prev-next-area,
.jupyter-widgets .widget-slider, .jupyter-widgets .widget-dropdown { display: none !important; }
pre { white-space: pre-wrap !important; word-break: break-word; font-size: 8.5pt !important; }
img { max-width: 100% !important; break-inside: avoid; }
div.cell, .admonition, .proof, table { break-inside: avoid; }
h1, h2, h3 { break-after: avoid; }
mjx-container[display="true"] { overflow: visible !important; }
"""


def toc_pages(toc_file: Path) -> list[str]:
    """The files of ``_toc.yml`` in reading order (root first), without suffix."""
    toc = yaml.safe_load(toc_file.read_text())
    pages = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key, []))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return pages


def article(page_html: str) -> str:
    """The main content of a built page: the inside of its ``<article class="bd-article">``."""
    start = page_html.index('<article class="bd-article">') + len('<article class="bd-article">')
    return page_html[start:page_html.index("</article>", start)]


def head_links(page_html: str) -> str:
    """The page's stylesheets and its MathJax configuration and script."""
    head = page_html[page_html.index("<head>"):page_html.index("</head>")]
    styles = [link for link in re.findall(r"<link[^>]*>", head) if 'rel="stylesheet"' in link]
    scripts = re.findall(r"<script[^>]*>.*?</script>", head, re.S)
    maths = [script for script in scripts if "mathjax" in script.lower()]
    return "\n".join(styles + maths)


def print_page(html_dir: Path, pages: list[str], title: str) -> str:
    """One HTML page holding every book page in order (all built pages sit one folder deep, like it)."""
    sources = {page: (html_dir / f"{page}.html").read_text() for page in pages}
    body = "".join(f'<section class="print-page" data-page="{html.escape(page)}">{article(text)}</section>'
                   for page, text in sources.items())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"/><title>{html.escape(title)}</title>'
            f"{head_links(sources[pages[0]])}<style>{PRINT_CSS}</style></head>"
            f'<body><div class="print-title"><h1>{html.escape(title)}</h1></div>{body}</body></html>')


def write_pdf(print_html: Path, pdf: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium is not installed: run .ci/install (apt-get install chromium)")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=flags)
        page = browser.new_page()
        page.goto(print_html.as_uri())
        page.wait_for_function("!!(window.MathJax && MathJax.startup && MathJax.startup.promise)")
        page.evaluate("MathJax.startup.promise.then(() => document.fonts.ready).then(() => true)")
        page.wait_for_function("[...document.images].every(i => i.complete)")
        page.emulate_media(media="print")
        pdf.parent.mkdir(parents=True, exist_ok=True)
        page.pdf(path=str(pdf), format="A4", print_background=True, display_header_footer=True,
                 header_template="<span></span>",
                 footer_template='<div style="font-size:8px;width:100%;text-align:center">'
                                 '<span class="pageNumber"></span></div>')
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built HTML book")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "book.pdf",
                        help="the PDF to write")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        raise SystemExit(f"no built book in {args.html}: run `jupyter-book build . -W` first")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    print_html = args.html / "print" / "book.html"
    print_html.parent.mkdir(exist_ok=True)
    print_html.write_text(print_page(args.html, toc_pages(ROOT / "_toc.yml"), config["title"]))
    write_pdf(print_html, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lecture slides generated from the chapters: one reveal.js deck per chapter, offline.

Authors choose what goes on a slide in the notebook itself, with Jupyter's standard cell metadata
``{"slideshow": {"slide_type": ...}}`` (JupyterLab's property inspector sets it):

- ``"slide"`` starts a new slide with the cell, ``"subslide"`` a new slide below the current one,
  ``"fragment"`` adds the cell to the current slide on the next click, ``"-"`` adds it at once,
  ``"notes"`` makes it speaker notes (press ``s`` in the deck);
- cells with no slide type, or ``"skip"``, are not on the slides.

Markdown cells are shown as prose, or, tagged ``slide-boxes``, only their headings, boxes and displayed
equations (a long explanation around a proposition becomes the proposition). A slide that starts without a
heading (a figure, a printed check) is titled with the heading of the chapter section it comes from. MyST
reads as on the page: boxes as boxes, ``{eval}`` numbers with the values the book build computed,
citations as author-year, math typeset by the vendored MathJax; instructor notes (``:class:
instructor-note`` admonitions) become speaker notes, and a markdown cell that holds only an instructor
note needs no slide type: its note goes to the speaker notes of the slide that the next slide cell lands
on (the section's first slide); exercises' solutions are left out. Code cells show their outputs from the
executed notebook (figures, printed checks, static explorers), not their code, unless the cell is tagged
``slide-code``.

The decks are written after the build to ``slides/<chapter>.html`` in the HTML output; reveal.js and
MathJax load from ``_static`` (``.ci/vendor-assets``), so a deck works from ``file://`` with no network.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

SLIDE_TYPES = ("slide", "subslide", "fragment", "-", "notes")
DIRECTIVE = re.compile(  # a MyST directive in a colon or backtick fence, up to its closing fence
    r"^(?P<fence>:{3,}|`{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<argument>[^\n]*)\n"
    r"(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>[^\n]*)\n", re.M)
ROLE = re.compile(r"\{(?P<name>[\w:-]+)\}`(?P<text>[^`]+)`")
BOX_TITLES = {"prf:proposition": "Proposition", "prf:theorem": "Theorem", "prf:definition": "Definition",
              "prf:lemma": "Lemma", "prf:corollary": "Corollary", "exercise": "Exercise", "note": "Note",
              "tip": "Tip", "important": "Important", "warning": "Warning", "admonition": ""}
INSTRUCTOR_CLASS = "instructor-note"


# ---------------------------------------------------------------------------------------------------------
# what goes on the slides


def slide_type(cell: Any) -> str | None:
    """The cell's slide type, or None when it is not on the slides."""
    kind = cell.get("metadata", {}).get("slideshow", {}).get("slide_type")
    if kind in (None, "skip"):
        return None
    if kind not in SLIDE_TYPES:
        raise ValueError(f"slide_type must be one of {(*SLIDE_TYPES, 'skip')}, got {kind!r}")
    return kind


def has_slides(notebook: Any) -> bool:
    return any(slide_type(cell) for cell in notebook.cells)


def is_instructor_note(cell: Any) -> bool:
    """A markdown cell that opens with an ``instructor-note`` admonition (its first line and options)."""
    source = cell.get("source", "").lstrip()
    header = source.split("\n\n")[0]
    opens = source.startswith((":::{admonition}", "::::{admonition}"))
    return cell.get("cell_type") == "markdown" and opens and INSTRUCTOR_CLASS in header


# ---------------------------------------------------------------------------------------------------------
# markdown cells: MyST -> HTML for reveal.js


def markdown_renderer() -> Callable[[str], str]:
    """CommonMark with tables and $-math (left as \\(...\\) / \\[...\\] for MathJax)."""
    from markdown_it import MarkdownIt
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    def math(content: str, config: dict[str, Any]) -> str:
        if config.get("display_mode"):
            return f'<div class="math">\\[{html.escape(content)}\\]</div>'
        return f"\\({html.escape(content)}\\)"

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.use(dollarmath_plugin, double_inline=True, renderer=math)
    return md.render


def author_year(entry: Any) -> str:
    people = entry.persons.get("author", [])
    if not people:
        return entry.fields.get("title", "?")
    first = " ".join(people[0].last_names) or str(people[0])
    names = first if len(people) == 1 else f"{first} and {' '.join(people[1].last_names)}" \
        if len(people) == 2 else f"{first} et al."
    return f"{names} {entry.fields.get('year', '')}".strip()


def citations(bib_file: Path) -> dict[str, str]:
    """Bibliography key -> "Author Year"."""
    from pybtex.database import parse_file

    return {key: author_year(entry) for key, entry in parse_file(str(bib_file)).entries.items()}


def replace_roles(text: str, evals: dict[str, str], cites: dict[str, str]) -> str:
    """Inline MyST roles as plain markdown: values for {eval}, author-year for {cite}, text for refs."""

    def one(match: re.Match[str]) -> str:
        name, body = match.group("name"), match.group("text")
        if name == "eval":
            if body not in evals:
                raise KeyError(f"no value recorded for {{eval}}`{body}` (was the chapter executed?)")
            return html.escape(evals[body])
        if name.startswith("cite"):
            names = [cites.get(key.strip(), key.strip()) for key in body.split(",")]
            return "; ".join(names) if name == "cite:t" else f"({'; '.join(names)})"
        if name == "math":
            return f"${body}$"
        labelled = re.match(r"(?P<text>.*?)\s*<[^>]+>$", body, re.S)
        return labelled.group("text") if labelled else body

    return ROLE.sub(one, text)


def render_directives(text: str, render: Callable[[str], str], notes: list[str]) -> str:
    """MyST boxes as HTML boxes; instructor notes are moved to ``notes``; solutions and labels dropped."""

    def one(match: re.Match[str]) -> str:
        name, argument, body = match.group("name"), match.group("argument").strip(), match.group("body")
        options = {m.group("key"): m.group("value").strip() for m in OPTION.finditer(body)}
        body = OPTION.sub("", body).strip("\n")
        inner = render_directives(body, render, notes)
        if name == "solution":
            return ""
        if INSTRUCTOR_CLASS in options.get("class", "").split():
            notes.append(f"<p><b>{html.escape(argument)}</b></p>{render(inner)}")
            return ""
        if name in ("math", "amsmath"):
            return f'\n<div class="math">\\[{html.escape(body)}\\]</div>\n'
        heading = BOX_TITLES.get(name, name)
        title = f"{heading} ({argument})" if heading and argument else heading or argument
        return (f'\n<div class="deck-box deck-{html.escape(name.replace(":", "-"))}">'
                f'<p class="deck-box-title">{html.escape(title)}</p>\n\n{render(inner)}</div>\n')

    return DIRECTIVE.sub(one, text)


ESSENTIAL = (re.compile(r"^#{1,6} [^\n]*$", re.M), DIRECTIVE, re.compile(r"^\$\$.*?\$\$[ \t]*$", re.M | re.S))


def essentials(source: str) -> str:
    """Only the headings, the directives (boxes) and the displayed equations of a markdown cell, in order
    (an equation inside a box stays in its box)."""
    found = sorted((m.start(), m.end()) for pattern in ESSENTIAL for m in pattern.finditer(source))
    kept: list[tuple[int, int]] = []
    for start, end in found:
        if not kept or start >= kept[-1][1]:
            kept.append((start, end))
    return "\n\n".join(source[start:end] for start, end in kept)


def markdown_html(source: str, evals: dict[str, str], cites: dict[str, str], render: Callable[[str], str],
                  notes: list[str], boxes_only: bool = False) -> str:
    source = re.sub(r"^\([\w-]+\)=\s*$", "", source, flags=re.M)  # MyST targets
    if boxes_only:
        source = essentials(source)
    return render(render_directives(replace_roles(source, evals, cites), render, notes))


# ---------------------------------------------------------------------------------------------------------
# code cells: their outputs


def output_html(output: Any) -> str:
    """One output of the executed notebook as HTML (progress lines and stderr are left out)."""
    if output.get("output_type") == "stream":
        return "" if output.get("name") == "stderr" else f"<pre>{html.escape(output.get('text', ''))}</pre>"
    data = output.get("data", {})
    if "image/png" in data:
        alt = html.escape(data.get("text/plain", "figure"))
        return f'<img class="deck-figure" alt="{alt}" src="data:image/png;base64,{data["image/png"]}"/>'
    if data.get("text/html", "").strip():
        return f'<div class="deck-html">{data["text/html"]}</div>'
    if "text/plain" in data and output.get("output_type") == "execute_result":
        return f"<pre>{html.escape(data['text/plain'])}</pre>"
    return ""


def code_html(cell: Any) -> str:
    parts = [output_html(output) for output in cell.get("outputs", [])]
    if "slide-code" in cell.get("metadata", {}).get("tags", []):
        parts.insert(0, f'<pre class="deck-code"><code>{html.escape(cell.source)}</code></pre>')
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------
# the deck


HEADING = re.compile(r"^(?P<level>#{1,3})\s+(?P<text>.+?)\s*$", re.M)
FENCE = re.compile(r"^(`{3,}|:{3,}).*?^\1[ \t]*$", re.M | re.S)  # directives and code blocks


def section_title(heading: dict[int, str]) -> str:
    """'Section' or 'Section · Subsection' from the last headings seen at levels 2 and 3."""
    return " · ".join(heading[level] for level in (2, 3) if heading.get(level)) or heading.get(1, "")


def read_headings(source: str, heading: dict[int, str]) -> None:
    """Update ``heading`` (level -> text) with the markdown headings of ``source``, outside fences."""
    for match in HEADING.finditer(FENCE.sub("", source)):
        level = len(match.group("level"))
        heading[level] = match.group("text")
        for deeper in range(level + 1, 4):
            heading.pop(deeper, None)


def slides(notebook: Any, cites: dict[str, str]) -> list[list[str]]:
    """Horizontal slides, each a list of vertical slides, each the HTML of its content."""
    render = markdown_renderer()
    evals = notebook.metadata.get("companion_evals", {})
    deck: list[list[str]] = []
    waiting: list[str] = []  # notes of instructor-note cells, for the slide of the next slide cell
    heading: dict[int, str] = {}  # the section a cell belongs to, for slides that start untitled
    for cell in notebook.cells:
        context = section_title(heading)
        if cell.cell_type == "markdown":
            read_headings(cell.source, heading)
        kind = slide_type(cell)
        if kind is None:
            if "slideshow" not in cell.get("metadata", {}) and is_instructor_note(cell):
                markdown_html(cell.source, evals, cites, render, waiting)
            continue
        notes, waiting = waiting, []
        boxes_only = "slide-boxes" in cell.get("metadata", {}).get("tags", [])
        content = markdown_html(cell.source, evals, cites, render, notes, boxes_only) \
            if cell.cell_type == "markdown" else code_html(cell)
        if kind == "notes":
            content, notes = "", [note for note in (content, *notes) if note]
        if kind == "fragment":
            content = f'<div class="fragment">{content}</div>'
        starts = kind in ("slide", "subslide") or not deck
        if starts and context and not re.match(r"\s*<h[1-3][ >]", content):
            title = render(replace_roles(context, evals, cites)).strip()
            title = title.removeprefix("<p>").removesuffix("</p>")
            content = f'<h3 class="deck-section">{title}</h3>{content}'
        content += "".join(f'<aside class="notes">{note}</aside>' for note in notes)
        if kind == "slide" or not deck:
            deck.append([content])
        elif kind == "subslide":
            deck[-1].append(content)
        else:
            deck[-1][-1] += content
    if waiting and deck:  # notes after the last slide cell
        deck[-1][-1] += "".join(f'<aside class="notes">{note}</aside>' for note in waiting)
    return deck


def chapter_title(notebook: Any) -> str:
    for cell in notebook.cells:
        heading = re.search(r"^#\s+(.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if heading:
            return heading.group(1).strip()
    return "Slides"


def deck_html(title: str, book_title: str, chapter_href: str, deck: list[list[str]], static: str) -> str:
    """A self-contained reveal.js page; ``static`` is the relative path to the book's ``_static``."""
    cover = (f'<section class="deck-cover"><h1>{html.escape(title)}</h1><p>{html.escape(book_title)}</p>'
             f'<p><a href="{html.escape(chapter_href)}">Read the chapter</a></p></section>')
    sections = "".join(
        "<section>" + "".join(f"<section>{part}</section>" for part in stack) + "</section>"
        if len(stack) > 1 else f"<section>{stack[0]}</section>"
        for stack in deck)
    config = {"hash": True, "slideNumber": True, "width": 1280, "height": 800, "margin": 0.04,
              "mathjax3": {"mathjax": f"{static}/mathjax/tex-mml-chtml.js",
                           "tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"/>
<title>{html.escape(title)}: slides</title>
<link rel="stylesheet" href="{static}/reveal/reveal.css"/>
<link rel="stylesheet" href="{static}/reveal/theme/white.css"/>
<link rel="stylesheet" href="{static}/companion-slides.css"/>
</head><body><div class="reveal"><div class="slides">{cover}{sections}</div></div>
<script src="{static}/reveal/reveal.js"></script>
<script src="{static}/reveal/plugin/math/math.js"></script>
<script src="{static}/reveal/plugin/notes/notes.js"></script>
<script>Reveal.initialize(Object.assign({json.dumps(config)},
  {{plugins: [RevealMath.MathJax3, RevealNotes]}}));</script>
</body></html>
"""

"""book/_ext/slides.py: which cells go on the slides, how MyST reads on a slide, and the deck page."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import slides  # noqa: E402


def cell(kind: str, source: str, slide: str | None = None, **extra) -> nbformat.NotebookNode:
    make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
    made = make(source, **extra)
    if slide:
        made.metadata["slideshow"] = {"slide_type": slide}
    return made


def notebook(*cells, evals=None) -> nbformat.NotebookNode:
    made = nbformat.v4.new_notebook()
    made.cells = list(cells)
    made.metadata["companion_evals"] = evals or {}
    return made


def test_only_marked_cells_are_on_the_slides_in_their_structure():
    deck = slides.slides(notebook(
        cell("markdown", "# Title", "slide"),
        cell("markdown", "not on the slides"),
        cell("markdown", "skipped too", "skip"),
        cell("markdown", "same slide", "-"),
        cell("markdown", "later on this slide", "fragment"),
        cell("markdown", "below", "subslide"),
        cell("markdown", "say this", "notes"),
        cell("markdown", "next", "slide"),
    ), {})
    assert len(deck) == 2 and len(deck[0]) == 2
    first, below = deck[0]
    assert "Title" in first and "same slide" in first and "not on" not in first and "skipped" not in first
    assert '<div class="fragment"><p>later on this slide</p>' in first
    assert below.startswith('<h3 class="deck-section">Title</h3><p>below</p>')  # titled by its section
    assert '<aside class="notes"><p>say this</p>' in below
    assert "next" in deck[1][0]


def test_myst_reads_as_slides_numbers_citations_boxes_notes():
    source = ("The reward rises to {eval}`f\"{end:.2f}\"` {cite}`fontana2026hidden`; "
              "see {ref}`the claim <c1>`.\n\n"
              ":::{prf:proposition} Shared prefixes\n:label: c1\n\n$W = \\sum_i \\omega_i A_i$\n:::\n\n"
              ":::{admonition} Timing\n:class: instructor-note\n\n10 minutes.\n:::\n\n"
              ":::{solution} ex\n:class: dropdown\n\nSECRET\n:::\n\n$$a = b$$\n")
    deck = slides.slides(notebook(cell("markdown", source, "slide"), evals={'f"{end:.2f}"': "0.91"}),
                         {"fontana2026hidden": "Fontana et al. 2026"})
    html = deck[0][0]
    assert "rises to 0.91 (Fontana et al. 2026); see the claim." in html
    assert '<p class="deck-box-title">Proposition (Shared prefixes)</p>' in html and ":label:" not in html
    assert "\\(W = \\sum_i \\omega_i A_i\\)" in html and "\\[a = b\\]" in html
    assert '<aside class="notes"><p><b>Timing</b></p><p>10 minutes.</p>' in html
    assert "SECRET" not in html and "{eval}" not in html and "{cite}" not in html


def test_a_missing_eval_value_and_an_unknown_slide_type_are_errors():
    with pytest.raises(KeyError, match="was the chapter executed"):
        slides.slides(notebook(cell("markdown", "x = {eval}`x`", "slide")), {})
    with pytest.raises(ValueError, match="slide_type"):
        slides.slides(notebook(cell("markdown", "x", "chapter")), {})


def test_code_cells_show_their_outputs_not_their_code_unless_tagged():
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "reward curve"})
    printed = nbformat.v4.new_output("stream", name="stdout", text="max |diff| = 0\n")
    noise = nbformat.v4.new_output("stream", name="stderr", text="warning\n")
    progress = nbformat.v4.new_output("display_data", data={"text/html": ""})
    plain = cell("code", "plot()", "slide", outputs=[figure, printed, noise, progress])
    shown = cell("code", "check()", "slide", outputs=[printed], metadata={"tags": ["slide-code"]})
    deck = slides.slides(notebook(plain, shown), {})
    assert deck[0][0] == ('<img class="deck-figure" alt="reward curve" src="data:image/png;base64,iVBOR"/>'
                          "<pre>max |diff| = 0\n</pre>")
    assert deck[1][0].startswith('<pre class="deck-code"><code>check()</code></pre>')


def test_citations_read_author_and_year_from_the_bibliography():
    cites = slides.citations(ROOT / "book" / "references.bib")
    assert cites["fontana2026hidden"] == "Fontana et al. 2026"
    assert cites["williams1992reinforce"] == "Williams 1992"


def test_the_deck_page_loads_reveal_and_mathjax_from_the_book():
    deck = [["<p>a</p>"], ["<p>b</p>", "<p>c</p>"]]
    page = slides.deck_html("Shared prefixes", "The book", "../book/ch03.html", deck, "../_static")
    assert page.count('src="../_static/reveal/') == 3 and "../_static/mathjax/tex-mml-chtml.js" in page
    assert "<section><section><p>b</p></section><section><p>c</p></section></section>" in page
    assert '<a href="../book/ch03.html">Read the chapter</a>' in page and "://" not in page


def test_slide_boxes_keeps_headings_boxes_and_displayed_equations_only():
    source = ("## PPO\n\nLong prose that explains.\n\n$$J = \\min(sA, \\mathrm{clip}(s)A)$$\n\n"
              "More prose.\n\n"
              ":::{prf:proposition} The clip\n:label: c\n\nInside $$x$$ too.\n:::\n\nTrailing prose.")
    boxes = cell("markdown", source, "slide", metadata={"tags": ["slide-boxes"]})
    html = slides.slides(notebook(boxes), {})[0][0]
    assert "<h2>PPO</h2>" in html and "\\[J = \\min" in html and "Proposition (The clip)" in html
    assert "prose" not in html.lower() and html.count("\\[x\\]") == 1


def test_instructor_note_cells_become_the_speaker_notes_of_the_next_slide():
    note = (":::{admonition} Teaching the clip (10 min)\n:class: instructor-note dropdown\n\n"
            "Demo {eval}`x`.\n:::")
    deck = slides.slides(notebook(
        cell("markdown", "# Title", "slide"),
        cell("markdown", note),  # no slide type: for the slide of the next slide cell
        cell("markdown", "not on the slides"),
        cell("markdown", "## The clip", "slide"),
        cell("markdown", ":::{admonition} Skipped\n:class: instructor-note\n\nNOT-SHOWN\n:::", "skip"),
        cell("markdown", ":::{admonition} A box for everyone\n\nOPEN\n:::"),
        cell("markdown", note.replace("clip", "end")),  # after the last slide cell: on the last slide
        evals={"x": "4"}), {})
    assert len(deck) == 2 and "notes" not in deck[0][0]
    clip = deck[1][0]
    assert clip.startswith("<h2>The clip</h2>")
    assert '<aside class="notes"><p><b>Teaching the clip (10 min)</b></p><p>Demo 4.</p>' in clip
    assert '<aside class="notes"><p><b>Teaching the end (10 min)</b></p>' in clip
    assert "NOT-SHOWN" not in clip and "OPEN" not in clip and "not on the slides" not in clip
    assert slides.is_instructor_note(cell("markdown", note))
    assert not slides.is_instructor_note(cell("markdown", "Text.\n\n" + note))


def test_slides_that_start_untitled_show_their_section_heading():
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "curve"})
    deck = slides.slides(notebook(
        cell("markdown", "# Chapter", "slide"),
        cell("markdown", "## Where it breaks: $\\mu$ steps\n\nProse.\n\n```python\n# not a heading\n```"),
        cell("code", "plot()", "slide", outputs=[figure]),
        cell("markdown", "### Small groups\n\nMore prose."),
        cell("code", "plot()", "subslide", outputs=[figure]),
        cell("markdown", "## Takeaways\n\n- one", "slide"),
    ), {})
    section = 'Where it breaks: <span class="math inline">\\(\\mu\\)</span> steps'
    assert deck[1][0].startswith(f'<h3 class="deck-section">{section}</h3><img')
    assert deck[1][1].startswith(f'<h3 class="deck-section">{section} · Small groups</h3><img')
    assert deck[2][0].startswith("<h2>Takeaways</h2>") and "deck-section" not in deck[2][0]

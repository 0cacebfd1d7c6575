"""Sphinx glue for the book (loaded through ``sphinx.local_extensions`` in ``_config.yml``).

1. Tells the notebook kernels they run inside the book build: ``COMPANION_BOOK_BUILD=1`` is set in this
   process's environment, which the kernels myst-nb starts inherit, so ``companion.viz.explorer``
   renders its static, kernel-free form.
   Their IPython profile logs errors only (see :func:`quiet_kernels`).
2. Editions (``COMPANION_EDITION``): ``full`` (the default: solutions collapsed, no instructor notes, also
   in the page's ``.ipynb`` download), ``student`` (no solutions: sphinx-exercise's ``hide_solutions``; no
   instructor notes) and ``instructor`` (solutions open, and the ``:class: instructor-note`` admonitions,
   open: timing, misconceptions).
3. After the build, prints how long each notebook took to execute (myst-nb's execution records).
4. Removes duplicated inline scripts from each page: Sphinx 7.4 registers an inline script added after
   the builder starts twice (once with filename ``None``, once with ``''``), and sphinx-thebe's
   ``const THEBE_JS_URL`` declared twice is a console error in every page.
5. Docstrings written as plain text ("name: description" with indented continuation lines) are made
   valid reStructuredText for autodoc by a blank line wherever indentation drops (see
   :func:`separate_dedents`), so a new module cannot break the ``-W`` build with layout alone; and the
   vertical bars of maths such as |o_i| are escaped (:func:`escape_bars`), since reStructuredText reads
   ``|name|`` as a substitution.
6. A two-line MathJax 2 shim for saved ipywidgets: the widget controls bundled in the HTML manager
   typeset labels with ``MathJax.Hub.Queue`` (MathJax 2), which MathJax 3 lacks.
7. The ``companion-api`` directive (used in ``book/api.rst``): one section with ``automodule`` per module
   of ``companion/`` that exists at build time, so the API page follows the package as it grows.
8. Cell timings: myst-nb's inline executor records none; :func:`record_cell_timings` turns nbclient's
   ``record_timing`` on, so the executed notebooks in ``_build/jupyter_execute`` carry each cell's
   start and end (tests/test_chapters.py checks with them that no cell runs silently for long).
9. Every build executes every chapter: Sphinx re-reads only sources whose files changed, but a chapter's
   results also depend on the package it imports, so :func:`reread_chapters` marks every notebook
   outdated.
10. Slides: the values of the prose's ``{eval}`` expressions are recorded in the executed notebook's
    metadata (``companion_evals``), and after the build ``slides.py`` writes one reveal.js deck per chapter
    that marks slide cells, to ``slides/<chapter>.html``; each chapter's header links its deck.
11. Student notebooks: every chapter is also written without its solutions to ``student/<chapter>.ipynb``
   in the HTML output, and each chapter's download menu links it. In the student edition the page's own
   ``.ipynb`` download is that notebook too.
12. The repository URL: ``COMPANION_REPOSITORY_URL`` (e.g. ``https://github.com/OWNER/REPO``) is the one
    setting behind the repository, issues and launch (Colab, Binder) buttons; without it they are hidden
    (see :func:`choose_repository`). With it, a chapter whose Colab install cell installs ``companion``
    from another URL is a warning (``book/_ext/set_repository_url.py`` rewrites those cells).
13. Accessibility after the build (:func:`accessible_markup`): the theme's and myst-nb's markup gives three
    controls an ``aria-label`` that does not contain their visible text (WCAG 2.5.3, axe-core's
    label-content-name-mismatch), and tables, which may scroll sideways, take keyboard focus.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

BOOK_BUILD_ENV = "COMPANION_BOOK_BUILD"  # same name as companion.viz.BOOK_BUILD_ENV
EDITION_ENV = "COMPANION_EDITION"
EDITIONS = ("full", "student", "instructor")
INSTRUCTOR_NOTE = "instructor-note"

logger = logging.getLogger(__name__)


def choose_edition(app: Sphinx, config: Config) -> None:
    """Read ``COMPANION_EDITION``; the student edition hides the solutions."""
    edition = os.environ.get(EDITION_ENV, "full").strip().lower() or "full"
    if edition not in EDITIONS:
        raise ConfigError(f"{EDITION_ENV} must be one of {EDITIONS}, got {edition!r}")
    config.companion_edition = edition  # a config value: changing the edition re-reads every page
    if edition == "student":
        config.hide_solutions = True
    shown = "hidden" if config.hide_solutions else "open" if edition == "instructor" else "shown"
    notes = "shown" if edition == "instructor" else "hidden"
    logger.info(f"[companion] edition: {edition} (solutions {shown}, instructor notes {notes})")


def apply_edition(app: Sphinx, doctree: nodes.document) -> None:
    """Instructor notes only in the instructor edition, which also opens the solutions' dropdowns and the
    notes' own (a note is a dropdown so that it stays folded in JupyterLab)."""
    from sphinx_exercise.nodes import solution_node

    instructor = app.config.companion_edition == "instructor"
    for note in list(doctree.findall(nodes.admonition)):
        if INSTRUCTOR_NOTE not in note["classes"]:
            continue
        if instructor:
            note["classes"] = [c for c in note["classes"] if c != "dropdown"]
        else:
            note.parent.remove(note)
    if instructor:
        for solution in doctree.findall(solution_node):
            solution["classes"] = [c for c in solution["classes"] if c != "dropdown"]


def execution_rows(app: Sphinx) -> list[tuple[str, float | None, str, bool]]:
    """(docname, seconds, method, succeeded) for every notebook myst-nb has execution data for."""
    from myst_nb.sphinx_ import NbMetadataCollector

    rows = []
    for docname in sorted(NbMetadataCollector.get_doc_data(app.env)):
        data: dict[str, Any] | None = NbMetadataCollector.get_exec_data(app.env, docname)
        if data:
            rows.append((docname, data.get("runtime"), str(data.get("method")), bool(data.get("succeeded"))))
    return rows


def report_execution_times(app: Sphinx, exception: Exception | None) -> None:
    """Print a per-notebook execution table at the end of the build."""
    rows = execution_rows(app)
    if not rows:
        return
    width = max(len(name) for name, *_ in rows)
    lines = [f"{'notebook':<{width}}  {'seconds':>8}  method  ok"]
    total = 0.0
    for name, seconds, method, ok in rows:
        total += seconds or 0.0
        shown = f"{seconds:8.1f}" if seconds is not None else "       -"
        lines.append(f"{name:<{width}}  {shown}  {method:<6}  {'yes' if ok else 'NO'}")
    lines.append(f"{'total':<{width}}  {total:8.1f}")
    logger.info("[companion] notebook execution times:\n" + "\n".join(lines), color="green")


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any],
                           doctree: Any) -> None:
    """Keep the first of several identical script entries (same file or same inline body)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        filename = getattr(script, "filename", None) or ""
        key = (filename, tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def separate_dedents(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Insert a blank line where a non-blank line is less indented than the non-blank line before it, and
    before a line that opens an indented block right after a line of its own indentation.

    reStructuredText reads "term\n    indented text\nnext" as a definition list that "ends without a
    blank line", and "a\nb\n    indented" as a paragraph followed by an "unexpected indentation" (each an
    error under -W). A blank line there keeps the meaning and the layout: every "name: text" line that
    has an indented continuation becomes its own definition-list item.
    """
    indents = [len(line) - len(line.lstrip()) if line.strip() else None for line in lines]
    fixed: list[str] = []
    previous: int | None = None
    for i, line in enumerate(lines):
        indent = indents[i]
        if indent is not None:
            following = next((x for x in indents[i + 1:] if x is not None), None)
            opens_block = following is not None and following > indent
            if fixed and fixed[-1].strip() and previous is not None and (
                    indent < previous or (indent == previous and opens_block)):
                fixed.append("")
            previous = indent
        fixed.append(line)
    lines[:] = fixed


_LITERAL = re.compile(r"(``.*?``)")


def escape_bars(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Escape ``|`` outside inline literals: docstrings write |o_i| and Σ|o_j| as mathematicians do."""
    for index, line in enumerate(lines):
        if "|" in line:
            parts = _LITERAL.split(line)
            lines[index] = "".join(p if p.startswith("``") else p.replace("|", "\\|") for p in parts)


PACKAGE_DIR = Path(__file__).resolve().parents[2] / "companion"
# The order of DESIGN.md's module table; modules not listed here follow alphabetically.
MODULE_ORDER = ("objective", "methods", "prefix", "optim", "theory", "policies", "tasks", "lab", "viz",
                "exercises")


def companion_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Top-level modules of the package present on disk, in reading order (subpackages are skipped)."""
    present = {p.stem for p in package_dir.glob("*.py") if not p.stem.startswith("_")}
    ordered = [m for m in MODULE_ORDER if m in present]
    return ordered + sorted(present - set(ordered))


class CompanionApi(SphinxDirective):
    """Emit ``automodule`` sections for every module of ``companion`` (reStructuredText pages only)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        lines: list[str] = [".. autosummary::", ""]
        modules = companion_modules()
        lines += [f"   companion.{name}" for name in modules] + [""]
        for name in modules:
            title = f"companion.{name}"
            lines += [title, "-" * len(title), "", f".. automodule:: {title}", "   :members:", ""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="companion-api"), container)
        return container.children


def quiet_kernels(build_dir: Path) -> None:
    """Give the build's kernels an IPython profile that logs errors only.

    ipykernel 7 logs a WARNING-level line about TCP transport at every kernel start; it is not a Sphinx
    warning, but it makes "zero warnings" impossible to grep for. An IPYTHONDIR the user set is kept.
    """
    if "IPYTHONDIR" in os.environ:
        return
    profile = build_dir / ".ipython" / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipython_kernel_config.py").write_text('c.IPKernelApp.log_level = "ERROR"\n')
    os.environ["IPYTHONDIR"] = str(profile.parent)


# Runs before any widget is rendered (DOMContentLoaded fires after MathJax's deferred script has run).
MATHJAX2_SHIM = """document.addEventListener("DOMContentLoaded", function () {
  if (window.MathJax && !window.MathJax.Hub) {
    window.MathJax.Hub = {Queue: function (command) {
      var element = command && command[2];
      if (window.MathJax.typesetPromise && element) { window.MathJax.typesetPromise([element]); }
    }};
  }
});"""


def reread_chapters(app: Sphinx, env: Any, added: set[str], changed: set[str],
                    removed: set[str]) -> list[str]:
    """Every notebook, so that each build executes every chapter (``env-get-outdated``)."""
    return sorted(chapter_docnames(app))


def plain_value(outputs: list[Any]) -> str:
    """The text an ``{eval}`` shows: the plain-text result, without the quotes of a string's repr."""
    text = next((o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})), "")
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def instrument_inline_execution() -> None:
    """Two additions to myst-nb's inline executor: per-cell timings (nbclient's ``record_timing``, which
    myst-nb turns off) and a record of every ``{eval}`` value in the notebook's metadata (for the slides).

    Timings are recorded only while a cell executes: ``{eval}`` requests run a throw-away cell that has no
    timing record to write to.
    """
    from myst_nb.core.execute import inline
    from nbclient.util import run_sync

    client = inline.ModifiedNotebookClient
    if getattr(client, "companion_timed", False):
        return

    class TimedNotebookClient(client):
        companion_timed = True

        async def async_execute_cell(self, *args: Any, **kwargs: Any) -> Any:
            self.record_timing = True
            try:
                return await super().async_execute_cell(*args, **kwargs)
            finally:
                self.record_timing = False

        execute_cell = run_sync(async_execute_cell)

    evaluate = inline.NotebookClientInline.eval_variable

    def eval_and_record(self: Any, name: str) -> list[Any]:
        outputs = evaluate(self, name)
        self.notebook.metadata.setdefault("companion_evals", {})[name] = plain_value(outputs)
        return outputs

    inline.ModifiedNotebookClient = TimedNotebookClient
    inline.NotebookClientInline.eval_variable = eval_and_record


STUDENT_DIR = "student"
SOLUTION_OPENERS = (":::{solution}", "::::{solution}", "```{solution}", "````{solution}")


def is_instructor_note_cell(cell: Any) -> bool:
    """A markdown cell that opens with an ``instructor-note`` admonition."""
    source = cell.get("source", "").lstrip()
    header = source.split("\n\n")[0]  # the directive's first line and options
    opens = source.startswith((":::{admonition}", "::::{admonition}"))
    return cell.get("cell_type") == "markdown" and opens and INSTRUCTOR_NOTE in header


def is_teachers_cell(cell: Any) -> bool:
    """A markdown cell that opens a ``{solution}`` block or is an instructor note, or a cell tagged
    ``solution``: what the student notebooks leave out."""
    if "solution" in cell.get("metadata", {}).get("tags", []):
        return True
    solution = cell.get("source", "").lstrip().startswith(SOLUTION_OPENERS)
    return (cell.get("cell_type") == "markdown" and solution) or is_instructor_note_cell(cell)


def student_notebook(notebook: Any) -> Any:
    """A copy of ``notebook`` without its solutions and instructor notes."""
    import copy

    student = copy.deepcopy(notebook)
    student.cells = [cell for cell in student.cells if not is_teachers_cell(cell)]
    return student


def chapter_docnames(app: Sphinx) -> list[str]:
    return [name for name in app.env.found_docs if app.env.doc2path(name).endswith(".ipynb")]


def without_instructor_notes(notebook: Any) -> Any:
    """A copy of ``notebook`` without its instructor notes (solutions kept)."""
    import copy

    kept = copy.deepcopy(notebook)
    kept.cells = [cell for cell in kept.cells if not is_instructor_note_cell(cell)]
    return kept


def write_student_notebooks(app: Sphinx, exception: Exception | None) -> None:
    """``student/<chapter>.ipynb`` for every chapter. The page's own ``.ipynb`` download is that notebook in
    the student edition, and the chapter without its instructor notes in the full edition."""
    import nbformat

    if exception is not None or app.builder.format != "html":
        return
    for docname in chapter_docnames(app):
        chapter = nbformat.read(app.env.doc2path(docname), as_version=4)
        notebook = student_notebook(chapter)
        target = Path(app.outdir) / STUDENT_DIR / f"{Path(docname).name}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)
        source = Path(app.outdir) / "_sources" / f"{docname}.ipynb"
        if not source.exists():
            continue
        if app.config.hide_solutions:
            shutil.copyfile(target, source)
        elif app.config.companion_edition != "instructor":
            nbformat.write(without_instructor_notes(chapter), source)


SLIDES_DIR = "slides"


def write_slide_decks(app: Sphinx, exception: Exception | None) -> None:
    """``slides/<chapter>.html`` for every chapter with slide cells, from its executed notebook."""
    import nbformat
    import slides

    if exception is not None or app.builder.format != "html":
        return
    executed = Path(app.outdir).parent / "jupyter_execute"
    read = {name: nbformat.read(executed / f"{name}.ipynb", as_version=4) for name in chapter_docnames(app)}
    notebooks = {name: notebook for name, notebook in read.items() if slides.has_slides(notebook)}
    cites = {}
    for bib in getattr(app.config, "bibtex_bibfiles", []) if notebooks else []:
        cites.update(slides.citations(Path(app.srcdir) / bib))
    book_title = app.config.html_title or app.config.project  # jupyter-book sets html_title from `title`
    for docname, notebook in notebooks.items():
        depth = "../" * (docname.count("/") + 1)
        page = slides.deck_html(slides.chapter_title(notebook), book_title, f"{depth}{docname}.html",
                                slides.slides(notebook, cites), "../_static")
        target = Path(app.outdir) / SLIDES_DIR / f"{Path(docname).name}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page)


class CompanionDecks(SphinxDirective):
    """A list of the chapters' slide decks (``slides/<chapter>.html``), for the chapters that have one."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import html

        import nbformat
        import slides

        app, items = self.env.app, []
        for docname in sorted(chapter_docnames(app)):
            notebook = nbformat.read(app.env.doc2path(docname), as_version=4)
            if slides.has_slides(notebook):
                href = "../" * self.env.docname.count("/") + f"{SLIDES_DIR}/{Path(docname).name}.html"
                items.append(f'<li><a href="{href}">{html.escape(slides.chapter_title(notebook))}</a></li>')
        if not items:
            return [nodes.paragraph(text="No chapter marks slide cells yet.")]
        return [nodes.raw("", f'<ul class="deck-list">{"".join(items)}</ul>', format="html")]


def chapter_has_slides(app: Sphinx, docname: str) -> bool:
    import nbformat
    import slides

    return slides.has_slides(nbformat.read(app.env.doc2path(docname), as_version=4))


def link_chapter_extras(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any],
                        doctree: Any) -> None:
    """A chapter's header: "student .ipynb" (no solutions) in the download menu, and its slide deck."""
    if context.get("page_source_suffix") != ".ipynb":
        return
    if chapter_has_slides(app, pagename):
        context["header_buttons"].insert(0, {
            "type": "link", "text": "", "icon": "fas fa-person-chalkboard", "label": "slides-button",
            "url": context["pathto"](f"{SLIDES_DIR}/{Path(pagename).name}.html", 1),
            "tooltip": "Slides of this chapter (reveal.js, offline)",
        })
    for button in context.get("header_buttons", []):
        if button.get("label") == "download-buttons":
            button["buttons"].insert(1, {
                "type": "link", "text": "student .ipynb", "icon": "fas fa-user-graduate",
                "url": context["pathto"](f"{STUDENT_DIR}/{Path(pagename).name}.ipynb", 1),
                "tooltip": "Download the notebook without solutions", "label": "download-student-button",
            })


# ---------------------------------------------------------------------------------------------------------
# The repository URL: one setting for the repository, issues and launch buttons and the Colab install cells

REPOSITORY_ENV = "COMPANION_REPOSITORY_URL"
REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button", "use_edit_page_button",
                      "use_source_button")
REPOSITORY_HOSTS = ("github.com", "gitlab.com", "bitbucket.org")  # the hosts sphinx-book-theme links to
_REPOSITORY_URL = re.compile(r"^https://(?P<host>[^/\s]+)/(?P<owner>[^/\s]+)/(?P<repo>[^/\s]+?)(?:\.git)?/?$")
# the Colab install cell of a chapter: %pip install ... "git+<url>", possibly over lines joined by a backslash
INSTALL_URL = re.compile(r"(%pip install(?:[^\n\\]|\\\n)*?git\+)(?P<url>[^\"'\s\\]+)")  # \-newline continues


def repository_url(environ: dict[str, str] | None = None) -> str:
    """``COMPANION_REPOSITORY_URL``, normalised to https://HOST/OWNER/REPO; "" when it is unset."""
    raw = (os.environ if environ is None else environ).get(REPOSITORY_ENV, "").strip()
    if not raw:
        return ""
    match = _REPOSITORY_URL.match(raw)
    if not match or match["host"] not in REPOSITORY_HOSTS:
        raise ConfigError(f"{REPOSITORY_ENV} must look like https://github.com/OWNER/REPO (hosts: "
                          f"{', '.join(REPOSITORY_HOSTS)}), got {raw!r}")
    return f"https://{match['host']}/{match['owner']}/{match['repo']}"


def choose_repository(app: Sphinx | None, config: Config) -> None:
    """Turn the repository, issues and launch buttons on for ``COMPANION_REPOSITORY_URL``, or hide them.

    ``_config.yml`` holds the launch providers and the branch but no URL: a wrong URL makes buttons that
    lead nowhere, and the theme cannot build launch links without one.
    """
    url = repository_url()
    options = dict(config.html_theme_options or {})
    if url:
        options.update(repository_url=url, use_repository_button=True, use_issues_button=True)
        if not url.startswith("https://github.com/"):  # Colab opens notebooks from GitHub only
            options["launch_buttons"] = {k: v for k, v in options.get("launch_buttons", {}).items()
                                         if k != "colab_url"}
        logger.info(f"[companion] repository: {url} (repository, issues and launch buttons shown)")
    else:
        for key in ("repository_url", "launch_buttons"):
            options.pop(key, None)
        for key in REPOSITORY_BUTTONS:
            if key in options:  # only the book theme knows these options: add none
                options[key] = False
        logger.info(f"[companion] repository: {REPOSITORY_ENV} unset (repository and launch buttons hidden)")
    config.html_theme_options = options


def install_urls(source: str) -> list[str]:
    """The URLs that a notebook's ``%pip install "git+URL"`` lines install from (its Colab cell)."""
    return [m["url"] for m in INSTALL_URL.finditer(source)]


def notebook_install_urls(path: Path) -> list[str]:
    """The install URLs of a notebook's code cells."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    return [url for cell in cells if cell.cell_type == "code" for url in install_urls(cell.source)]


def set_install_url(source: str, url: str) -> str:
    """The same source with every ``%pip install "git+..."`` pointing at ``url``."""
    return INSTALL_URL.sub(lambda m: m.group(1) + url, source)


def check_install_urls(app: Sphinx, env: Any, docnames: list[str]) -> None:
    """Warn when a chapter's Colab cell installs companion from somewhere other than the repository URL."""
    url = repository_url()
    if not url:
        return
    for docname in sorted(env.found_docs):
        path = Path(env.doc2path(docname))
        if path.suffix != ".ipynb":
            continue
        others = sorted({u for u in notebook_install_urls(path) if u != url})
        if others:
            logger.warning(f"the Colab cell installs companion from {', '.join(others)}, but "
                           f"{REPOSITORY_ENV} is {url}; run: python book/_ext/set_repository_url.py {url}",
                           location=docname)


# (pattern, replacement): the search field's label "Search" hides its visible "Search Ctrl+K"; the colour-mode
# button's icons carry titles (Font Awesome turns them into SVG titles) that compete with its label;
# myst-nb's "Toggle hidden content" hides the visible "Show code cell source"
ACCESSIBLE_NAMES = (
    (re.compile(r'(<button class="btn search-button-field[^"]*"[^>]*?) aria-label="Search"'), r"\1"),
    (re.compile(r'<i class="(theme-switch [^"]*)"([^>]*?) title="[^"]*"'),
     r'<i aria-hidden="true" class="\1"\2'),
    (re.compile(r'<summary aria-label="Toggle hidden content">'), "<summary>"),
    # companion.css lets a wide table scroll inside the column: a scroll region must take keyboard focus
    (re.compile(r"<table(?![^>]*tabindex)"), '<table tabindex="0"'),
)


def accessible_markup(page: str) -> str:
    """The page with the accessible names of the search field, the colour-mode button and code toggles
    matching their visible text, and focusable tables."""
    for pattern, replacement in ACCESSIBLE_NAMES:
        page = pattern.sub(replacement, page)
    return page


def fix_accessible_names(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        text = page.read_text()
        fixed = accessible_markup(text)
        if fixed != text:
            page.write_text(fixed)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")  # its events are connected below
    os.environ[BOOK_BUILD_ENV] = "1"
    quiet_kernels(Path(app.outdir).parent)
    instrument_inline_execution()
    app.add_config_value("companion_edition", "full", "env")
    app.connect("config-inited", choose_edition)
    app.connect("doctree-read", apply_edition)
    app.connect("config-inited", choose_repository)
    app.connect("env-before-read-docs", check_install_urls)
    app.connect("build-finished", report_execution_times)
    app.connect("html-page-context", drop_duplicate_scripts)
    app.connect("html-page-context", link_chapter_extras, priority=600)  # after the theme's buttons
    app.connect("build-finished", write_student_notebooks)
    app.connect("build-finished", write_slide_decks)
    app.connect("build-finished", fix_accessible_names)
    app.connect("env-get-outdated", reread_chapters)
    app.connect("autodoc-process-docstring", separate_dedents)
    app.connect("autodoc-process-docstring", escape_bars)
    app.add_js_file(None, body=MATHJAX2_SHIM, priority=100)
    app.add_css_file("companion.css")
    sys.path.insert(0, str(Path(__file__).parent))  # slides.py, beside this file
    app.add_directive("companion-api", CompanionApi)
    app.add_directive("companion-decks", CompanionDecks)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

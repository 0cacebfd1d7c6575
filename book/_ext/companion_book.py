"""Sphinx glue for the book (loaded through ``sphinx.local_extensions`` in ``_config.yml``).

1. Tells the notebook kernels they run inside the book build: ``COMPANION_BOOK_BUILD=1`` is set in this
   process's environment, which the kernels myst-nb starts inherit, so ``companion.viz.explorer``
   renders its static, kernel-free form.
   Their IPython profile logs errors only (see :func:`quiet_kernels`).
2. The student edition: ``COMPANION_EDITION=student`` sets sphinx-exercise's ``hide_solutions``.
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
8. The repository URL: ``COMPANION_REPOSITORY_URL`` (e.g. ``https://github.com/OWNER/REPO``) is the one
   setting behind the repository, issues and launch (Colab, Binder) buttons; without it they are hidden
   (see :func:`choose_repository`). With it, a chapter whose Colab install cell installs ``companion``
   from another URL is a warning (``book/_ext/set_repository_url.py`` rewrites those cells).
"""

from __future__ import annotations

import os
import re
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
EDITIONS = ("full", "student")

logger = logging.getLogger(__name__)


def choose_edition(app: Sphinx, config: Config) -> None:
    """Hide the solutions in the student edition; the full edition (the default) shows them."""
    edition = os.environ.get(EDITION_ENV, "full").strip().lower() or "full"
    if edition not in EDITIONS:
        raise ConfigError(f"{EDITION_ENV} must be one of {EDITIONS}, got {edition!r}")
    if edition == "student":
        config.hide_solutions = True
    shown = "hidden" if config.hide_solutions else "shown"
    logger.info(f"[companion] edition: {edition} (solutions {shown})")


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


# ---------------------------------------------------------------------------------------------------------
# The repository URL: one setting for the repository, issues and launch buttons and the Colab install cells

REPOSITORY_ENV = "COMPANION_REPOSITORY_URL"
REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button", "use_edit_page_button",
                      "use_source_button")
REPOSITORY_HOSTS = ("github.com", "gitlab.com", "bitbucket.org")  # the hosts sphinx-book-theme links to
_REPOSITORY_URL = re.compile(r"^https://(?P<host>[^/\s]+)/(?P<owner>[^/\s]+)/(?P<repo>[^/\s]+?)(?:\.git)?/?$")
# the Colab install cell of a chapter: %pip install ... "git+<url>"
INSTALL_URL = re.compile(r"(%pip install[^\n]*?[\"']?git\+)(?P<url>[^\"'\s\\]+)")


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


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")  # its events are connected below
    os.environ[BOOK_BUILD_ENV] = "1"
    quiet_kernels(Path(app.outdir).parent)
    app.connect("config-inited", choose_edition)
    app.connect("config-inited", choose_repository)
    app.connect("env-before-read-docs", check_install_urls)
    app.connect("build-finished", report_execution_times)
    app.connect("html-page-context", drop_duplicate_scripts)
    app.connect("autodoc-process-docstring", separate_dedents)
    app.connect("autodoc-process-docstring", escape_bars)
    app.add_js_file(None, body=MATHJAX2_SHIM, priority=100)
    app.add_directive("companion-api", CompanionApi)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

"""The book's sources: stored notebooks, table of contents, configuration, citations, the edition switch.

The chapters themselves run under nbval (pyproject's testpaths include book/); the built HTML is checked
in tests/test_browser.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK / "_ext"))

import companion_book  # noqa: E402
import strip_outputs  # noqa: E402

NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PAGES = sorted([*BOOK.glob("*.md"), *BOOK.glob("*.rst"), *NOTEBOOKS])
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())

# the paper, every method of Table 1, the extras the book discusses, and the optimizers
REQUIRED_REFERENCES = {
    "fontana2026hidden", "shao2024deepseekmath", "deepseekai2025r1", "deepseekai2025v32", "zheng2025gspo",
    "simoni2025gtpo", "yu2025dapo", "lin2025cppo", "liu2025drgrpo", "chu2025gpg", "minimax2025m1",
    "wu2025gcpo", "schulman2017ppo", "williams1992reinforce", "ahmadian2024rloo", "kool2019buy4",
    "hu2025reinforcepp", "gao2025sapo", "zhao2025gmpo", "kingma2015adam", "loshchilov2019adamw",
}


def toc_files(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["file"]] if "file" in node else []
        found += [node["root"]] if "root" in node else []
        for value in node.values():
            found += toc_files(value)
        return found
    if isinstance(node, list):
        return [f for item in node for f in toc_files(item)]
    return []


def bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", (BOOK / "references.bib").read_text(), re.M))


def page_text(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
    return path.read_text()


# ---------------------------------------------------------------------------------------------------------


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert strip_outputs.violations(notebook) == [], f"run: python book/_ext/strip_outputs.py {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_the_default_python_kernel(path: Path):
    kernelspec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
    assert kernelspec.get("name") == "python3" and kernelspec.get("language") == "python"


def test_policy_detects_outputs_and_keeps_check_cells():
    notebook = nbformat.v4.new_notebook()
    plain = nbformat.v4.new_code_cell("print(1)", execution_count=3,
                                      outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")])
    check = nbformat.v4.new_code_cell(
        "# NBVAL_CHECK_OUTPUT\nprint(2)", execution_count=4,
        outputs=[nbformat.v4.new_output("stream", name="stdout", text="2\n"),
                 nbformat.v4.new_output("display_data", data={"image/png": "iVB", "text/plain": "<Figure>"})])
    notebook.cells = [plain, check]
    assert len(strip_outputs.violations(notebook)) == 3
    strip_outputs.strip(notebook)
    assert strip_outputs.violations(notebook) == []
    assert plain.outputs == [] and plain.execution_count is None
    assert [o.output_type for o in check.outputs] == ["stream", "display_data"]
    assert check.outputs[1].data == {"text/plain": "<Figure>"} and check.execution_count == 1
    check.outputs = []
    assert "no stored output" in strip_outputs.violations(notebook)[0]


def test_every_page_is_in_the_toc_and_every_toc_entry_exists():
    listed = toc_files(TOC)
    for entry in listed:
        assert any((ROOT / f"{entry}{suffix}").exists() for suffix in (".md", ".ipynb", ".rst")), entry
    for page in PAGES:
        assert page.relative_to(ROOT).with_suffix("").as_posix() in listed, f"{page.name} is not in _toc.yml"


def test_configuration_keys_that_matter():
    assert CONFIG["only_build_toc_files"] is True
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "inline"  # {eval} in the prose needs the kernel
    assert execute["timeout"] >= 300
    assert execute["allow_errors"] is False and execute["raise_on_error"] is True
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["myst_dmath_double_inline"] is True
    for pattern in ("_build", ".*", "**/.*", ".venv", "book/_vendor", "README.md"):
        assert pattern in CONFIG["exclude_patterns"]
    for extension in ("sphinx_proof", "sphinx_exercise"):
        assert extension in CONFIG["sphinx"]["extra_extensions"]
    assert CONFIG["launch_buttons"]["colab_url"] and CONFIG["launch_buttons"]["binderhub_url"]
    assert CONFIG["repository"]["path_to_book"] == ""


def test_offline_assets_point_into_the_vendored_folder():
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["html_static_path"] == ["book/_vendor", "book/_assets"]
    assert (ROOT / "book" / "_assets" / "companion.css").is_file()
    assets = [sphinx["mathjax_path"], *sphinx["nb_ipywidgets_js"]]
    assert all("://" not in asset for asset in assets)
    vendor = ROOT / "book" / "_vendor"
    if not (vendor / "VERSIONS").exists():
        pytest.fail("vendored assets missing: run .ci/vendor-assets (the install step does)")
    for asset in assets:
        assert (vendor / asset).is_file(), asset


def test_references_cover_the_paper_and_table_1():
    keys = bib_keys()
    assert keys >= REQUIRED_REFERENCES, REQUIRED_REFERENCES - keys
    entries = re.findall(r"^@\w+\{", (BOOK / "references.bib").read_text(), re.M)
    assert len(keys) == len(entries), "duplicate key"


def test_every_citation_resolves():
    keys = bib_keys()
    cited = set()
    for page in PAGES:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page_text(page)):
            cited |= {key.strip() for key in group.split(",")}
    assert cited, "the pages should cite the paper"
    assert cited <= keys, cited - keys


def test_equation_page_lists_every_equation_and_proposition():
    text = (BOOK / "equations.md").read_text()
    for number in range(1, 39):
        assert re.search(rf"\|\s*Eq\. {number}\b", text), f"Eq. {number} is missing"
    for number in range(1, 8):
        assert re.search(rf"\|\s*Prop\. {number}\b", text), f"Prop. {number} is missing"


def test_api_modules_follow_the_package():
    modules = companion_book.companion_modules()
    on_disk = {p.stem for p in (ROOT / "companion").glob("*.py") if not p.stem.startswith("_")}
    assert set(modules) == on_disk
    present = [m for m in companion_book.MODULE_ORDER if m in on_disk]
    assert modules[: len(present)] == present


@pytest.mark.parametrize(("value", "edition", "hidden"),
                         [(None, "full", False), ("full", "full", False), ("student", "student", True),
                          ("Student", "student", True), ("instructor", "instructor", False)])
def test_edition_switch(monkeypatch, value, edition, hidden):
    if value is None:
        monkeypatch.delenv(companion_book.EDITION_ENV, raising=False)
    else:
        monkeypatch.setenv(companion_book.EDITION_ENV, value)
    config = SimpleNamespace(hide_solutions=False)
    companion_book.choose_edition(None, config)
    assert config.hide_solutions is hidden and config.companion_edition == edition


def test_unknown_edition_is_an_error(monkeypatch):
    from sphinx.errors import ConfigError

    monkeypatch.setenv(companion_book.EDITION_ENV, "teacher")
    with pytest.raises(ConfigError, match="student"):
        companion_book.choose_edition(None, SimpleNamespace(hide_solutions=False))


def test_editions_in_a_real_build(tmp_path):
    """A small Sphinx project built with the book's extension, in the three editions (with -W): solutions
    collapsed (full), absent (student) or open (instructor); instructor notes only for instructors."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(BOOK / '_ext')!r})\n"
        "extensions = ['myst_parser', 'sphinx_exercise', 'companion_book']\n"
        "myst_enable_extensions = ['colon_fence', 'dollarmath']\n"
    )
    (source / "index.md").write_text(
        "# Page\n\n:::{exercise}\n:label: ex1\n\nCompute $A_i$.\n:::\n\n"
        ":::{solution} ex1\n:class: dropdown\n\nTHE-SOLUTION-TEXT\n:::\n\n"
        ":::{admonition} Teaching this page\n:class: instructor-note dropdown\n\nTHE-INSTRUCTOR-NOTE\n:::\n"
    )

    def build(edition: str) -> str:
        out = tmp_path / edition
        env = {**os.environ, companion_book.EDITION_ENV: edition}
        command = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(source), str(out)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return (out / "index.html").read_text()

    full, student, instructor = build("full"), build("student"), build("instructor")
    assert "THE-SOLUTION-TEXT" in full and "Compute" in full and "THE-INSTRUCTOR-NOTE" not in full
    assert "THE-SOLUTION-TEXT" not in student and "Compute" in student
    assert "THE-INSTRUCTOR-NOTE" not in student
    assert "THE-SOLUTION-TEXT" in instructor and "THE-INSTRUCTOR-NOTE" in instructor

    def solution_classes(page: str) -> str:
        return re.search(r'<div class="([^"]*solution[^"]*)"', page).group(1)

    assert "dropdown" in solution_classes(full) and "dropdown" not in solution_classes(instructor)
    note_classes = re.search(r'<div class="([^"]*instructor-note[^"]*)"', instructor).group(1)
    assert "dropdown" not in note_classes  # folded in JupyterLab, open in the instructor edition


def test_student_notebooks_leave_out_solutions_and_instructor_notes():
    cells = [nbformat.v4.new_markdown_cell(":::{exercise}\n:label: e\n\nDo.\n:::"),
             nbformat.v4.new_code_cell("answer = None"),
             nbformat.v4.new_markdown_cell(":::{solution} e\n:class: dropdown\n\nDone.\n:::"),
             nbformat.v4.new_markdown_cell(":::{admonition} Timing\n:class: instructor-note\n\n5 min.\n:::"),
             nbformat.v4.new_markdown_cell(":::{admonition} A note for everyone\n\nText.\n:::"),
             nbformat.v4.new_code_cell("print(1)", metadata={"tags": ["solution"]})]
    notebook = nbformat.v4.new_notebook(cells=cells)
    student = companion_book.student_notebook(notebook)
    assert [c.source[:12] for c in student.cells] == [":::{exercise", "answer = Non", ":::{admoniti"]
    assert "everyone" in student.cells[2].source and len(notebook.cells) == 6
    full = companion_book.without_instructor_notes(notebook)  # the full edition's .ipynb download
    assert [c.source[:12] for c in full.cells] == [":::{exercise", "answer = Non", ":::{solution",
                                                   ":::{admoniti", "print(1)"]
    assert "everyone" in full.cells[3].source


def test_plain_text_docstrings_become_valid_rst():
    lines = ["Summary.", "", "optimizer: a torch optimizer (e.g.", "    ``AdamW``), or None.",
             "group_size: G >= 2.", "- item", "  continued", "- next"]
    companion_book.separate_dedents(None, "function", "f", None, None, lines)
    assert lines == ["Summary.", "", "optimizer: a torch optimizer (e.g.", "    ``AdamW``), or None.", "",
                     "group_size: G >= 2.", "", "- item", "  continued", "", "- next"]
    items = ["Fields:", "    a: one line.", "    b: two", "        lines.", "    c: one line."]
    companion_book.separate_dedents(None, "function", "f", None, None, items)
    assert items == ["Fields:", "    a: one line.", "", "    b: two", "        lines.", "",
                     "    c: one line."]
    untouched = ["One line.", "", "    an indented block", "", "Back."]
    companion_book.separate_dedents(None, "function", "f", None, None, untouched)
    assert untouched == ["One line.", "", "    an indented block", "", "Back."]


def test_vertical_bars_in_docstrings_are_escaped_outside_literals():
    lines = ["alpha = 1/(G|o_i|), Σ|o_j| tokens", "``mask.sum(-1) | other``, then |x|"]
    companion_book.escape_bars(None, "function", "f", None, None, lines)
    assert lines == ["alpha = 1/(G\\|o_i\\|), Σ\\|o_j\\| tokens", "``mask.sum(-1) | other``, then \\|x\\|"]


def _docstrings():
    import importlib
    import inspect

    for module_name in companion_book.companion_modules():
        module = importlib.import_module(f"companion.{module_name}")
        yield module_name, inspect.getdoc(module)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module_name}.{name}", inspect.getdoc(obj)
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    target = value.fget if isinstance(value, property) else value
                    if inspect.isfunction(target) or isinstance(target, classmethod | staticmethod):
                        yield f"{module_name}.{name}.{member}", inspect.getdoc(target)


def test_every_docstring_is_valid_rest_after_the_build_transforms():
    """What autodoc does to the package, without a build: a layout error here fails the -W build later."""
    import io

    import docutils.core

    errors = []
    for where, doc in _docstrings():
        if not doc:
            continue
        lines = doc.split("\n")
        companion_book.separate_dedents(None, "", where, None, None, lines)
        companion_book.escape_bars(None, "", where, None, None, lines)
        stream = io.StringIO()
        docutils.core.publish_doctree("\n".join(lines), settings_overrides={
            "report_level": 2, "halt_level": 5, "warning_stream": stream})
        problems = [line for line in stream.getvalue().splitlines()
                    if "ERROR" in line or "WARNING" in line]
        problems = [p for p in problems if "Unknown interpreted text role" not in p]  # Sphinx's roles
        errors += [f"{where}: {p}" for p in problems]
    assert not errors, "\n".join(errors)


def test_accessible_names_match_the_visible_text():
    page = ('<button class="btn search-button-field search-button__button pst-js-only" title="Search" '
            'aria-label="Search" data-bs-toggle="tooltip"><span>Search</span> Ctrl+K</button>'
            '<button class="btn theme-switch-button" aria-label="Color mode">'
            '<i class="theme-switch fa-solid fa-sun" data-mode="light" title="Light"></i></button>'
            '<summary aria-label="Toggle hidden content"><p>Show code cell source</p></summary>'
            '<button class="btn search-button" aria-label="Search"><i class="fa-search"></i></button>')
    fixed = companion_book.accessible_markup(page)
    assert 'title="Search" data-bs-toggle' in fixed
    assert fixed.count('aria-label="Search"') == 1  # the icon-only search button keeps its label
    assert '<i aria-hidden="true" class="theme-switch fa-solid fa-sun" data-mode="light"></i>' in fixed
    assert 'aria-label="Color mode"' in fixed
    assert "<summary><p>Show code cell source" in fixed
    table = companion_book.accessible_markup("<table><tr></tr></table>")
    assert table == '<table tabindex="0"><tr></tr></table>'
    assert companion_book.accessible_markup(fixed) == fixed

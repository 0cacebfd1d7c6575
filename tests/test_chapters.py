"""The chapters as a reader meets them: their sources (fast, no execution) and their executed form.

Source checks: every number in the prose ({eval}) is computed above it by a cell that runs, solutions are
collapsible and follow their exercise, code fits the 80-column code column, and every main section opens
with an instructor note (timing, what to demo, misconceptions cited from the TRL / verl / open-r1 trackers).

Executed checks read the notebooks the book build executed once (``_build/jupyter_execute``, see
tests/book_build.py), so CI runs each chapter once: no error and nothing on stderr in any cell, every
``# NBVAL_CHECK_OUTPUT`` cell prints what the stored notebook shows (after tests/nbval_sanitize.cfg), and
no cell runs silently for long (time not covered by a progress line). ``pytest --nbval-lax book/chNN.ipynb``
still runs one chapter cell by cell without the book.
"""

from __future__ import annotations

import ast
import builtins
import configparser
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from book_build import EXECUTED_DIR, ROOT

sys.path.insert(0, str(ROOT / "book" / "_ext"))
import companion_book

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
EVAL_ROLE = re.compile(r"\{eval\}`([^`]+)`")
SILENT_SECONDS = 6.0  # a cell may run this long without a progress line (generous: CI is a shared box)
PROGRESS_KEY = "companion_progress"  # companion.notebook.PROGRESS_METADATA


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


# ---------------------------------------------------------------------------------------------------------
# sources


def python_source(cell: nbformat.NotebookNode) -> str:
    """The cell's code with IPython magics and shell escapes blanked (they are not Python)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.split("\n"))


def defined_names(code: str) -> set[str]:
    """Names a cell binds at the top level of the notebook's namespace."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def used_names(expression: str) -> set[str]:
    tree = ast.parse(expression, mode="eval")
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return loaded - bound - set(dir(builtins))


def undefined_eval_names(notebook: nbformat.NotebookNode) -> list[str]:
    """``{eval}`` expressions that use a name no earlier, executed-before-the-prose cell defines."""
    defined: set[str] = set()
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            if "remove-cell" not in cell.metadata.get("tags", []):  # removed cells run too late (inline mode)
                defined |= defined_names(python_source(cell))
            continue
        for expression in EVAL_ROLE.findall(cell.source):
            missing = used_names(expression) - defined
            if missing:
                problems.append(f"cell {index}: {{eval}}`{expression}` uses {sorted(missing)}, "
                                "not defined above")
    return problems


def solution_problems(notebook: nbformat.NotebookNode) -> list[str]:
    """Solutions open their own markdown cell, are dropdowns, and follow the exercise they answer."""
    problems, exercises = [], set()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        exercises |= set(re.findall(r"\{exercise\}[^\n]*\n:label:\s*(\S+)", cell.source))
        for match in re.finditer(r"^(:{3,}|`{3,})\{solution\}\s*(\S+)", cell.source, re.M):
            label = match.group(2)
            if match.start() != len(cell.source) - len(cell.source.lstrip()):
                problems.append(f"cell {index}: the solution to {label} must start its own markdown cell")
            if ":class: dropdown" not in cell.source[match.end():].split("\n:::", 1)[0]:
                problems.append(f"cell {index}: the solution to {label} needs ':class: dropdown'")
            if label not in exercises:
                problems.append(f"cell {index}: solution to {label}, but no exercise {label} above it")
            alone = cell.source.rstrip().endswith(match.group(1)) and cell.source.count("{solution}") == 1 \
                and "{exercise}" not in cell.source
            if not alone:  # the student notebooks drop the whole cell
                problems.append(f"cell {index}: the solution to {label} must be alone in its markdown cell")
    return problems


NOTE_OPENING = re.compile(r"^:::\{admonition\} Teaching notes: [^\n]+ \((?P<minutes>\d+) min\)\n"
                          r":class: instructor-note dropdown\n\n")
TRACKER_URL = re.compile(r"https://github\.com/(huggingface/trl|verl-project/verl|volcengine/verl|"
                         r"huggingface/open-r1)/(issues|pull)/\d+")
FENCED = re.compile(r"^(`{3,}|:{3,}).*?^\1[ \t]*$", re.M | re.S)


def instructor_note_problems(notebook: nbformat.NotebookNode) -> list[str]:
    """Every main section (a '## ' heading; not the takeaways) has one instructor note, in its own markdown
    cell that holds only the admonition, before the section's first code cell: a title with the minutes,
    the ``instructor-note dropdown`` class, and at least one issue or PR of TRL, verl or open-r1."""
    problems: list[str] = []
    notes: dict[str, int] = {}
    section, code_seen = None, False
    for index, cell in enumerate(notebook.cells):
        if "instructor-note" in cell.source:
            if not companion_book.is_instructor_note_cell(cell):
                problems.append(f"cell {index}: an instructor note must open its own markdown cell")
            elif cell.source.count("{admonition}") != 1 or not cell.source.rstrip().endswith(":::"):
                problems.append(f"cell {index}: the instructor note must be alone in its cell")
            elif not NOTE_OPENING.match(cell.source):
                problems.append(f"cell {index}: the note opens with 'Teaching notes: <section> (N min)' and "
                                "':class: instructor-note dropdown'")
            elif not TRACKER_URL.search(cell.source):
                problems.append(f"cell {index}: the note cites no TRL, verl or open-r1 issue")
            elif section is None or code_seen:
                problems.append(f"cell {index}: the note must open a section, before its first code cell")
            else:
                notes[section] += 1
            continue
        if cell.cell_type == "code":
            code_seen = True
        for heading in re.findall(r"^## (.+)$", FENCED.sub("", cell.source) if cell.cell_type == "markdown"
                                  else "", re.M):
            section, code_seen = heading.strip(), False
            notes.setdefault(section, 0)
    problems += [f"section {name!r} has {count} instructor notes, not 1" for name, count in notes.items()
                 if name != "Takeaways" and count != 1]
    return problems


def note_minutes(notebook: nbformat.NotebookNode) -> int:
    return sum(int(m["minutes"]) for cell in notebook.cells if (m := NOTE_OPENING.match(cell.source)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_section_opens_with_an_instructor_note(path: Path):
    """Instructor notes (book/course.md): hidden in the full and student editions, shown in the instructor
    edition, speaker notes on the slides."""
    notebook = read(path)
    assert instructor_note_problems(notebook) == []
    assert note_minutes(notebook) > 0


def course_minutes() -> dict[int, int]:
    """Chapter number -> minutes, from the 'Minutes per chapter' table of book/course.md."""
    text = (ROOT / "book" / "course.md").read_text().split("## Minutes per chapter", 1)[1]
    return {int(n): int(m) for n, m in re.findall(r"^\| (\d+) \| (\d+) \|", text, re.M)}


def test_the_course_page_minutes_are_the_notes_minutes():
    """book/course.md's plans are built from the notes' minutes; a retimed note must update the page."""
    table = course_minutes()
    assert set(table) >= {int(p.name[2:4]) for p in NOTEBOOKS if re.match(r"ch\d\d_", p.name)}
    for path in NOTEBOOKS:
        if re.match(r"ch\d\d_", path.name):
            assert note_minutes(read(path)) == table[int(path.name[2:4])], path.name


def test_instructor_note_check_catches_what_it_guards():
    note = (":::{admonition} Teaching notes: The claim (10 min)\n:class: instructor-note dropdown\n\n"
            "Demo. [TRL #2703](https://github.com/huggingface/trl/issues/2703)\n:::")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_markdown_cell("## The claim"),
        nbformat.v4.new_markdown_cell(note),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_markdown_cell("## Where it breaks\n\n```python\n## not a section\n```"),
        nbformat.v4.new_code_cell("y = 2"),
        nbformat.v4.new_markdown_cell(note),
        nbformat.v4.new_markdown_cell("## Explore"),
        nbformat.v4.new_markdown_cell("Text.\n\n" + note),
        nbformat.v4.new_markdown_cell(note.replace("dropdown", "")),
        nbformat.v4.new_markdown_cell(note.replace("https://github.com/huggingface/trl/issues/2703", "#")),
        nbformat.v4.new_markdown_cell("## Takeaways"),
    ]
    assert instructor_note_problems(notebook) == [
        "cell 6: the note must open a section, before its first code cell",
        "cell 8: an instructor note must open its own markdown cell",
        "cell 9: the note opens with 'Teaching notes: <section> (N min)' and "
        "':class: instructor-note dropdown'",
        "cell 10: the note cites no TRL, verl or open-r1 issue",
        "section 'Where it breaks' has 0 instructor notes, not 1",
        "section 'Explore' has 0 instructor notes, not 1",
    ]
    assert note_minutes(notebook) == 10 * 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_number_in_the_prose_is_computed_above_it(path: Path):
    assert undefined_eval_names(read(path)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_are_collapsed_and_follow_their_exercise(path: Path):
    assert solution_problems(read(path)) == []


def test_source_checks_catch_what_they_guard():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("Too early: {eval}`f'{late:.2f}'`."),
        nbformat.v4.new_code_cell("late = 1.0\nfor k in range(2):\n    pass"),
        nbformat.v4.new_code_cell("hidden = 2", metadata={"tags": ["remove-cell"]}),
        nbformat.v4.new_markdown_cell("Fine {eval}`late + k`, removed {eval}`hidden`, "
                                      "built-in {eval}`len([1])`"),
        nbformat.v4.new_markdown_cell(":::{exercise}\n:label: ch-a\n\nDo.\n:::"),
        nbformat.v4.new_markdown_cell(":::{solution} ch-a\n:class: dropdown\n\nDone.\n:::"),
        nbformat.v4.new_markdown_cell("Text\n\n:::{solution} ch-a\n\nOpen.\n:::"),
        nbformat.v4.new_markdown_cell(":::{solution} ch-b\n:class: dropdown\n\nNo exercise.\n:::"),
        nbformat.v4.new_markdown_cell(":::{solution} ch-a\n:class: dropdown\n\nDone.\n:::\n\n## Takeaways"),
    ]
    assert undefined_eval_names(notebook) == [
        "cell 0: {eval}`f'{late:.2f}'` uses ['late'], not defined above",
        "cell 3: {eval}`hidden` uses ['hidden'], not defined above",
    ]
    assert solution_problems(notebook) == [
        "cell 6: the solution to ch-a must start its own markdown cell",
        "cell 6: the solution to ch-a needs ':class: dropdown'",
        "cell 7: solution to ch-b, but no exercise ch-b above it",
        "cell 8: the solution to ch-a must be alone in its markdown cell",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_code_line_is_wider_than_80_characters(path: Path):
    """Strictly: ruff's E501 lets a line without spaces (a long f-string continuation) through."""
    wide = [(index, line) for index, cell in enumerate(read(path).cells) if cell.cell_type == "code"
            for line in cell.source.split("\n") if len(line) > 80]
    assert wide == []


def test_chapter_code_fits_the_code_column():
    """ruff with book/ruff.toml: 80 characters a line, and the project's other rules."""
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--no-cache", *map(str, NOTEBOOKS)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


# ---------------------------------------------------------------------------------------------------------
# the chapters as the book build executed them


def sanitizers() -> list[tuple[re.Pattern[str], str]]:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tests" / "nbval_sanitize.cfg")
    return [(re.compile(config[s]["regex"]), config[s]["replace"]) for s in config.sections()]


def printed_text(outputs: list) -> str:
    """What a cell printed, as nbval compares it: streams and the plain text of results, sanitized."""
    parts = []
    for output in outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data") and "text/plain" in output.data:
            parts.append(output.data["text/plain"])
    text = "".join(parts)
    for pattern, replacement in sanitizers():
        text = pattern.sub(replacement, text)
    return text


def executed(path: Path) -> nbformat.NotebookNode:
    executed_path = EXECUTED_DIR / path.name
    assert executed_path.exists(), f"the build did not write {executed_path}"
    return read(executed_path)


def cell_seconds(cell: nbformat.NotebookNode) -> float | None:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def progress_seconds(cell: nbformat.NotebookNode) -> float:
    outputs = cell.get("outputs", [])
    return sum(o.get("metadata", {}).get(PROGRESS_KEY, {}).get("seconds", 0.0) for o in outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_fails_or_writes_to_stderr(built_book, path: Path):
    problems = []
    for index, cell in enumerate(executed(path).cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                problems.append(f"cell {index}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr":
                problems.append(f"cell {index} wrote to stderr: {output.text[:200]!r}")
    assert problems == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_print_what_the_stored_notebook_shows(built_book, path: Path):
    stored = {c.id: c for c in read(path).cells if c.cell_type == "code" and CHECK_MARK in c.source}
    assert stored, f"{path.name} has no {CHECK_MARK} cell"
    fresh = {cell.id: cell for cell in executed(path).cells if cell.id in stored}
    for cell_id, cell in stored.items():
        assert printed_text(fresh[cell_id].outputs) == printed_text(cell.outputs), \
            f"{path.name}, cell {cell_id}:\n{cell.source[:300]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_runs_silently_for_long(built_book, path: Path):
    cells = executed(path).cells
    timed = [(i, cell_seconds(c)) for i, c in enumerate(cells) if c.cell_type == "code"]
    assert all(seconds is not None for _, seconds in timed), "the build recorded no cell timings"
    silent = {i: round(seconds - progress_seconds(cells[i]), 1) for i, seconds in timed}
    assert {i: s for i, s in silent.items() if s > SILENT_SECONDS} == {}, \
        "cells that run this many seconds without a progress line (cp.notebook.progress)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_marks_its_slides(path: Path):
    """Slide cells (Jupyter's slideshow metadata) make the chapter's deck; see book/_ext/slides.py."""
    kinds = [c.metadata.get("slideshow", {}).get("slide_type") for c in read(path).cells]
    assert kinds.count("slide") >= 3, "mark the claim, the key figures and the takeaways as slides"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_alt_text(built_book, path: Path):
    """A cell that draws a picture carries a text alternative for screen readers in its metadata
    (``{"mystnb": {"image": {"alt": ...}}}``, which myst-nb puts on the page's ``<img alt>``)."""
    missing = [index for index, cell in enumerate(executed(path).cells)
               if any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
               and not cell.metadata.get("mystnb", {}).get("image", {}).get("alt")]
    assert missing == [], "cells with a figure but no alt text"

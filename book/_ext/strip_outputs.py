"""Store chapter notebooks without outputs, except the claims nbval checks.

Policy (tests/test_book.py enforces it):

- a code cell has no outputs and no execution count,
- except a cell whose source contains ``# NBVAL_CHECK_OUTPUT``: it keeps its printed text (stream output
  or ``text/plain`` results only, no images or HTML) and an execution count, because nbval compares the
  fresh output against exactly that stored text; such a cell must have stored output;
- no notebook-level widget state is stored.

Usage, after running a chapter in Jupyter::

    python book/_ext/strip_outputs.py book/ch02_one_objective.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
TEXT_ONLY = {"text/plain"}
RESULT_TYPES = ("execute_result", "display_data")


def is_check_cell(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and CHECK_MARK in cell.source


def text_outputs(outputs: list) -> list:
    """Stream outputs and the text/plain part of results; everything else is dropped."""
    kept = []
    for output in outputs:
        if output.output_type == "stream":
            kept.append(output)
        elif output.output_type in RESULT_TYPES and "text/plain" in output.get("data", {}):
            output.data = {"text/plain": output.data["text/plain"]}
            output.metadata = {}
            kept.append(output)
    return kept


def strip(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Apply the policy in place and return the notebook."""
    notebook.metadata.pop("widgets", None)
    count = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if is_check_cell(cell):
            count += 1
            cell.outputs = text_outputs(cell.outputs)
            cell.execution_count = count
            for output in cell.outputs:
                if output.output_type == "execute_result":
                    output.execution_count = count
        else:
            cell.outputs = []
            cell.execution_count = None
    return notebook


def violations(notebook: nbformat.NotebookNode) -> list[str]:
    """Why this notebook breaks the policy (empty when it does not)."""
    problems = []
    if "widgets" in notebook.metadata:
        problems.append("notebook metadata stores widget state")
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if is_check_cell(cell):
            if not cell.outputs:
                problems.append(f"cell {index}: marked {CHECK_MARK} but has no stored output to compare")
            elif cell.execution_count is None:
                problems.append(f"cell {index}: stored check output needs an execution count (nbval)")
            for output in cell.outputs:
                mimetypes = set(output.get("data", {}))
                if output.output_type not in ("stream", *RESULT_TYPES) or mimetypes - TEXT_ONLY:
                    problems.append(f"cell {index}: check output must be text only, got {output.output_type}"
                                    f" {sorted(mimetypes)}")
        else:
            if cell.outputs:
                problems.append(f"cell {index}: has stored outputs")
            if cell.execution_count is not None:
                problems.append(f"cell {index}: has an execution count")
    return problems


def main(paths: list[str]) -> int:
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        nbformat.write(strip(notebook), path)
        print(f"stripped {Path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Point every chapter's Colab install cell at the repository: ``%pip install "git+URL"``.

Usage: ``python book/_ext/set_repository_url.py https://github.com/OWNER/REPO [notebooks...]``
(default: every ``book/*.ipynb``). Run it once when the repository URL is known, and set the same URL
as ``COMPANION_REPOSITORY_URL`` for the book build (README, "Publishing"): the build warns when a
chapter installs from elsewhere. Only the install lines change; outputs and metadata stay as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))

import companion_book

BOOK = Path(__file__).resolve().parents[1]


def set_repository_url(url: str, notebooks: list[Path]) -> list[Path]:
    """Rewrite the install lines of ``notebooks``; returns the notebooks that changed."""
    url = companion_book.repository_url({companion_book.REPOSITORY_ENV: url})
    changed = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        touched = False
        for cell in notebook.cells:
            if cell.cell_type == "code" and companion_book.install_urls(cell.source):
                updated = companion_book.set_install_url(cell.source, url)
                touched |= updated != cell.source
                cell.source = updated
        if touched:
            nbformat.write(notebook, path)
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        url = companion_book.repository_url({companion_book.REPOSITORY_ENV: argv[0]})
    except companion_book.ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    notebooks = [Path(p) for p in argv[1:]] or sorted(BOOK.glob("*.ipynb"))
    for path in set_repository_url(url, notebooks):
        print(f"{path}: installs from git+{url}")
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

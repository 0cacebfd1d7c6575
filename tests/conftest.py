"""Shared test set-up: one torch thread (tiny models are fastest that way on a shared box), fixed seeds,
and the built book (once per session, for the tests that read the executed chapters or open the pages)."""

import os
from pathlib import Path

import pytest
import torch

from book_build import build_book

torch.set_num_threads(int(os.environ.get("COMPANION_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def built_book() -> Path:
    """``_build/html`` of a successful ``jupyter-book build . -W`` newer than every source."""
    return build_book()

"""Shared test set-up: one torch thread (tiny models are fastest that way on a shared box), fixed seeds."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("COMPANION_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)

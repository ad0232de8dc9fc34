"""Fixtures of the trainables tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread, as a trial with one CPU runs (`run_trial` sets ``threads``): the tiny
    models of these tests gain nothing from more, and on a shared machine spinning threads make
    them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared fixtures: real data subsets and bundled trained checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for the module (small models run faster so on a shared 2-core
    machine); modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def fmnist_train():
    from ann2snn.data.datasets import load_dataset

    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="session")
def fmnist_test():
    from ann2snn.data.datasets import load_dataset

    return load_dataset("fashion-mnist", "test")


def loader(dataset, n: int, batch_size: int = 250, offset: int = 0) -> DataLoader:
    """The first ``n`` samples (after ``offset``) of ``dataset`` in order."""
    return DataLoader(Subset(dataset, range(offset, offset + n)), batch_size=batch_size)


def pretrained(name: str) -> torch.nn.Module:
    from ann2snn.models import load_pretrained

    return load_pretrained(name)

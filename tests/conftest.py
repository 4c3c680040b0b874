"""Shared fixtures. `synthetic_data` replaces the data sets by small random images so that tests
of the training machinery run in seconds and without the network."""

from __future__ import annotations

import pytest
import torch

from avae.data import datasets as data


@pytest.fixture
def synthetic_data(monkeypatch):
    """MNIST-shaped random grey images: 400 for training, 100 for test."""
    generator = torch.Generator().manual_seed(1234)
    images = {
        "train": torch.rand(400, 784, generator=generator),
        "test": torch.rand(100, 784, generator=generator),
    }

    def load_pixels(dataset, split, mode, data_dir=None, *, test_seed=0, **own_data):
        x = images[split]
        if mode == "binarized" and split == "test":
            return torch.bernoulli(x, generator=torch.Generator().manual_seed(test_seed))
        return x

    monkeypatch.setattr(data, "load_pixels", load_pixels)
    monkeypatch.setattr(data, "checksums", lambda dataset, test_data="": {"synthetic": "no-md5"})
    return images


@pytest.fixture
def one_thread():
    """One torch thread for tiny tensors: on a loaded machine two spinning OpenMP threads make such
    runs many times slower (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

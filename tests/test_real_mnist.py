"""A short run of every model on the real MNIST (fetched and MD5-verified like a user's).

The threshold is computed independently of the models: the test negative log-likelihood of the best
model that treats pixels as independent Bernoulli variables (each pixel's probability is its mean over
the training images). A latent-variable model that has learned anything about how pixels co-vary must
do better than that; an untrained decoder (every pixel 0.5) scores 784 log 2 = 543 nats, far above it.
"""

from __future__ import annotations

import csv

import pytest

from avae.core.models import MODELS
from avae.data import datasets as data
from avae.training.config import Runtime, make_config
from avae.training.train import train

TRAIN_IMAGES, TEST_IMAGES = 20_000, 1_000
MARGIN = 5.0  # nats below the pixel-independent baseline


@pytest.fixture(scope="module")
def pixel_independent_baseline() -> float:
    train_x = data.load_pixels("mnist", "train", "continuous")[:TRAIN_IMAGES]
    test_x = data.load_pixels("mnist", "test", "continuous")[:TEST_IMAGES]
    p = train_x.mean(0).clamp(1e-6, 1 - 1e-6)
    nll = -(test_x * p.log() + (1 - test_x) * (1 - p).log()).sum(-1).mean()
    return float(nll)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_beats_the_pixel_independent_baseline(tmp_path, name, pixel_independent_baseline):
    # One epoch of 200 steps at every model's default learning rate, 1e-3.
    cfg = make_config({"model": name, "epochs": 1, "train_subset": TRAIN_IMAGES, "test_subset": TEST_IMAGES})
    train(cfg, tmp_path / name, runtime=Runtime(progress=False))
    with open(tmp_path / name / "metrics.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert 150 < pixel_independent_baseline < 250  # sanity: grey-level MNIST under a Bernoulli
    assert float(row["test_neg_elbo"]) < pixel_independent_baseline - MARGIN

"""The report's statistics and sample-quality measures on inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from avae import experiments
from avae.report import (
    format_table,
    frechet_distance,
    gaussian_fit_kl,
    image_grid,
    mean_ci,
    mmd_to_prior,
    welch,
    write_report,
)


def test_mean_ci_uses_the_t_distribution():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t_{0.975, 2} * sd / sqrt(n)
    assert np.isnan(mean_ci([5.0])[1])


def test_welch_outcomes():
    assert welch([1.0, 1.1, 0.9, 1.05], [2.0, 2.1, 1.9, 2.05])["outcome"] == "agrees"
    assert welch([2.0, 2.1, 1.9, 2.05], [1.0, 1.1, 0.9, 1.05])["outcome"] == "contradicts"
    assert welch([1.0, 2.0, 3.0], [1.5, 2.5, 2.0])["outcome"] == "unclear"
    assert welch([1.0], [2.0])["outcome"].startswith("unclear")


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = rng.standard_normal((4000, 3)) + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=0.3)


def test_aggregate_posterior_measures_are_zero_for_the_prior():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3000, 5))
    assert gaussian_fit_kl(z) == pytest.approx(0.0, abs=0.02)
    assert abs(mmd_to_prior(z, rng)) < 0.01
    far = z * 3 + 1
    assert gaussian_fit_kl(far) > 5 and mmd_to_prior(far, rng) > 0.05


def test_grid_and_table_helpers_keep_their_shape():
    assert image_grid(np.zeros((64, 784))).shape == (8 * 30 + 2, 8 * 30 + 2)
    assert format_table(["a", "b"], [[1, 2]]).splitlines()[2] == "| 1 | 2 |"


def test_honest_table_says_not_evaluated_when_the_metrics_are_unavailable(tmp_path, monkeypatch):
    """With an evaluate_run that only knows the ELBO, the honest table renders "not evaluated"."""
    monkeypatch.setattr(experiments, "supported_metrics", lambda: {"elbo"})
    monkeypatch.setitem(
        experiments.EXPERIMENTS,
        "tiny",
        {"title": "test", "models": ("vae-noise",), "latent_dims": (10,), "noise_dims": (10,)},
    )
    profile = experiments.Profile(
        "tiny", "test", epochs=1, seeds=(0, 1), train_subset=200, test_subset=50, datasets=("mnist",),
        latent_dims=(10,), experiments=("tiny",), extras_samples=50, classifier_epochs=1,
        classifier_subset=500,
    )  # fmt: skip
    experiments.reproduce(profile, tmp_path, progress=False)
    text = write_report(tmp_path).read_text()
    honest = text.split("## Honest figures")[1].split("## Fig. 6")[0]
    assert "not evaluated" in honest and "avae evaluate" in honest
    assert "missing run" in text  # sections render even when their runs are absent
    assert text.count("**Verdict: inconclusive**") == 5

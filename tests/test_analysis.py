"""`analysis.noise_usage` on encoders whose split of Var[z|x] into the noise's part and the
Gaussian's own is known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from avae.core.models import ModelConfig, build_model
from avae.core.nets import MemberRandom, split_draws
from avae.errors import ConfigError
from avae.evaluation.analysis import noise_usage

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = (0, 1)
DATA, LATENT, NOISE = 6, 3, 4
# mu = A eps (+ x's first coordinates), sigma fixed: Var_eps[mu_u] = sum_j A_uj^2 exactly.
A = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0], [0.2, 0.0, 0.0, 2.0]])
SIGMA = torch.tensor([0.5, 1.0, 1.5])


class LinearNoiseEncoder(nn.Module):
    """q(z|x, eps) = N(A eps + shift * x[:Z], diag SIGMA^2): the noise enters the mean linearly."""

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Normal:
        loc = eps @ A.T + self.shift * x[..., :LATENT]
        return Normal(loc, SIGMA.expand_as(loc), validate_args=False)


class DeafEncoder(nn.Module):
    """A mean of x alone and a scale that does depend on eps: the noise never moves the mean."""

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Normal:
        loc = 3.0 * x[..., :LATENT]
        return Normal(loc, 0.5 + eps[..., :LATENT].square(), validate_args=False)


def noise_model(name: str = "vae-noise", encoder: nn.Module | None = None):
    noise_dim = 0 if name == "vae" else NOISE
    cfg = ModelConfig(name=name, latent_dim=LATENT, noise_dim=noise_dim, data_dim=DATA, hidden=(8,))
    model = build_model(cfg, SEEDS)
    if encoder is not None:
        model.encoder = encoder
    return model


def test_an_encoder_whose_mean_ignores_eps_has_share_exactly_zero():
    x = torch.rand(50, DATA, generator=torch.Generator().manual_seed(0))
    usage = noise_usage(noise_model(encoder=DeafEncoder()), x, SEEDS, draws=16, batch_size=20)
    for member in usage.members:
        assert member.mean_spread == 0.0 and member.noise_share == 0.0
        assert member.coordinate_share == (0.0,) * LATENT
        assert member.within_variance > 0.25  # sigma >= 0.5
        assert member.image_spread == pytest.approx(9 * float(x[:, :LATENT].var(0).mean()), rel=1e-5)
        assert member.active_units == LATENT and member.active_share == 0.0


@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_a_linear_noise_encoder_gives_the_analytic_share_within_monte_carlo_error(shift):
    """Var_eps[mu] = A A^T and E sigma^2 = SIGMA^2 exactly, so the share is |A|_F^2 / (|A|_F^2 +
    |SIGMA|^2). The estimate of tr Var_eps[mu] averages N unbiased sample traces over K Gaussian draws,
    each with variance 2 tr(C^2) / (K - 1), C = A A^T; its relative standard error is
    sqrt(2 tr(C^2) / ((K - 1) N)) / tr C (0.8% here) and the share's error is (1 - share) * share
    times that. Allowed: 4 standard errors (seeded, so the check is also deterministic)."""
    points, draws = 200, 64
    x = torch.rand(points, DATA, generator=torch.Generator().manual_seed(1))
    usage = noise_usage(noise_model(encoder=LinearNoiseEncoder(shift=shift)), x, SEEDS, draws=draws)
    cov = A @ A.T
    spread, own = float(cov.trace()), float(SIGMA.square().sum())
    share = spread / (spread + own)
    relative = math.sqrt(2 * float((cov @ cov).trace()) / ((draws - 1) * points)) / spread
    assert relative < 0.01
    for member in usage.members:
        assert member.within_variance == pytest.approx(own / LATENT, rel=1e-6)  # sigma is constant
        assert member.mean_spread == pytest.approx(spread / LATENT, rel=4 * relative)
        assert member.noise_share == pytest.approx(share, abs=4 * share * (1 - share) * relative)
        for u, value in enumerate(member.coordinate_share):
            exact = float(cov[u, u] / (cov[u, u] + SIGMA[u] ** 2))
            assert value == pytest.approx(
                exact, abs=4 * exact * (1 - exact) * math.sqrt(2 / ((draws - 1) * points))
            )
    assert usage.members[0] != usage.members[1]  # each member draws from its own stream
    # Var_x[E_eps mu_u] is shift^2 Var_x[x_u]: the K-draw means add A eps-bar, whose variance C_uu / K
    # the estimate takes away; left are its sampling error, sqrt(2 / (N - 1)) C_uu / K, and the
    # cross term's, 2 sqrt(shift^2 Var_x[x_u] C_uu / (K N)). Allowed: 4 of each, over coordinates.
    images = shift**2 * x[:, :LATENT].var(0)
    error = (
        math.sqrt(2 / (points - 1)) * cov.diagonal() / draws
        + 2 * (images * cov.diagonal() / (draws * points)).sqrt()
    )
    for member in usage.members:
        assert member.image_spread == pytest.approx(float(images.mean()), abs=4 * float(error.mean()))
    if shift:  # every unit's mean moves with x (Var 4 / 12 >> 0.01): all active
        assert all(m.active_units == LATENT and m.active_share == m.noise_share for m in usage.members)


def test_noise_usage_repeats_the_arithmetic_on_the_replayed_draws_exactly():
    """Replaying the members' stream gives the eps the measure drew; the sample variances of the
    encoder's means over those draws, in float64, are its figures to rounding."""
    points, draws, batch = 30, 8, 12
    x = torch.rand(points, DATA, generator=torch.Generator().manual_seed(2))
    encoder = LinearNoiseEncoder(shift=2.0)
    usage = noise_usage(noise_model(encoder=encoder), x, SEEDS, draws=draws, batch_size=batch, seed=7)
    noise = MemberRandom(SEEDS, "noise-usage-7")
    means = []
    for chunk in x.split(batch):
        eps = split_draws(noise.normal(draws * len(chunk), NOISE), draws)  # [S, K, B, d]
        means.append(encoder(chunk.expand(len(SEEDS), draws, -1, -1), eps).loc.double())
    mu = torch.cat(means, dim=2)  # [S, K, N, Z]
    spread = mu.var(dim=1)  # [S, N, Z]
    image = mu.mean(1).var(dim=1) - spread.mean(1) / draws  # [S, Z]
    own = float(SIGMA.double().square().sum()) * points
    for m, member in enumerate(usage.members):
        assert member.mean_spread == pytest.approx(float(spread[m].mean()), rel=1e-9)
        assert member.noise_share == pytest.approx(float(spread[m].sum() / (spread[m].sum() + own)), rel=1e-9)
        assert member.image_spread == pytest.approx(float(image[m].mean()), rel=1e-9)
        assert member.active_units == int((image[m] > 0.01).sum())


def test_the_trained_architecture_with_its_noise_inputs_cut_off_uses_no_noise():
    """The real Gaussian encoder with the first layer's eps columns zeroed: the mean no longer
    depends on eps (to float rounding), and the same seed gives the same figures."""
    x = torch.rand(40, DATA, generator=torch.Generator().manual_seed(3))
    model = noise_model()
    intact = noise_usage(model, x, SEEDS, draws=16)
    assert all(m.noise_share > 1e-4 for m in intact.members)  # a random encoder does use its noise
    # repr: active_share is nan here (no active unit in a random encoder), and nan != nan
    assert repr(noise_usage(model, x, SEEDS, draws=16)) == repr(intact)
    assert repr(noise_usage(model, x, SEEDS, draws=16, seed=1)) != repr(intact)
    with torch.no_grad():
        model.encoder.net[0].weight[..., DATA:] = 0.0
    cut = noise_usage(model, x, SEEDS, draws=16)
    assert all(m.noise_share < 1e-10 for m in cut.members)


def test_avae_is_measured_and_models_without_a_gaussian_head_on_noise_are_refused():
    x = torch.rand(10, DATA)
    assert len(noise_usage(noise_model("avae"), x, SEEDS, draws=4).members) == len(SEEDS)
    with pytest.raises(ConfigError, match="has no injected noise"):
        noise_usage(noise_model("vae"), x, SEEDS)
    for implicit in ("avb", "avb-ac"):
        with pytest.raises(ConfigError, match="not applicable"):
            noise_usage(noise_model(implicit), x, SEEDS)
    with pytest.raises(ConfigError, match="at least 2 draws"):
        noise_usage(noise_model(), x, SEEDS, draws=1)


def test_the_classifier_is_trained_once_and_a_run_that_waited_for_it_did_not_train_it(tmp_path, monkeypatch):
    """Existence is checked under the lock: a run that waited while another process trained the
    classifier reports that it did not train it (so its seconds are not charged twice)."""
    from contextlib import contextmanager

    from avae.evaluation import analysis

    trained = []

    def tiny_training(dataset, **kwargs):
        trained.append(dataset)
        return nn.Sequential(nn.Linear(2, 2)), {"accuracy": 1.0}

    monkeypatch.setattr(analysis, "train_classifier", tiny_training)
    first = tmp_path / "first.safetensors"
    assert analysis.train_classifier_once(first, "mnist") is True
    assert analysis.train_classifier_once(first, "mnist") is False and trained == ["mnist"]
    waited = tmp_path / "waited.safetensors"
    real_lock = analysis.file_lock

    @contextmanager
    def lock_taken_after_another_process_wrote_it(path):
        waited.write_bytes(first.read_bytes())  # the other process finished while this one waited
        with real_lock(path):
            yield

    monkeypatch.setattr(analysis, "file_lock", lock_taken_after_another_process_wrote_it)
    assert analysis.train_classifier_once(waited, "fashion-mnist") is False and trained == ["mnist"]
    assert analysis.ensure_classifier(waited, "fashion-mnist") == waited

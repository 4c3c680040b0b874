"""The shared losses against independent closed-form computations."""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal

from avae.core import objectives as obj


def test_kl_to_prior_matches_closed_form():
    mu, sigma = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, 2.0]])
    expected = 0.5 * (sigma**2 + mu**2 - 1 - torch.log(sigma**2)).sum(-1)
    torch.testing.assert_close(obj.kl_to_prior(Normal(mu, sigma)), expected)


def test_bernoulli_log_likelihood_on_grey_pixels_is_the_cross_entropy():
    logits, x = torch.tensor([[0.3, -2.0, 1.5]]), torch.tensor([[0.2, 0.0, 0.9]])
    p = torch.sigmoid(logits)
    expected = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)
    torch.testing.assert_close(obj.log_likelihood("bernoulli", logits, x), expected)


def test_continuous_bernoulli_is_normalised_on_the_unit_interval():
    logits = torch.tensor([[-3.0], [0.7], [4.0]])
    grid = torch.linspace(0, 1, 20001)[1:-1].unsqueeze(0).expand(3, -1).unsqueeze(-1)
    density = obj.log_likelihood(
        "continuous-bernoulli", logits.unsqueeze(1).expand(-1, grid.shape[1], -1), grid
    ).exp()
    integral = torch.trapezoid(density, dx=1 / 20000, dim=1)
    torch.testing.assert_close(integral, torch.ones(3), atol=2e-3, rtol=0)


def test_logistic_discriminator_loss_and_optimum():
    pos, neg = torch.tensor([[2.0, 0.0]]), torch.tensor([[-1.0, 3.0]])
    expected = torch.tensor(
        [(math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(-1)) + math.log1p(math.exp(3))) / 2]
    )
    torch.testing.assert_close(obj.logistic_discriminator_loss(pos, neg), expected)
    assert obj.discriminator_accuracy(pos, neg).item() == 0.5


def test_adversarial_losses():
    fake = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(
        obj.adversarial_encoder_loss("non-saturating", fake),
        torch.nn.functional.softplus(-fake).mean(-1),
    )
    torch.testing.assert_close(
        obj.adversarial_encoder_loss("minimax", fake), -torch.nn.functional.softplus(fake).mean(-1)
    )


def test_log_mean_exp():
    values = torch.tensor([[1.0, 2.0, 3.0]])
    expected = math.log((math.e + math.e**2 + math.e**3) / 3)
    assert abs(obj.log_mean_exp(values, -1).item() - expected) < 1e-6

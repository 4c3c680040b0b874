"""Every loss and bound of the paper, written once and shared by the models and the evaluators.

Shape convention: data x is [S, B, D] (members, batch, pixels); a per-example quantity is [S, B];
a per-member loss is [S] (the mean over the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Normal, kl_divergence

from avae.errors import ConfigError

LIKELIHOODS: dict[str, Callable[[torch.Tensor], Distribution]] = {
    # Bernoulli on grey levels is the paper's choice; it is a proper likelihood only for binary x.
    "bernoulli": lambda logits: Bernoulli(logits=logits, validate_args=False),
    # The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) is normalised on [0, 1].
    "continuous-bernoulli": lambda logits: ContinuousBernoulli(logits=logits, validate_args=False),
}


def check_choice(kind: str, name: str, choices: dict | tuple) -> None:
    if name not in choices:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {', '.join(choices)}")


def decoder_distribution(likelihood: str, logits: torch.Tensor) -> Distribution:
    check_choice("likelihood", likelihood, LIKELIHOODS)
    return LIKELIHOODS[likelihood](logits)


def log_likelihood(likelihood: str, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p_theta(x|z), summed over pixels: [..., D] -> [...]."""
    return decoder_distribution(likelihood, logits).log_prob(x).sum(-1)


def standard_normal_like(z: torch.Tensor) -> Normal:
    return Normal(torch.zeros_like(z), torch.ones_like(z))


def kl_to_prior(q: Normal) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), analytic, summed over latent dimensions (eq. 1 and eq. 9)."""
    return kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))).sum(-1)


def log_prior(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over latent dimensions."""
    return standard_normal_like(z).log_prob(z).sum(-1)


def neg_elbo_gaussian(log_px_z: torch.Tensor, q: Normal) -> torch.Tensor:
    """-(E_q log p(x|z) - KL(q || p)) with a one-sample reconstruction term (eqs. 1, 9)."""
    return -(log_px_z - kl_to_prior(q))


def logistic_discriminator_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a discriminator that should say 1 on `pos` and 0 on `neg`.

    AVB's T (eq. 6) takes (x, z~q) as positive and (x, z~p) as negative; AVAE's D (eq. 13) takes
    (x, z'~p) as "real" (positive) and (x, z~q) as "fake". Returns the per-member mean [S].
    """
    return (F.softplus(-pos_logits) + F.softplus(neg_logits)).mean(-1)


def discriminator_accuracy(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    correct = (pos_logits > 0).float().mean(-1) + (neg_logits < 0).float().mean(-1)
    return correct / 2


ADVERSARIAL_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # -log D(x, z): the encoder makes its samples look "real" (strong gradients early on).
    "non-saturating": lambda fake_logits: F.softplus(-fake_logits),
    # log(1 - D(x, z)): the literal min-max of eq. 14.
    "minimax": lambda fake_logits: -F.softplus(fake_logits),
}


def adversarial_encoder_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """The encoder's loss against D on its own samples (eq. 14), per-member mean [S]."""
    check_choice("adversarial loss", kind, ADVERSARIAL_LOSSES)
    return ADVERSARIAL_LOSSES[kind](fake_logits).mean(-1)


def log_mean_exp(values: torch.Tensor, dim: int) -> torch.Tensor:
    """log (1/K) sum_k exp(values_k) along `dim`, computed stably."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])

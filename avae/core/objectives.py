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

from avae.errors import check_choice

LIKELIHOODS: dict[str, Callable[[torch.Tensor], Distribution]] = {
    # Bernoulli on grey levels is the paper's choice; it is a proper likelihood only for binary x.
    "bernoulli": lambda logits: Bernoulli(logits=logits, validate_args=False),
    # The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) is normalised on [0, 1].
    "continuous-bernoulli": lambda logits: ContinuousBernoulli(logits=logits, validate_args=False),
}


def decoder_distribution(likelihood: str, logits: torch.Tensor) -> Distribution:
    check_choice("likelihood", likelihood, LIKELIHOODS)
    return LIKELIHOODS[likelihood](logits)


def log_likelihood(likelihood: str, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p_theta(x|z), summed over pixels: [..., D] -> [...]."""
    return decoder_distribution(likelihood, logits).log_prob(x).sum(-1)


def standard_normal_like(z: torch.Tensor) -> Normal:
    return Normal(torch.zeros_like(z), torch.ones_like(z), validate_args=False)


def kl_to_prior(q: Normal) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), analytic, summed over latent dimensions (eq. 1 and eq. 9)."""
    return kl_divergence(q, standard_normal_like(q.loc)).sum(-1)


def log_prior(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over latent dimensions."""
    return standard_normal_like(z).log_prob(z).sum(-1)


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


# --- Bounds and estimates of log p(x), shared by every evaluator (avae.evaluation.evaluate) -----------------
#
# Shapes: a quantity per sample is [n, S, B] (samples, members, test points); the result per
# test point is [S, B]. Every function returns log p(x)-type values (higher is better).


def importance_log_weights(log_joint: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """log w = log p(x, z) - log q(z) for z ~ q: the summands of every importance-sampling bound."""
    return log_joint - log_q


def iwae_bound(log_weights: torch.Tensor, k: int) -> torch.Tensor:
    """IWAE-k (Burda et al. 2016): E[log (1/k) sum_{i<=k} w_i] <= log p(x), for any proposal q with
    a density. `log_weights` [n, ...] with n >= k holds n // k independent groups of k; the groups'
    bounds are averaged (same expectation, lower variance): [...]."""
    groups = log_weights.shape[0] // k
    if groups < 1:
        raise ValueError(f"iwae_bound needs at least k={k} log-weights, got {log_weights.shape[0]}")
    grouped = log_weights[: groups * k].reshape(groups, k, *log_weights.shape[1:])
    return log_mean_exp(grouped, 1).mean(0)


def sivi_log_weights(log_joint: torch.Tensor, log_q_own: torch.Tensor, log_q_extra: torch.Tensor):
    """The summand of SIVI's L_K (Yin & Zhou 2018, eq. 5) for a semi-implicit q(z|x) = E_eps q(z|x, eps):
    log p(x, z) - log [(q(z|x, eps^(0)) + sum_k q(z|x, eps^(k))) / (K + 1)], z ~ q(z|x, eps^(0)).

    `log_joint`, `log_q_own` [n, ...]; `log_q_extra` [n, K, ...]. Its mean is a lower bound on
    log p(x) for every K >= 0 and rises towards it as K grows."""
    stacked = torch.cat([log_q_own.unsqueeze(1), log_q_extra], dim=1)
    return log_joint - log_mean_exp(stacked, 1)


def sigmoid_schedule(steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_T = 1 (Grosse et al. 2015, Wu et al. 2017):
    a sigmoid rescaled to [0, 1], dense at both ends where the path changes fastest. [T + 1], float64."""
    if steps < 1:
        raise ValueError(f"an annealing schedule needs at least one step, got {steps}")
    s = torch.sigmoid(sharpness * torch.linspace(-1.0, 1.0, steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def ais_log_weight_step(
    log_lik: torch.Tensor, beta_from: float | torch.Tensor, beta_to: float | torch.Tensor
) -> torch.Tensor:
    """AIS's increment log f_to(z) - log f_from(z) = (beta_to - beta_from) log p(x|z) on the path."""
    return (beta_to - beta_from) * log_lik


def fitted_gaussian(samples: torch.Tensor, dim: int, inflate: float = 1.0, min_scale: float = 1e-4) -> Normal:
    """A diagonal Gaussian with the sample mean and standard deviation along `dim`, the scale
    multiplied by `inflate` (>= 1 fattens the tails) and floored at `min_scale`: a proposal with a
    density for an encoder that only gives samples (AVB)."""
    loc = samples.mean(dim)
    scale = samples.std(dim).mul(inflate).clamp_min(min_scale)
    return Normal(loc, scale, validate_args=False)


# Draws x ~ p(x|z) from uniforms u of the logits' shape (inverse CDF), so the caller owns the randomness.
LIKELIHOOD_SAMPLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bernoulli": lambda logits, u: (u < torch.sigmoid(logits)).to(logits.dtype),
    "continuous-bernoulli": lambda logits, u: ContinuousBernoulli(logits=logits, validate_args=False).icdf(
        u.clamp(1e-6, 1 - 1e-6)
    ),
}


def sample_likelihood(likelihood: str, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    check_choice("likelihood", likelihood, LIKELIHOOD_SAMPLERS)
    return LIKELIHOOD_SAMPLERS[likelihood](logits, uniforms)


def is_normalised_likelihood(likelihood: str, pixels: str) -> bool:
    """True when log p(x|z) is a normalised density (or mass) for data of this kind, so that
    bounds on log p(x) are bounds on a log-likelihood: binary pixels under a Bernoulli decoder,
    grey levels in [0, 1] under a continuous Bernoulli one."""
    return (likelihood, pixels) in {("bernoulli", "binarized"), ("continuous-bernoulli", "continuous")}

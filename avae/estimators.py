"""Estimators of log p(x), written over callables so that the same code runs on the trained
models and on the exact linear-Gaussian model of the tests.

- IWAE-k (Burda et al. 2016): a lower bound for any proposal with a density.
- SIVI's L_K (Yin & Zhou 2018) for semi-implicit (noise-injected) encoders.
- AIS (Neal 2001) from the prior along p(z) p(x|z)^beta with HMC transitions; several chains per
  point combined by log-mean-exp (a stochastic lower bound: E[log Z_hat] <= log p(x)). The HMC
  step sizes come from a discarded pilot run and are then fixed, so the weights are exactly unbiased.
- Reverse AIS from an exact posterior draw, the upper half of BDMC (Grosse et al. 2015).

Shapes: z is [n, S, B, Z] (samples or chains, members, test points, latent); per-sample values
are [n, S, B]; member s draws only from its own generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.distributions import Normal

from avae import objectives as obj
from avae.nets import MemberRandom

LogDensity = Callable[[torch.Tensor], torch.Tensor]  # z [n, S, B, Z] -> [n, S, B]


# --- randomness: member s draws only from its own generator ---------------------------------------


def normal_draws(noise: MemberRandom, n: int, *shape: int) -> torch.Tensor:
    """Standard normals [n, S, *shape]."""
    return noise.normal(n, *shape).movedim(0, 1)


def uniform_draws(noise: MemberRandom, n: int, *shape: int) -> torch.Tensor:
    """Uniforms on [0, 1), [n, S, *shape]."""
    draws = [torch.rand((n, *shape), generator=g, device=noise.device) for g in noise.generators]
    return torch.stack(draws, dim=1)


def gaussian_sampler(q: Normal, noise: MemberRandom) -> Callable[[int], torch.Tensor]:
    """n reparameterised draws from q [S, B, Z]: [n, S, B, Z]."""
    return lambda n: q.loc + q.scale * normal_draws(noise, n, *q.loc.shape[1:])


def gaussian_log_density(q: Normal) -> LogDensity:
    return lambda z: q.log_prob(z).sum(-1)


# --- the estimators, generic over callables --------------------------------------------------------


def iwae_log_weights(
    log_joint: LogDensity, sample_q: Callable[[int], torch.Tensor], log_q: LogDensity, k: int, chunk: int
) -> torch.Tensor:
    """k importance log-weights per point, drawn `chunk` at a time: [k, S, B]."""
    parts = []
    for start in range(0, k, chunk):
        z = sample_q(min(chunk, k - start))
        parts.append(obj.importance_log_weights(log_joint(z), log_q(z)))
    return torch.cat(parts)


def iwae(log_joint, sample_q, log_q, ks: Sequence[int], chunk: int) -> dict[int, torch.Tensor]:
    """IWAE-k for every k in `ks` from one set of max(ks) log-weights, each k averaging its
    max(ks) // k disjoint groups: {k: [S, B]}."""
    log_w = iwae_log_weights(log_joint, sample_q, log_q, max(ks), chunk)
    return {k: obj.iwae_bound(log_w, k) for k in ks}


def sivi(log_joint: LogDensity, own: Normal, extra: Normal, noise: MemberRandom) -> torch.Tensor:
    """SIVI's L_K per point, [S, B]: z ~ own[j] (one eps1^(0) each, [n, S, B, Z]); the K components
    `extra` [K, S, B, Z] (eps1^(1..K)) are shared by the n draws, which only correlates them."""
    z = own.loc + own.scale * normal_draws(noise, own.loc.shape[0], *own.loc.shape[2:])
    log_q_own = own.log_prob(z).sum(-1)
    log_q_extra = extra.log_prob(z.unsqueeze(1)).sum(-1)  # [n, K, S, B]
    return obj.sivi_log_weights(log_joint(z), log_q_own, log_q_extra).mean(0)


@dataclass
class HMCSettings:
    leapfrog: int = 10
    step_size: float = 0.05  # initial step of the pilot run, which adapts it per member and test point
    target_accept: float = 0.65
    adapt: float = 0.02  # the pilot multiplies its step size by 1 +/- adapt after every transition
    pilot_chains: int = 1  # chains of the pilot run that sets the step-size schedule (then discarded)


def ais(
    log_prior: LogDensity,
    log_lik: LogDensity,
    z0: torch.Tensor,
    betas: torch.Tensor,
    noise: MemberRandom,
    hmc: HMCSettings,
    step_sizes: torch.Tensor | None = None,
    z0_pilot: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Annealed importance sampling (Neal 2001) from z0 [C, S, B, Z] (exact draws from the start of
    the path) along log p(z) + beta log p(x|z), beta = betas[0] .. betas[-1]. Each step adds the
    weight increment and then makes one HMC transition that leaves the new intermediate invariant.

    Transition t (1..T) uses the fixed step sizes `step_sizes[t - 1]` ([T, S, B]): the counted chains
    never adapt, so every transition is a fixed kernel and the weights are exactly unbiased. Without
    a schedule, a pilot run (`pilot_step_sizes`) makes one first, from `z0_pilot` [P, S, B, Z] if
    given, else from copies of z0[:hmc.pilot_chains]; the pilot draws its own momenta and
    acceptances from `noise` (before the counted chains do) and its chains are discarded.

    Returns log-weights [C, S, B] and acceptance statistics of the counted chains. With betas 0 -> 1
    and z0 ~ p(z), log_mean_exp over chains estimates log p(x) from below (in expectation); with
    betas 1 -> 0 and z0 ~ p(z|x), -log_mean_exp estimates it from above (reverse AIS, the upper
    half of BDMC, Grosse et al. 2015; there the default pilot also starts from the exact draw).
    """
    if step_sizes is None:
        start = z0[: hmc.pilot_chains].clone() if z0_pilot is None else z0_pilot
        step_sizes = pilot_step_sizes(log_prior, log_lik, start, betas, noise, hmc)
    steps = len(betas) - 1
    if step_sizes.shape[0] != steps:
        raise ValueError(f"step_sizes needs one row per transition ({steps}), got {step_sizes.shape[0]}")
    schedule = step_sizes.to(z0.device).expand(steps, *z0.shape[1:-1])
    log_w, used, acceptance = _anneal(log_prior, log_lik, z0, betas, noise, hmc, schedule)
    final = used[-1] if steps else torch.full(z0.shape[1:-1], hmc.step_size)
    return log_w, {"mean_acceptance": acceptance, "final_step_size_median": float(final.median())}


def pilot_step_sizes(
    log_prior: LogDensity,
    log_lik: LogDensity,
    z0_pilot: torch.Tensor,
    betas: torch.Tensor,
    noise: MemberRandom,
    hmc: HMCSettings,
) -> torch.Tensor:
    """The step-size schedule [T, S, B] of a pilot AIS run from z0_pilot [P, S, B, Z] along `betas`:
    starting at hmc.step_size, the step of each member and point is multiplied by 1 + adapt (1 -
    adapt) after every transition whose acceptance probability, averaged over the P chains, is above
    (below) hmc.target_accept. Row t - 1 is the step used by transition t. The pilot's chains and
    weights are discarded, so the counted run that reuses the schedule (`ais`) does not depend on
    its own history and its weights stay unbiased (Neal 2001)."""
    return _anneal(log_prior, log_lik, z0_pilot, betas, noise, hmc, None)[1]


def _anneal(log_prior, log_lik, z0, betas, noise, hmc: HMCSettings, schedule: torch.Tensor | None):
    """Runs the AIS chains; with `schedule` None the step adapts after every transition.
    Returns the log-weights [C, S, B], the steps used [T, S, B] and the mean acceptance."""
    z = z0.detach()
    state = _evaluate(log_prior, log_lik, z)
    log_w = torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    step = torch.full(z.shape[1:-1], hmc.step_size, device=z.device)  # [S, B]
    used = []
    accepted = torch.zeros((), device=z.device)  # summed on the device: no host sync per step
    for t in range(1, len(betas)):
        step = step if schedule is None else schedule[t - 1]
        used.append(step)
        beta_from, beta_to = float(betas[t - 1]), float(betas[t])
        log_w += obj.ais_log_weight_step(state[1], beta_from, beta_to).double()
        z, state, accept_prob = hmc_transition(log_prior, log_lik, z, state, beta_to, step, noise, hmc)
        rate = accept_prob.mean(0)  # over chains
        if schedule is None:
            step = step * torch.where(rate > hmc.target_accept, 1 + hmc.adapt, 1 - hmc.adapt)
        accepted += rate.mean()
    steps = torch.stack(used) if used else torch.empty(0, *z.shape[1:-1], device=z.device)
    return log_w, steps, float(accepted) / max(1, len(betas) - 1)


def _evaluate(log_prior: LogDensity, log_lik: LogDensity, z: torch.Tensor):
    """log p(z), log p(x|z) and their gradients in z."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp, ll = log_prior(z), log_lik(z)
        grad_lp = torch.autograd.grad(lp.sum(), z, retain_graph=True)[0]
        grad_ll = torch.autograd.grad(ll.sum(), z)[0]
    return lp.detach(), ll.detach(), grad_lp, grad_ll


def hmc_transition(log_prior, log_lik, z, state, beta, step, noise, hmc: HMCSettings):
    """One HMC step (L leapfrog steps, Metropolis correction) targeting log p(z) + beta log p(x|z)."""
    lp0, ll0, glp, gll = state
    eps = step.unsqueeze(0).unsqueeze(-1)  # [1, S, B, 1]
    p0 = normal_draws(noise, z.shape[0], *z.shape[2:])
    p = p0 + 0.5 * eps * (glp + beta * gll)
    new, new_state = z, state
    for i in range(hmc.leapfrog):
        new = new + eps * p
        new_state = _evaluate(log_prior, log_lik, new)
        grad = new_state[2] + beta * new_state[3]
        p = p + (eps if i < hmc.leapfrog - 1 else 0.5 * eps) * grad
    lp1, ll1 = new_state[0], new_state[1]
    h0 = -(lp0 + beta * ll0) + 0.5 * p0.pow(2).sum(-1)
    h1 = -(lp1 + beta * ll1) + 0.5 * p.pow(2).sum(-1)
    log_accept = (h0 - h1).clamp(max=0).nan_to_num(nan=-math.inf)
    accept = torch.log(uniform_draws(noise, z.shape[0], *z.shape[2:-1])) < log_accept
    keep = accept.unsqueeze(-1)
    z = torch.where(keep, new, z)
    state = tuple(
        torch.where(keep if s.dim() == z.dim() else accept, n, s)
        for s, n in zip(state, new_state, strict=True)
    )
    return z, state, log_accept.exp()


def ais_log_marginal(log_w: torch.Tensor) -> torch.Tensor:
    """Forward AIS: log (1/C) sum_c w_c, [S, B]."""
    return obj.log_mean_exp(log_w, 0)


def reverse_ais_log_marginal(log_w: torch.Tensor) -> torch.Tensor:
    """Reverse AIS estimates 1/p(x) without bias: -log (1/C) sum_c w_c bounds log p(x) from above."""
    return -obj.log_mean_exp(log_w, 0)


# --- the trained models as callables ---------------------------------------------------------------


def log_joint_of(log_lik: LogDensity) -> LogDensity:
    return lambda z: obj.log_prior(z) + log_lik(z)

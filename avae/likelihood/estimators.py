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

from avae.core import objectives as obj
from avae.core.graphs import GraphedCall
from avae.core.nets import MemberRandom

LogDensity = Callable[[torch.Tensor], torch.Tensor]  # z [n, S, B, Z] -> [n, S, B]


# --- randomness: member s draws only from its own generator ---------------------------------------


def normal_draws(noise: MemberRandom, n: int, *shape: int) -> torch.Tensor:
    """Standard normals [n, S, *shape]."""
    return noise.normal(n, *shape).movedim(0, 1)


def uniform_draws(noise: MemberRandom, n: int, *shape: int) -> torch.Tensor:
    """Uniforms on [0, 1), [n, S, *shape]."""
    draws = [torch.rand((n, *shape), generator=g, device=noise.device) for g in noise.generators]
    return torch.stack(draws, dim=1)


def iwae_log_weights(
    log_joint: LogDensity, q: Normal, noise: MemberRandom, k: int, chunk: int, graphed: bool = False
) -> torch.Tensor:
    """k importance log-weights per point for z ~ q [S, B, Z], drawn `chunk` at a time: [k, S, B].

    One chunk (reparameterised draws from static noise, log p(x, z) - log q(z)) is a replayable
    unit: with `graphed` (CUDA) it is captured once and replayed for every full chunk; the noise is
    drawn from the members' streams into its buffer before each call, exactly as the eager code
    draws it, so the numbers do not depend on `graphed`. A last, shorter chunk runs eagerly."""
    eps = torch.empty(min(chunk, k), *q.loc.shape, device=q.loc.device)

    def weights(draws: torch.Tensor) -> torch.Tensor:
        z = q.loc + q.scale * draws
        return obj.importance_log_weights(log_joint(z), q.log_prob(z).sum(-1))

    log_w = torch.empty(k, *q.loc.shape[:-1], dtype=q.loc.dtype, device=q.loc.device)
    with GraphedCall(lambda: weights(eps), enabled=graphed, name="IWAE chunk") as unit:
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            draws = normal_draws(noise, n, *q.loc.shape[1:])
            if n == len(eps):
                eps.copy_(draws)
                log_w[start : start + n].copy_(unit())
            else:
                log_w[start : start + n].copy_(weights(draws))
    return log_w


def iwae(
    log_joint: LogDensity,
    q: Normal,
    noise: MemberRandom,
    ks: Sequence[int],
    chunk: int,
    graphed: bool = False,
) -> dict[int, torch.Tensor]:
    """IWAE-k for every k in `ks` from one set of max(ks) log-weights with proposal q, each k
    averaging its max(ks) // k disjoint groups: {k: [S, B]}."""
    log_w = iwae_log_weights(log_joint, q, noise, max(ks), chunk, graphed)
    return {k: obj.iwae_bound(log_w, k) for k in ks}


def sivi(log_joint: LogDensity, own: Normal, extra: Normal, noise: MemberRandom) -> torch.Tensor:
    """SIVI's L_K per point, [S, B]: z ~ own[j] (one eps1^(0) each, [n, S, B, Z]); the K components
    `extra` [K, S, B, Z] (eps1^(1..K)) are shared by the n draws, which only correlates them.
    (Not a replayable unit: per batch of points it is a handful of large kernels over [n, K, S, B, Z]
    (no inner loop), so a CUDA graph would save only those few launches.)"""
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
    graphed: bool = False,
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
    With `graphed` (CUDA) each transition is one CUDA-graph replay (`AISChains`); same numbers.
    """
    if step_sizes is None:
        start = z0[: hmc.pilot_chains].clone() if z0_pilot is None else z0_pilot
        step_sizes = pilot_step_sizes(log_prior, log_lik, start, betas, noise, hmc, graphed)
    steps = len(betas) - 1
    if step_sizes.shape[0] != steps:
        raise ValueError(f"step_sizes needs one row per transition ({steps}), got {step_sizes.shape[0]}")
    schedule = step_sizes.to(z0.device).expand(steps, *z0.shape[1:-1])
    log_w, used, acceptance = _anneal(log_prior, log_lik, z0, betas, noise, hmc, schedule, graphed)
    final = used[-1] if steps else torch.full(z0.shape[1:-1], hmc.step_size, device=z0.device)
    return log_w, {
        "mean_acceptance": float(acceptance.mean()),
        "final_step_size_median": float(final.median()),
        "acceptance": acceptance,  # [S], each member's mean acceptance rate (an evaluation pack's share)
        "final_step_size": final,  # [S, B]
    }


def pilot_step_sizes(
    log_prior: LogDensity,
    log_lik: LogDensity,
    z0_pilot: torch.Tensor,
    betas: torch.Tensor,
    noise: MemberRandom,
    hmc: HMCSettings,
    graphed: bool = False,
) -> torch.Tensor:
    """The step-size schedule [T, S, B] of a pilot AIS run from z0_pilot [P, S, B, Z] along `betas`:
    starting at hmc.step_size, the step of each member and point is multiplied by 1 + adapt (1 -
    adapt) after every transition whose acceptance probability, averaged over the P chains, is above
    (below) hmc.target_accept. Row t - 1 is the step used by transition t. The pilot's chains and
    weights are discarded, so the counted run that reuses the schedule (`ais`) does not depend on
    its own history and its weights stay unbiased (Neal 2001)."""
    return _anneal(log_prior, log_lik, z0_pilot, betas, noise, hmc, None, graphed)[1]


def _anneal(log_prior, log_lik, z0, betas, noise, hmc: HMCSettings, schedule, graphed: bool):
    """Runs the AIS chains; with `schedule` None the step adapts after every transition.
    Returns the log-weights [C, S, B], the steps used [T, S, B] and each member's mean acceptance [S].

    Per transition, outside the replayable unit: beta and the weight increment's factor, the step
    size (from the schedule) and the member-stream draws (momenta, then the Metropolis uniforms,
    as the textbook loop draws them) are copied into the chains' static buffers."""
    chains = AISChains(log_prior, log_lik, z0, hmc)
    transitions = len(betas) - 1
    coefficients = torch.stack([betas[:-1], betas[1:]], dim=1).to(z0.device)  # [T, 2]: from, to
    adapt = schedule is None
    used = schedule if not adapt else torch.empty(transitions, *z0.shape[1:-1], device=z0.device)
    count, points = z0.shape[0], z0.shape[2:]  # chains; [B, Z] per member
    with GraphedCall(lambda: chains.transition(adapt), enabled=graphed, name="AIS transition") as unit:
        for t in range(transitions):
            chains.coefficients.copy_(coefficients[t])
            if adapt:
                used[t].copy_(chains.step)  # the pilot's schedule: the step this transition uses
            else:
                chains.step.copy_(schedule[t])
            chains.momentum.copy_(normal_draws(noise, count, *points))
            chains.uniform.copy_(uniform_draws(noise, count, *points[:-1]))
            unit()
    return chains.log_w, used, chains.accepted.double().cpu() / max(1, transitions)


def _evaluate(log_prior: LogDensity, log_lik: LogDensity, z: torch.Tensor):
    """log p(z), log p(x|z) and their gradients in z."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp, ll = log_prior(z), log_lik(z)
        grad_lp = torch.autograd.grad(lp.sum(), z, retain_graph=True)[0]
        grad_ll = torch.autograd.grad(ll.sum(), z)[0]
    return lp.detach(), ll.detach(), grad_lp, grad_ll


class AISChains:
    """C AIS chains [C, S, B, Z] in static buffers: the position z, its log p(z), log p(x|z) and
    their gradients, the log-weights (float64), the step size [S, B], the transition's betas
    (`coefficients`: beta_{t-1} and beta_t, float64 on the device, so that a captured transition
    reads the current values rather than constants baked in), this transition's momenta and
    uniforms, and each member's summed acceptance rate [S]. `transition` updates them all in place."""

    def __init__(self, log_prior: LogDensity, log_lik: LogDensity, z0: torch.Tensor, hmc: HMCSettings):
        self.log_prior, self.log_lik, self.hmc = log_prior, log_lik, hmc
        self.z = z0.detach().clone()
        self.lp, self.ll, self.glp, self.gll = _evaluate(log_prior, log_lik, self.z)
        device = z0.device
        self.log_w = torch.zeros(z0.shape[:-1], dtype=torch.float64, device=device)
        self.step = torch.full(z0.shape[1:-1], hmc.step_size, device=device)  # [S, B]
        self.coefficients = torch.zeros(2, dtype=torch.float64, device=device)
        self.momentum = torch.zeros(z0.shape, device=device)  # the draws' dtype (float32)
        self.uniform = torch.zeros(z0.shape[:-1], device=device)
        self.accepted = torch.zeros(z0.shape[1], device=device)  # [S]

    def transition(self, adapt: bool) -> None:
        """The weight increment (beta_t - beta_{t-1}) log p(x|z), then one HMC transition (L leapfrog
        steps and the Metropolis correction) targeting log p(z) + beta_t log p(x|z); with `adapt`
        the step then grows (shrinks) where the acceptance rate over chains is above (below) the
        target (the pilot run)."""
        beta_from, beta = self.coefficients[0], self.coefficients[1]
        self.log_w += obj.ais_log_weight_step(self.ll, beta_from, beta).double()
        proposal, proposal_state, momentum = self._leapfrog(beta)
        h0 = -(self.lp + beta * self.ll) + 0.5 * self.momentum.pow(2).sum(-1)
        h1 = -(proposal_state[0] + beta * proposal_state[1]) + 0.5 * momentum.pow(2).sum(-1)
        log_accept = (h0 - h1).clamp(max=0).nan_to_num(nan=-math.inf)
        accept = torch.log(self.uniform) < log_accept
        self.z.copy_(torch.where(accept.unsqueeze(-1), proposal, self.z))
        for old, new in zip((self.lp, self.ll, self.glp, self.gll), proposal_state, strict=True):
            old.copy_(torch.where(accept if old.dim() == accept.dim() else accept.unsqueeze(-1), new, old))
        rate = log_accept.exp().mean(0)  # over chains, [S, B]
        if adapt:
            hmc = self.hmc
            self.step.mul_(torch.where(rate > hmc.target_accept, 1 + hmc.adapt, 1 - hmc.adapt))
        self.accepted += rate.mean(-1)

    def _leapfrog(self, beta: torch.Tensor):
        """L leapfrog steps from (z, momentum): the proposal, its state and its final momentum."""
        eps = self.step.unsqueeze(0).unsqueeze(-1)  # [1, S, B, 1]
        p = self.momentum + 0.5 * eps * (self.glp + beta * self.gll)
        z, state = self.z, None
        for i in range(self.hmc.leapfrog):
            z = z + eps * p
            state = _evaluate(self.log_prior, self.log_lik, z)
            p = p + (eps if i < self.hmc.leapfrog - 1 else 0.5 * eps) * (state[2] + beta * state[3])
        return z, state, p


def ais_log_marginal(log_w: torch.Tensor) -> torch.Tensor:
    """Forward AIS: log (1/C) sum_c w_c, [S, B]."""
    return obj.log_mean_exp(log_w, 0)


def reverse_ais_log_marginal(log_w: torch.Tensor) -> torch.Tensor:
    """Reverse AIS estimates 1/p(x) without bias: -log (1/C) sum_c w_c bounds log p(x) from above."""
    return -obj.log_mean_exp(log_w, 0)


# --- the trained models as callables ---------------------------------------------------------------


def log_joint_of(log_lik: LogDensity) -> LogDensity:
    return lambda z: obj.log_prior(z) + log_lik(z)

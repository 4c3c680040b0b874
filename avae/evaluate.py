"""Evaluation of trained members: each model's own objective (the paper's ELBO), and estimates of
log p(x) that mean the same thing for every model.

- `neg_elbo`: the model's own objective. A lower bound on log p(x) for VAE, VAE+eps and AVAE; for
  AVB a discriminator-based estimate, not a bound.
- IWAE-k (Burda et al. 2016) with each model's `proposal`: a lower bound for any proposal with a
  density, tightening as k grows.
- SIVI's L_K (Yin & Zhou 2018) for the noise-injected (semi-implicit) encoders.
- AIS (Neal 2001) from the prior along p(z) p(x|z)^beta with HMC transitions; several chains per
  point combined by log-mean-exp (a stochastic lower bound: E[log Z_hat] <= log p(x)).
- BDMC (Grosse et al. 2015): on data simulated from the model, forward AIS gives a stochastic
  lower bound and reverse AIS started from the true z an upper bound; their gap bounds AIS's error.

The estimators are written over callables (`log_prior(z)`, `log_lik(z)`, `log_q(z)`, samplers), so
the same code runs on the trained models and on the exact linear-Gaussian model of the tests.
Shapes: z is [n, S, B, Z] (samples or chains, members, test points, latent); per-sample values
are [n, S, B]; every member is evaluated at once. All figures in eval.json are negative
log-likelihood-type values in nats (lower is better), as in the paper's Table 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributions import Normal

from avae import objectives as obj
from avae.errors import ConfigError
from avae.models import LatentModel
from avae.nets import MemberRandom

LogDensity = Callable[[torch.Tensor], torch.Tensor]  # z [n, S, B, Z] -> [n, S, B]
METRICS = ("elbo", "iwae", "sivi", "ais", "bdmc")  # names accepted by --metrics / `metrics=`
ALIASES = {"neg_elbo": "elbo"}
ELEMENT_BUDGET = 1 << 23  # decoder logits held at once (floats): bounds memory when chunking over k


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
    step_size: float = 0.05  # initial; adapted per member and test point
    target_accept: float = 0.65
    adapt: float = 0.02  # multiply the step size by 1 +/- adapt after every transition


def ais(
    log_prior: LogDensity,
    log_lik: LogDensity,
    z0: torch.Tensor,
    betas: torch.Tensor,
    noise: MemberRandom,
    hmc: HMCSettings,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Annealed importance sampling from z0 [C, S, B, Z] (exact draws from the start of the path)
    along log p(z) + beta log p(x|z), beta = betas[0] .. betas[-1]. Each step adds the weight
    increment and then makes one HMC transition that leaves the new intermediate invariant.

    Returns log-weights [C, S, B] and acceptance statistics. With betas 0 -> 1 and z0 ~ p(z),
    log_mean_exp over chains estimates log p(x) from below (in expectation); with betas 1 -> 0 and
    z0 ~ p(z|x), -log_mean_exp estimates it from above (reverse AIS, BDMC).
    """
    z = z0.detach()
    state = _evaluate(log_prior, log_lik, z)
    log_w = torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    step = torch.full(z.shape[1:-1], hmc.step_size, device=z.device)  # [S, B]
    accepted = torch.zeros((), device=z.device)  # summed on the device: no host sync per step
    for t in range(1, len(betas)):
        beta_from, beta_to = float(betas[t - 1]), float(betas[t])
        log_w += obj.ais_log_weight_step(state[1], beta_from, beta_to).double()
        z, state, accept_prob = hmc_transition(log_prior, log_lik, z, state, beta_to, step, noise, hmc)
        rate = accept_prob.mean(0)  # over chains
        step = step * torch.where(rate > hmc.target_accept, 1 + hmc.adapt, 1 - hmc.adapt)
        accepted += rate.mean()
    return log_w, {
        "mean_acceptance": float(accepted) / max(1, len(betas) - 1),
        "final_step_size_median": float(step.median()),
    }


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


def model_log_lik(model: LatentModel, x: torch.Tensor) -> LogDensity:
    """z [n, S, B, Z] -> log p(x|z) [n, S, B] for data x [S, B, D], all n in one decoder call."""
    members, batch, dim = x.shape

    def log_lik(z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        flat = z.movedim(0, 1).reshape(members, n * batch, -1)
        xs = x.unsqueeze(1).expand(members, n, batch, dim).reshape(members, n * batch, dim)
        return model.log_px_given_z(xs, flat).reshape(members, n, batch).movedim(1, 0)

    return log_lik


def log_joint_of(log_lik: LogDensity) -> LogDensity:
    return lambda z: obj.log_prior(z) + log_lik(z)


# --- settings and the per-metric drivers ------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """Every setting of `avae evaluate`. Defaults finish in a few minutes on a CPU for ~100 points."""

    k: tuple[int, ...] = (1, 100, 1000)
    sivi_k: int = 100
    sivi_samples: int = 10
    ais_chains: int = 4
    ais_steps: int = 500
    leapfrog: int = 10
    step_size: float = 0.05
    target_accept: float = 0.65
    subset: int = 0  # evaluate on the first N test points (0: all the run's test points)
    bdmc_points: int = 100
    batch_size: int = 100  # test points per batch
    seed: int = 0
    avb_samples: int = 500
    avb_inflate: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(self.k))  # a list from JSON is fine too
        if not self.k or min(self.k) < 1:
            raise ConfigError(f"--k must be positive integers, got {list(self.k)}")
        for key in ("sivi_k", "sivi_samples", "ais_chains", "ais_steps", "leapfrog", "bdmc_points"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"--{key.replace('_', '-')} must be a positive integer, got {getattr(self, key)}"
                )
        for key in ("batch_size", "avb_samples"):
            if getattr(self, key) < 2 - (key == "batch_size"):
                raise ConfigError(f"--{key.replace('_', '-')} is too small: {getattr(self, key)}")
        if self.subset < 0 or self.seed < 0:
            raise ConfigError("--subset and --seed must be >= 0")
        if not (self.step_size > 0 and 0 < self.target_accept < 1 and self.avb_inflate > 0):
            raise ConfigError("--step-size and --avb-inflate must be positive and --target-accept in (0, 1)")

    @property
    def hmc(self) -> HMCSettings:
        return HMCSettings(self.leapfrog, self.step_size, self.target_accept)


def parse_metrics(names: Sequence[str] | str) -> tuple[str, ...]:
    """Validated metric names (comma-separated text or a sequence), in the order given."""
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen = []
    for raw in items:
        name = ALIASES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name not in METRICS:
            raise ConfigError(f"unknown metric {raw.strip()!r}; choose from {', '.join(METRICS)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError(f"no metric given; choose from {', '.join(METRICS)}")
    return tuple(chosen)


def k_chunk(members: int, batch: int, data_dim: int) -> int:
    return max(1, ELEMENT_BUDGET // (members * batch * data_dim))


@torch.no_grad()
def neg_elbo_points(
    model: LatentModel, x: torch.Tensor, seeds: Sequence[int], batch_size: int = 1000, stream: str = "eval"
) -> torch.Tensor:
    """Each member's `neg_elbo` on every point of `x` [N, D]: [S, N] (float64)."""
    rng = MemberRandom(seeds, stream, x.device)
    parts = [
        model.neg_elbo(chunk.unsqueeze(0).expand(len(seeds), -1, -1), rng).double()
        for chunk in x.split(batch_size)
    ]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def neg_elbo_per_member(
    model: LatentModel, x: torch.Tensor, seeds: Sequence[int], batch_size: int = 1000
) -> torch.Tensor:
    """Mean over `x` [N, D] of each member's `neg_elbo`, [S] (float64).

    Noise comes from a fixed "eval" stream per member, so the figure is repeatable and evaluating
    never disturbs the training streams.
    """
    return neg_elbo_points(model, x, seeds, batch_size).mean(1).cpu()


@torch.no_grad()
def iwae_points(
    model: LatentModel, x: torch.Tensor, seeds, settings: EvalSettings
) -> dict[int, torch.Tensor]:
    """IWAE-k of every k in settings.k with the model's proposal: {k: log p(x) bounds [S, N]}."""
    noise = MemberRandom(seeds, f"eval-iwae-{settings.seed}", x.device)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in settings.k}
    for chunk in x.split(settings.batch_size):
        batch = chunk.unsqueeze(0).expand(len(seeds), -1, -1)
        q = model.proposal(batch, noise, samples=settings.avb_samples, inflate=settings.avb_inflate)
        chunk_k = k_chunk(*batch.shape)
        bounds = iwae(
            log_joint_of(model_log_lik(model, batch)),
            gaussian_sampler(q, noise),
            gaussian_log_density(q),
            settings.k,
            chunk_k,
        )
        for k, value in bounds.items():
            out[k].append(value.double())
    return {k: torch.cat(v, dim=1) for k, v in out.items()}


@torch.no_grad()
def sivi_points(model: LatentModel, x: torch.Tensor, seeds, settings: EvalSettings) -> torch.Tensor:
    """SIVI's L_K per point, [S, N], for a semi-implicit encoder (`model.posteriors`)."""
    noise = MemberRandom(seeds, f"eval-sivi-{settings.seed}", x.device)
    parts = []
    for chunk in x.split(settings.batch_size):
        batch = chunk.unsqueeze(0).expand(len(seeds), -1, -1)
        own = model.posteriors(batch, noise, settings.sivi_samples)
        extra = model.posteriors(batch, noise, settings.sivi_k)
        parts.append(sivi(log_joint_of(model_log_lik(model, batch)), own, extra, noise).double())
    return torch.cat(parts, dim=1)


def ais_points(model: LatentModel, x: torch.Tensor, seeds, settings: EvalSettings, stream: str):
    """Forward AIS per point, [S, N], and acceptance statistics."""
    noise = MemberRandom(seeds, f"{stream}-{settings.seed}", x.device)
    betas = obj.sigmoid_schedule(settings.ais_steps)
    parts, stats = [], []
    for chunk in x.split(settings.batch_size):
        batch = chunk.unsqueeze(0).expand(len(seeds), -1, -1)
        z0 = normal_draws(noise, settings.ais_chains, batch.shape[1], model.cfg.latent_dim)
        log_w, info = ais(obj.log_prior, model_log_lik(model, batch), z0, betas, noise, settings.hmc)
        parts.append(ais_log_marginal(log_w))
        stats.append(info)
    return torch.cat(parts, dim=1), mean_stats(stats)


def bdmc_points(model: LatentModel, seeds, settings: EvalSettings, device):
    """BDMC on `bdmc_points` points simulated from each member (z ~ p(z), x ~ p(x|z)):
    forward AIS (lower) and reverse AIS from the true z (upper) per point, [S, N] each."""
    noise = MemberRandom(seeds, f"eval-bdmc-{settings.seed}", device)
    betas = obj.sigmoid_schedule(settings.ais_steps)
    lower, upper, stats = [], [], []
    for start in range(0, settings.bdmc_points, settings.batch_size):
        n = min(settings.batch_size, settings.bdmc_points - start)
        with torch.no_grad():
            z_true = model.prior_sample(n, noise)  # [S, n, Z]
            logits = model.decoder(z_true)
            x = obj.sample_likelihood(
                model.cfg.likelihood, logits, uniform_draws(noise, n, logits.shape[-1]).movedim(0, 1)
            )
        log_lik = model_log_lik(model, x)
        z0 = normal_draws(noise, settings.ais_chains, n, model.cfg.latent_dim)
        forward, info_f = ais(obj.log_prior, log_lik, z0, betas, noise, settings.hmc)
        z_rev = z_true.unsqueeze(0).expand(settings.ais_chains, -1, -1, -1)
        reverse, info_r = ais(obj.log_prior, log_lik, z_rev, betas.flip(0), noise, settings.hmc)
        lower.append(ais_log_marginal(forward))
        upper.append(reverse_ais_log_marginal(reverse))
        stats += [info_f, info_r]
    return torch.cat(lower, dim=1), torch.cat(upper, dim=1), mean_stats(stats)


def mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(sum(s[key] for s in stats) / len(stats), 4) for key in stats[0]} if stats else {}


# --- summaries and eval.json -----------------------------------------------------------------------


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the standard error of the mean across members."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n) if n > 1 else 0.0, "members": n}


def metric_entry(
    label: str,
    estimator: str,
    settings: dict[str, Any],
    kind: str,
    is_log_likelihood: bool,
    neg_values: torch.Tensor,
    seeds: Sequence[int],
    seconds: float,
) -> dict[str, Any]:
    """An eval.json entry from per-point negative log-likelihood-type values [S, N].

    `sem` is across members (the contract's); `sem_points` is the standard error of the mean over
    test points (the estimator's and the test sample's noise), per member and pooled."""
    values = neg_values.double().cpu()
    points = values.shape[1]
    means = values.mean(1).tolist()
    sem_points = (
        (values.std(1) / math.sqrt(points)).nan_to_num(0.0).tolist() if points > 1 else [0.0] * len(seeds)
    )
    return {
        "label": label,
        "estimator": estimator,
        "settings": settings,
        "is_log_likelihood": is_log_likelihood,
        "kind": kind,
        "per_member": [
            {"seed": s, "value": v, "sem_points": e} for s, v, e in zip(seeds, means, sem_points, strict=True)
        ],
        **summarise(means),
        "sem_points": math.sqrt(sum(e * e for e in sem_points)) / len(seeds),
        "points": points,
        "seconds": round(seconds, 3),
    }


def compute_metrics(
    model: LatentModel,
    x: torch.Tensor,
    seeds: Sequence[int],
    metrics: Sequence[str],
    settings: EvalSettings,
    is_log_likelihood: bool,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every requested metric of `model` on test points `x` [N, D]: (entries by key, notes)."""
    entries: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    common: dict[str, Any] = {"seed": settings.seed, "batch_size": settings.batch_size}
    hmc = {
        "chains": settings.ais_chains,
        "intermediate_distributions": settings.ais_steps,
        "schedule": "sigmoid (sharpness 4)",
        "leapfrog": settings.leapfrog,
        "initial_step_size": settings.step_size,
        "target_acceptance": settings.target_accept,
        "step_size_adaptation": "per member and test point, x1.02 / x0.98 after each transition",
    }
    for name in metrics:
        started = time.perf_counter()
        if name == "elbo":
            stream = "eval" if settings.seed == 0 else f"eval-{settings.seed}"
            # batches of 1000 as in training, so that seed 0 repeats metrics.csv's test_neg_elbo
            values = neg_elbo_points(model, x, seeds, 1000, stream)
            entries["neg_elbo"] = metric_entry(
                model.metric_label,
                "model objective, one noise draw per test point",
                {**common, "batch_size": 1000},
                model.elbo_kind,
                is_log_likelihood,
                values,
                seeds,
                time.perf_counter() - started,
            )
        elif name == "iwae":
            bounds = iwae_points(model, x, seeds, settings)
            seconds = time.perf_counter() - started
            proposal = model.proposal_label
            extra = {}
            if not (model.noise_free or model.semi_implicit):  # an implicit encoder: a fitted Gaussian
                extra = {"fit_samples": settings.avb_samples, "scale_inflation": settings.avb_inflate}
            for k, value in bounds.items():
                entries[f"iwae_k{k}"] = metric_entry(
                    f"negative IWAE-{k} bound on log p(x)",
                    f"importance sampling with {proposal}; the {max(settings.k)} draws per point are "
                    f"split into {max(settings.k) // k} disjoint groups of {k}, bounds averaged",
                    {**common, "k": k, "draws_per_point": max(settings.k), **extra},
                    "lower bound",
                    is_log_likelihood,
                    -value,
                    seeds,
                    seconds,
                )
        elif name == "sivi":
            if not model.semi_implicit:
                notes.append(
                    f"sivi: skipped, {model.name}'s encoder is not semi-implicit (no Gaussian given eps1)"
                )
                continue
            values = sivi_points(model, x, seeds, settings)
            entries[f"sivi_k{settings.sivi_k}"] = metric_entry(
                f"negative SIVI bound L_{settings.sivi_k} on log p(x)",
                "SIVI (Yin & Zhou 2018): z ~ q(z|x,eps1^(0)), log p(x,z) - log mean_{k=0..K} q(z|x,eps1^(k))",
                {**common, "K": settings.sivi_k, "z_draws_per_point": settings.sivi_samples},
                "lower bound",
                is_log_likelihood,
                -values,
                seeds,
                time.perf_counter() - started,
            )
        elif name == "ais":
            values, stats = ais_points(model, x, seeds, settings, "eval-ais")
            entries["ais"] = metric_entry(
                "negative AIS estimate of log p(x) (stochastic lower bound)",
                "AIS from the prior along p(z) p(x|z)^beta, HMC transitions, log-mean-exp over chains",
                {**common, **hmc, **stats},
                "lower bound",
                is_log_likelihood,
                -values,
                seeds,
                time.perf_counter() - started,
            )
        elif name == "bdmc":
            lower, upper, stats = bdmc_points(model, seeds, settings, x.device)
            seconds = time.perf_counter() - started
            gap = float((upper - lower).mean())
            data_note = {
                "data": f"{settings.bdmc_points} points simulated from each member (z ~ p(z), x ~ p(x|z))"
            }
            for key, values, kind, what in (
                ("bdmc_forward", lower, "lower bound", "forward AIS from the prior"),
                ("bdmc_reverse", upper, "upper bound", "reverse AIS from the true z"),
            ):
                entry = metric_entry(
                    f"negative BDMC {what} on simulated data",
                    f"BDMC (Grosse et al. 2015): {what}, HMC transitions, log-mean-exp over chains",
                    {**common, **hmc, **stats, **data_note},
                    kind,
                    True,  # x is drawn from the decoder, so p(x|z) is its exact density (or mass)
                    -values,
                    seeds,
                    seconds,
                )
                entry["gap"] = gap
                entries[key] = entry
    return entries, notes


def evaluate_run(
    run_dir: str | Path,
    *,
    metrics: Sequence[str] | str = ("neg_elbo",),
    settings: EvalSettings | dict[str, Any] | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate every member of a trained run; new entries are merged into RUN_DIR/eval.json
    (entries from another epoch's checkpoint are dropped). Returns the whole record, plus "notes"."""
    from avae import data
    from avae.io import read_json, write_json
    from avae.train import load_run

    chosen = parse_metrics(metrics)
    if isinstance(settings, dict):
        settings = EvalSettings(**settings)
    settings = settings or EvalSettings()
    cfg, model, meta = load_run(run_dir, device)
    model.requires_grad_(False)
    test_x = data.load_pixels(cfg.dataset, "test", cfg.pixels, data_dir)
    if cfg.test_subset:
        test_x = test_x[: cfg.test_subset]
    if settings.subset:
        test_x = test_x[: settings.subset]
    honest = obj.is_normalised_likelihood(cfg.model.likelihood, cfg.pixels)
    entries, notes = compute_metrics(model, test_x.to(device), cfg.seeds, chosen, settings, honest)
    path = Path(run_dir) / "eval.json"
    previous = read_json(path) if path.exists() else {}
    kept = previous.get("metrics", {}) if previous.get("epoch") == meta["epoch"] else {}
    result = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "pixels": cfg.pixels,
        "likelihood": cfg.model.likelihood,
        "epoch": meta["epoch"],
        "metrics": {**kept, **entries},
    }
    write_json(path, result)
    return {**result, "notes": notes, "evaluated": list(entries), "settings": asdict(settings)}

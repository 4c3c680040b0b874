"""Scoring a trained model's members on test points: the estimators' settings and the drivers that
run `avae.likelihood.estimators` on the model in batches, every member at once. Each driver returns values
per member and test point, [S, N]; `avae.evaluation.evaluate` turns them into eval.json entries.

Test points are either one set for every member, [N, D], or each member's own (`MemberPoints`: the
members of an evaluation pack, `avae.evaluation.packs.evaluate_pack`, come from runs on different
data sets); a batch is [S, B, D] either way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from avae.core import objectives as obj
from avae.core.graphs import GraphedCall, StaticNoise, graphs_wanted, record_draws
from avae.core.models import LatentModel
from avae.core.nets import MemberRandom, repeat_points, split_draws
from avae.errors import ConfigError
from avae.likelihood.estimators import (
    HMCSettings,
    LogDensity,
    ais,
    ais_log_marginal,
    iwae,
    log_joint_of,
    normal_draws,
    pilot_step_sizes,
    reverse_ais_log_marginal,
    sivi,
    uniform_draws,
)

ELEMENT_BUDGET = 1 << 23  # decoder logits held at once (floats): bounds memory when chunking over k


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
    prefixes: tuple[int, ...] = ()  # also average every figure over the first N test points, each N

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(self.k))  # a list from JSON is fine too
        object.__setattr__(self, "prefixes", tuple(self.prefixes))
        if any(n < 1 for n in self.prefixes):
            raise ConfigError(f"test-point prefixes must be positive, got {list(self.prefixes)}")
        if not self.k or min(self.k) < 1:
            raise ConfigError(f"k must be positive integers, got {list(self.k)}")
        for key in ("sivi_k", "sivi_samples", "ais_chains", "ais_steps", "leapfrog", "bdmc_points"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")
        for key in ("batch_size", "avb_samples"):
            if getattr(self, key) < 2 - (key == "batch_size"):
                raise ConfigError(f"{key} is too small: {getattr(self, key)}")
        if self.subset < 0 or self.seed < 0:
            raise ConfigError("subset and seed must be >= 0")
        if not (self.step_size > 0 and 0 < self.target_accept < 1 and self.avb_inflate > 0):
            raise ConfigError("step_size and avb_inflate must be positive and target_accept in (0, 1)")

    @classmethod
    def of(cls, settings: EvalSettings | dict[str, Any] | None) -> EvalSettings:
        """Settings from an EvalSettings, a dict of its field names, or None (the defaults)."""
        if settings is None or isinstance(settings, cls):
            return settings or cls()
        if not isinstance(settings, dict):
            raise ConfigError(f"settings must be an EvalSettings or a dict, got {type(settings).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown evaluation setting(s) {', '.join(unknown)}; choose from {', '.join(names)}"
            )
        return cls(**settings)

    @property
    def hmc(self) -> HMCSettings:
        return HMCSettings(self.leapfrog, self.step_size, self.target_accept)


def model_log_lik(model: LatentModel, x: torch.Tensor) -> LogDensity:
    """z [n, S, B, Z] -> log p(x|z) [n, S, B] for data x [S, B, D], all n in one decoder call."""

    def log_lik(z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        flat = z.movedim(0, 1).reshape(x.shape[0], n * x.shape[1], -1)  # draw-major, as repeat_points
        return split_draws(model.log_px_given_z(repeat_points(x, n), flat), n).movedim(1, 0)

    return log_lik


def k_chunk(members: int, batch: int, data_dim: int) -> int:
    return max(1, ELEMENT_BUDGET // (members * batch * data_dim))


@dataclass(frozen=True)
class MemberPoints:
    """Each member's own test points: the distinct sets `sets` [T, N, D] (one number of points)
    and the index into them of each member, `of` [S]. A batch is gathered per member only as it is
    used, so no [S, N, D] copy is ever held; with one set, a batch is that set's points expanded
    over the members, as for points given as [N, D]."""

    sets: torch.Tensor
    of: torch.Tensor

    def __len__(self) -> int:
        return self.sets.shape[1]

    @property
    def device(self) -> torch.device:
        return self.sets.device

    def batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            chunk = self.sets[:, start : start + batch_size]
            if len(self.sets) == 1:
                yield chunk[0].unsqueeze(0).expand(len(self.of), -1, -1)
            else:
                yield chunk[self.of.to(chunk.device)]


Points = torch.Tensor | MemberPoints  # [N, D] for every member, or each member's own


def member_batches(x: Points, members: int, batch_size: int):
    """The test points `x` in batches of `batch_size`, each [S, B, D] (every member its own
    points with `MemberPoints`, else the same)."""
    if isinstance(x, MemberPoints):
        if len(x.of) != members:
            raise ValueError(f"points for {len(x.of)} members given to a model of {members}")
        yield from x.batches(batch_size)
        return
    for chunk in x.split(batch_size):
        yield chunk.unsqueeze(0).expand(members, -1, -1)


Progress = Callable[[int], object]  # called with the number of test points just finished


def no_progress(points: int) -> None:
    return None


@torch.no_grad()
def per_point(
    figure,
    x: Points,
    seeds: Sequence[int],
    batch_size: int = 1000,
    stream: str = "eval",
    progress: Progress = no_progress,
) -> torch.Tensor:
    """`figure(x [S, B, D], noise)` -> [S, B] on every point of `x` ([N, D] or `MemberPoints`):
    [S, N] (float64)."""
    rng = MemberRandom(seeds, stream, x.device)
    parts = []
    for batch in member_batches(x, len(seeds), batch_size):
        parts.append(figure(batch, rng).double())
        progress(batch.shape[1])
    return torch.cat(parts, dim=1)


def neg_elbo_per_member(
    model: LatentModel, x: torch.Tensor, seeds: Sequence[int], batch_size: int = 1000
) -> torch.Tensor:
    """Mean over `x` [N, D] of each member's `neg_elbo`, [S] (float64).

    Noise comes from a fixed "eval" stream per member, so the figure is repeatable and evaluating
    never disturbs the training streams.
    """
    return per_point(model.neg_elbo, x, seeds, batch_size).mean(1).cpu()


class EpochFigure:
    """The per-epoch figure, `neg_elbo_per_member(model, x, seeds)` [S], as a reusable unit.

    Eager (CPU): exactly that call each time. `graphed` (CUDA): the "eval" stream restarts at
    every pass, so its draws are the same every epoch: they are drawn once into a static buffer
    (`MemberRandom.fill`, the values the eager pass would draw) and the whole pass over `x` (kept
    alive, so its address is fixed) is captured in one CUDA graph and replayed. One host sync per
    pass, for the result."""

    def __init__(
        self,
        model: LatentModel,
        x: torch.Tensor,
        seeds: Sequence[int],
        batch_size: int = 1000,
        graphed: bool = False,
    ):
        self.model, self.x, self.seeds, self.batch_size = model, x, tuple(seeds), batch_size
        self.graphed = graphed
        self.noise: StaticNoise | None = None
        self.unit = GraphedCall(self._pass, enabled=graphed, warmup=1)

    def __call__(self) -> torch.Tensor:
        if not self.graphed:
            return neg_elbo_per_member(self.model, self.x, self.seeds, self.batch_size)
        if self.noise is None:
            members, device = len(self.seeds), self.x.device
            counts, layouts = record_draws(self._figures, members, device)
            self.noise = StaticNoise(members, counts, device, layouts)
            self.noise.fill_from(MemberRandom(self.seeds, "eval", device))
        return self.unit().cpu()

    @torch.no_grad()
    def _figures(self, noise) -> torch.Tensor:
        members = len(self.seeds)
        chunks = self.x.split(self.batch_size)
        return torch.cat(
            [self.model.neg_elbo(c.unsqueeze(0).expand(members, -1, -1), noise).double() for c in chunks],
            dim=1,
        )

    def _pass(self) -> torch.Tensor:
        self.noise.rewind()
        return self._figures(self.noise).mean(1)


@torch.no_grad()
def iwae_points(
    model: LatentModel,
    x: Points,
    seeds,
    settings: EvalSettings,
    progress: Progress = no_progress,
    draws_per_chunk: int = 0,
    budget_members: int = 0,
) -> dict[int, torch.Tensor]:
    """IWAE-k of every k in settings.k with the model's proposal: {k: log p(x) bounds [S, N]}.
    Draws are made `draws_per_chunk` at a time (0: as many as ELEMENT_BUDGET allows for
    `budget_members` members, 0: all S). How a member's draws are chunked changes them (a chunk is
    one `randn` per member), so an evaluation pack chunks as each of its runs would alone."""
    noise = MemberRandom(seeds, f"eval-iwae-{settings.seed}", x.device)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in settings.k}
    for batch in member_batches(x, len(seeds), settings.batch_size):
        q = model.proposal(batch, noise, samples=settings.avb_samples, inflate=settings.avb_inflate)
        chunk_k = draws_per_chunk or k_chunk(budget_members or batch.shape[0], *batch.shape[1:])
        log_joint = log_joint_of(model_log_lik(model, batch))
        bounds = iwae(log_joint, q, noise, settings.k, chunk_k, graphs_wanted(x.device))
        for k, value in bounds.items():
            out[k].append(value.double())
        progress(batch.shape[1])
    return {k: torch.cat(v, dim=1) for k, v in out.items()}


@torch.no_grad()
def sivi_points(
    model: LatentModel, x: Points, seeds, settings: EvalSettings, progress: Progress = no_progress
) -> torch.Tensor:
    """SIVI's L_K per point, [S, N], for a semi-implicit encoder (`model.posteriors`)."""
    noise = MemberRandom(seeds, f"eval-sivi-{settings.seed}", x.device)
    parts = []
    for batch in member_batches(x, len(seeds), settings.batch_size):
        own = model.posteriors(batch, noise, settings.sivi_samples)
        extra = model.posteriors(batch, noise, settings.sivi_k)
        parts.append(sivi(log_joint_of(model_log_lik(model, batch)), own, extra, noise).double())
        progress(batch.shape[1])
    return torch.cat(parts, dim=1)


def forward_ais(model: LatentModel, log_lik, n: int, settings: EvalSettings, noise: MemberRandom):
    """Forward AIS from the prior for n points: the step-size schedule comes from a pilot run on its
    own prior draws (discarded), so the counted chains' weights are exactly unbiased. Returns the
    log-weights [C, S, n], the schedule [T, S, n] and acceptance statistics."""
    betas = obj.sigmoid_schedule(settings.ais_steps)
    latent = model.cfg.latent_dim
    pilot = normal_draws(noise, settings.hmc.pilot_chains, n, latent)
    graphed = graphs_wanted(pilot.device)
    schedule = pilot_step_sizes(obj.log_prior, log_lik, pilot, betas, noise, settings.hmc, graphed)
    z0 = normal_draws(noise, settings.ais_chains, n, latent)
    log_w, info = ais(obj.log_prior, log_lik, z0, betas, noise, settings.hmc, schedule, graphed=graphed)
    return log_w, schedule, info


def reversed_schedule(forward: torch.Tensor) -> torch.Tensor:
    """The forward schedule [T, S, B] re-indexed for the reversed path: reverse transition t targets
    beta_{T-t}, which forward transition T - t targets too (the last reverse one, beta_0, reuses row 0)."""
    return torch.cat([forward[:-1].flip(0), forward[:1]])


def ais_points(
    model: LatentModel,
    x: Points,
    seeds,
    settings: EvalSettings,
    stream: str,
    progress: Progress = no_progress,
) -> tuple[torch.Tensor, ChainStats]:
    """Forward AIS per point, [S, N], and acceptance statistics (`ChainStats`: `.of()` for all
    members, `.of(rows)` for some)."""
    noise = MemberRandom(seeds, f"{stream}-{settings.seed}", x.device)
    parts, stats = [], ChainStats()
    for batch in member_batches(x, len(seeds), settings.batch_size):
        log_w, _, info = forward_ais(model, model_log_lik(model, batch), batch.shape[1], settings, noise)
        parts.append(ais_log_marginal(log_w))
        stats.add(info)
        progress(batch.shape[1])
    return torch.cat(parts, dim=1), stats


def bdmc_points(model: LatentModel, seeds, settings: EvalSettings, device, progress: Progress = no_progress):
    """BDMC on `bdmc_points` points simulated from each member (z ~ p(z), x ~ p(x|z)):
    forward AIS (lower) and reverse AIS from the true z (upper) per point, [S, N] each, and the
    chains' acceptance statistics (`ChainStats`). Both use the forward pilot's schedule, so neither
    adapts on its counted chains."""
    noise = MemberRandom(seeds, f"eval-bdmc-{settings.seed}", device)
    betas = obj.sigmoid_schedule(settings.ais_steps)
    lower, upper, stats = [], [], ChainStats()
    for start in range(0, settings.bdmc_points, settings.batch_size):
        n = min(settings.batch_size, settings.bdmc_points - start)
        with torch.no_grad():
            z_true = model.prior_sample(n, noise)  # [S, n, Z]
            logits = model.decoder(z_true)
            x = obj.sample_likelihood(
                model.cfg.likelihood, logits, uniform_draws(noise, n, logits.shape[-1]).movedim(0, 1)
            )
        log_lik = model_log_lik(model, x)
        forward, schedule, info_f = forward_ais(model, log_lik, n, settings, noise)
        z_rev = z_true.unsqueeze(0).expand(settings.ais_chains, -1, -1, -1)
        reverse, info_r = ais(
            obj.log_prior,
            log_lik,
            z_rev,
            betas.flip(0),
            noise,
            settings.hmc,
            step_sizes=reversed_schedule(schedule),
            graphed=graphs_wanted(torch.device(device)),
        )
        lower.append(ais_log_marginal(forward))
        upper.append(reverse_ais_log_marginal(reverse))
        stats.add(info_f)
        stats.add(info_r)
        progress(n)
    return torch.cat(lower, dim=1), torch.cat(upper, dim=1), stats


class ChainStats:
    """The acceptance statistics of AIS runs (one `add` per `ais` call), kept per member so that
    each run of an evaluation pack gets the figures it would get alone: `of(rows)` averages, over
    the calls, the mean acceptance and the median final step size of members `rows`."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # acceptance [S], final step [S, B]

    def add(self, info: dict) -> None:
        self.parts.append((info["acceptance"].cpu(), info["final_step_size"].cpu()))

    def of(self, rows: slice = slice(None)) -> dict[str, float]:
        if not self.parts:
            return {}
        acceptance = [float(a[rows].mean()) for a, _ in self.parts]
        final = [float(f[rows].median()) for _, f in self.parts]
        return {
            "mean_acceptance": round(sum(acceptance) / len(acceptance), 4),
            "final_step_size_median": round(sum(final) / len(final), 4),
        }

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

The estimators themselves live in `avae.likelihood.estimators`; this module runs them on a trained run,
every member at once, and writes eval.json. All figures in eval.json are negative
log-likelihood-type values in nats (lower is better), as in the paper's Table 1.

Evaluation packs (several runs as one model) are `avae.evaluation.packs`; they write eval.json
through this module's `record_evaluation`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from avae.core import objectives as obj
from avae.core.graphs import use_device
from avae.core.models import LatentModel
from avae.data import datasets as data
from avae.errors import ConfigError
from avae.io import read_json, write_json
from avae.likelihood.scoring import (
    EvalSettings,
    Points,
    Progress,
    ais_points,
    bdmc_points,
    iwae_points,
    no_progress,
    per_point,
    sivi_points,
)
from avae.training.card import write_card
from avae.training.config import Runtime, TrainConfig
from avae.training.runs import (
    EVAL,
    MemberFigure,
    MetricEntry,
    load_run,
)

# names accepted by --metrics / `metrics=`
METRICS = ("elbo", "critic", "recon", "iwae", "sivi", "ais", "bdmc")
ALIASES = {"neg_elbo": "elbo"}


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


def summarise(values: Sequence[float]) -> dict[str, Any]:
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
    prefixes: Sequence[int] = (),
) -> MetricEntry:
    """An eval.json entry from per-point negative log-likelihood-type values [S, N].

    `sem` is across members; `sem_points` is the standard error of the mean over test points (the
    estimator's and the test sample's noise), per member and pooled. `prefix_means` holds each
    member's mean over the first n points for every n in `prefixes` below N, so figures computed on
    different numbers of points can be set side by side on the same ones."""
    values = neg_values.double().cpu()
    points = values.shape[1]
    means = values.mean(1).tolist()
    sem_points = (
        (values.std(1) / math.sqrt(points)).nan_to_num(0.0).tolist() if points > 1 else [0.0] * len(seeds)
    )
    return MetricEntry(
        label=label,
        estimator=estimator,
        settings=settings,
        is_log_likelihood=is_log_likelihood,
        kind=kind,
        per_member=tuple(MemberFigure(s, v, e) for s, v, e in zip(seeds, means, sem_points, strict=True)),
        **summarise(means),
        sem_points=math.sqrt(sum(e * e for e in sem_points)) / len(seeds),
        points=points,
        prefix_means={str(n): values[:, :n].mean(1).tolist() for n in prefixes if n < points},
        seconds=round(seconds, 3),
    )


HMC_DESCRIPTION = {
    "schedule": "sigmoid (sharpness 4)",
    "step_size_schedule": "per member, point and transition from a pilot run whose chains are discarded; "
    "fixed for the counted chains",
}


Entries = tuple[MetricEntry, ...]  # one figure per run of an evaluation, in order (one for evaluate_run)
RunSettings = dict[str, Any] | Callable[[slice], dict[str, Any]]  # an entry's settings, or per run's rows


@dataclass
class Evaluation:
    """What every metric computation needs: the model, the test points and the settings. `runs`
    are the rows (members) of each run the model holds: one run (all of them) but in a pack
    (`evaluate_pack`), where each run gets its own entries from its own members' values. An IWAE's
    draws are chunked for `budget_members` members (0: all), the number of a pack's run."""

    model: LatentModel
    x: Points
    seeds: Sequence[int]
    settings: EvalSettings
    is_log_likelihood: bool
    progress: Progress = no_progress  # called with each batch's number of points
    runs: tuple[slice, ...] = (slice(None),)
    budget_members: int = 0

    def entry(
        self, label: str, estimator: str, settings: RunSettings, kind: str, neg_values, started: float
    ) -> Entries:
        """One entry per run from per-point values [S, N] (`settings` a function of a run's rows
        where they differ by run)."""
        common = {"seed": self.settings.seed, "batch_size": self.settings.batch_size}
        seconds = time.perf_counter() - started
        seeds = tuple(self.seeds)
        return tuple(
            metric_entry(
                label,
                estimator,
                {**common, **(settings(rows) if callable(settings) else settings)},
                kind,
                self.is_log_likelihood,
                neg_values[rows],
                seeds[rows],
                self.share(rows, seconds),
                self.settings.prefixes,
            )
            for rows in self.runs
        )

    def share(self, rows: slice, seconds: float) -> float:
        """A run's share of the seconds its pack took, by members (all of them for one run), as
        metrics.csv records a packed run's share of each epoch's seconds."""
        return seconds * len(range(len(self.seeds))[rows]) / len(self.seeds)

    @property
    def hmc(self) -> dict[str, Any]:
        s = self.settings
        return {
            **HMC_DESCRIPTION,
            "chains": s.ais_chains,
            "intermediate_distributions": s.ais_steps,
            "leapfrog": s.leapfrog,
            "initial_step_size": s.step_size,
            "target_acceptance": s.target_accept,
        }


def elbo_metric(ev: Evaluation) -> dict[str, Entries]:
    started = time.perf_counter()
    stream = "eval" if ev.settings.seed == 0 else f"eval-{ev.settings.seed}"
    # batches of 1000 as in training, so that seed 0 repeats metrics.csv's test_neg_elbo
    values = per_point(ev.model.neg_elbo, ev.x, ev.seeds, 1000, stream, ev.progress)
    return {
        "neg_elbo": ev.entry(
            ev.model.metric_label,
            "model objective, one noise draw per test point",
            {"batch_size": 1000},
            ev.model.elbo_kind,
            values,
            started,
        )
    }


def critic_metric(ev: Evaluation) -> dict[str, Entries]:
    """The discriminator-based figure -(log p(x|z) + log p(z)/q estimated by the critic): AVB's own
    objective, and AVAE's counterpart E[log p(x|z) + logit D(x, z)] (a plausible source of the
    paper's figures for AVAE; an estimate, not a bound)."""
    if not ev.model.has_critic:
        return {}
    started = time.perf_counter()
    stream = "eval-critic" if ev.settings.seed == 0 else f"eval-critic-{ev.settings.seed}"
    values = per_point(ev.model.neg_critic_figure, ev.x, ev.seeds, 1000, stream, ev.progress)
    return {
        "neg_critic": ev.entry(
            "negative discriminator-based ELBO estimate",
            "E[log p(x|z) + critic's estimate of log p(z) - log q(z|x)], one draw per test point",
            {"batch_size": 1000},
            "objective",
            values,
            started,
        )
    }


def recon_metric(ev: Evaluation) -> dict[str, Entries]:
    """The reconstruction term alone, E_q[-log p(x|z)] with one z ~ q(z|x) per test point, for every
    encoder, implicit ones included: the ELBO without its KL term. One candidate reading of the
    figures of the paper's Table 1; not a bound on log p(x)."""
    started = time.perf_counter()
    stream = "eval-recon" if ev.settings.seed == 0 else f"eval-recon-{ev.settings.seed}"

    def neg_recon(x: torch.Tensor, noise) -> torch.Tensor:
        return -ev.model.log_px_given_z(x, ev.model.encode(x, noise))

    values = per_point(neg_recon, ev.x, ev.seeds, 1000, stream, ev.progress)
    return {
        "neg_recon": ev.entry(
            "expected negative reconstruction log-likelihood E_q[-log p(x|z)] (the ELBO without its KL)",
            "one z ~ q(z|x) per test point",
            {"batch_size": 1000},
            "reconstruction term",
            values,
            started,
        )
    }


def iwae_metric(ev: Evaluation) -> dict[str, Entries]:
    started, s = time.perf_counter(), ev.settings
    bounds = iwae_points(ev.model, ev.x, ev.seeds, s, ev.progress, budget_members=ev.budget_members)
    extra = {}
    if not (ev.model.noise_free or ev.model.semi_implicit):  # an implicit encoder: a fitted Gaussian
        extra = {"fit_samples": s.avb_samples, "scale_inflation": s.avb_inflate}
    return {
        f"iwae_k{k}": ev.entry(
            f"negative IWAE-{k} bound on log p(x)",
            f"importance sampling with {ev.model.proposal_label}; the {max(s.k)} draws per point are "
            f"split into {max(s.k) // k} disjoint groups of {k}, bounds averaged",
            {"k": k, "draws_per_point": max(s.k), **extra},
            "lower bound",
            -value,
            started,
        )
        for k, value in bounds.items()
    }


def sivi_metric(ev: Evaluation) -> dict[str, Entries]:
    if not ev.model.semi_implicit:
        return {}
    started, s = time.perf_counter(), ev.settings
    values = sivi_points(ev.model, ev.x, ev.seeds, s, ev.progress)
    return {
        f"sivi_k{s.sivi_k}": ev.entry(
            f"negative SIVI bound L_{s.sivi_k} on log p(x)",
            "SIVI (Yin & Zhou 2018): z ~ q(z|x,eps1^(0)), log p(x,z) - log mean_{k=0..K} q(z|x,eps1^(k))",
            {"K": s.sivi_k, "z_draws_per_point": s.sivi_samples},
            "lower bound",
            -values,
            started,
        )
    }


def ais_metric(ev: Evaluation) -> dict[str, Entries]:
    started = time.perf_counter()
    values, stats = ais_points(ev.model, ev.x, ev.seeds, ev.settings, "eval-ais", ev.progress)
    return {
        "ais": ev.entry(
            "negative AIS estimate of log p(x) (stochastic lower bound)",
            "AIS from the prior along p(z) p(x|z)^beta, HMC transitions, log-mean-exp over chains",
            lambda rows: {**ev.hmc, **stats.of(rows)},
            "lower bound",
            -values,
            started,
        )
    }


def bdmc_metric(ev: Evaluation) -> dict[str, Entries]:
    started, s = time.perf_counter(), ev.settings
    lower, upper, stats = bdmc_points(ev.model, ev.seeds, s, ev.x.device, ev.progress)
    data_note = {"data": f"{s.bdmc_points} points simulated from each member (z ~ p(z), x ~ p(x|z))"}
    seeds = tuple(ev.seeds)
    entries: dict[str, Entries] = {}
    for key, values, kind, what in (
        ("bdmc_forward", lower, "lower bound", "forward AIS from the prior"),
        ("bdmc_reverse", upper, "upper bound", "reverse AIS from the true z"),
    ):
        entries[key] = tuple(
            replace(
                metric_entry(
                    f"negative BDMC {what} on simulated data",
                    f"BDMC (Grosse et al. 2015): {what}, HMC transitions, log-mean-exp over chains",
                    {"seed": s.seed, "batch_size": s.batch_size, **ev.hmc, **stats.of(rows), **data_note},
                    kind,
                    True,  # x is drawn from the decoder, so p(x|z) is its exact density (or mass)
                    -values[rows],
                    seeds[rows],
                    ev.share(rows, time.perf_counter() - started),
                ),
                gap=float((upper[rows] - lower[rows]).mean()),
            )
            for rows in ev.runs
        )
    return entries


METRIC_FUNCTIONS = {
    "elbo": elbo_metric,
    "critic": critic_metric,
    "recon": recon_metric,
    "iwae": iwae_metric,
    "sivi": sivi_metric,
    "ais": ais_metric,
    "bdmc": bdmc_metric,
}


def compute_metrics(
    model: LatentModel,
    x: torch.Tensor,
    seeds: Sequence[int],
    metrics: Sequence[str],
    settings: EvalSettings,
    is_log_likelihood: bool,
    progress: bool = False,
) -> tuple[dict[str, MetricEntry], list[str]]:
    """Every requested metric of `model` on test points `x` [N, D]: (entries by key, notes). With
    `progress`, a bar per metric over its test points (on a terminal), else one line per metric."""
    entries, notes = compute_entries(model, x, seeds, metrics, settings, is_log_likelihood, progress)
    return {key: figures[0] for key, figures in entries.items()}, notes


def compute_entries(
    model: LatentModel,
    x: Points,
    seeds: Sequence[int],
    metrics: Sequence[str],
    settings: EvalSettings,
    is_log_likelihood: bool,
    progress: bool = False,
    runs: tuple[slice, ...] = (slice(None),),
    budget_members: int = 0,
) -> tuple[dict[str, Entries], list[str]]:
    """`compute_metrics` for the runs whose members are rows `runs` of `model` (an evaluation
    pack's, each member scored on its own points, `MemberPoints`): each key's entries, one per run."""
    entries: dict[str, Entries] = {}
    notes: list[str] = []
    for name in metrics:
        points = settings.bdmc_points if name == "bdmc" else len(x)
        bar = tqdm(total=points, desc=f"evaluate {name}", unit="pt", disable=None if progress else True)
        started = time.perf_counter()
        ev = Evaluation(model, x, seeds, settings, is_log_likelihood, bar.update, runs, budget_members)
        with bar:
            new = METRIC_FUNCTIONS[name](ev)
        if progress and bar.disable:
            print(
                f"avae evaluate: {name} on {points} points in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
        if not new:
            notes.append(
                f"{name}: skipped, {model.name} has no "
                f"{'critic' if name == 'critic' else 'semi-implicit encoder'}"
            )
        entries.update(new)
    return entries, notes


def run_test_points(cfg: TrainConfig, settings: EvalSettings, runtime: Runtime) -> torch.Tensor:
    """The test points a run is evaluated on, [N, D] (where the data set loads them): its data
    set's test split, cut to the run's `test_subset` and then to the evaluation's `subset`."""
    test_x = data.load_pixels(
        cfg.dataset,
        "test",
        cfg.pixels,
        runtime.data_dir,
        test_data=cfg.test_data,
        test_fraction=cfg.test_fraction,
    )
    if cfg.test_subset:
        test_x = test_x[: cfg.test_subset]
    if settings.subset:
        test_x = test_x[: settings.subset]
    return test_x


def record_evaluation(
    run_dir: str | Path,
    cfg: TrainConfig,
    meta: dict[str, Any],
    entries: dict[str, MetricEntry],
    notes: list[str],
    settings: EvalSettings,
) -> dict[str, Any]:
    """Merge a run's new entries into RUN_DIR/eval.json (entries from another epoch's checkpoint are
    dropped) and rewrite its card: the one writer of eval.json, for `evaluate_run` and
    `evaluate_pack` alike. Returns the whole record, plus "notes", "evaluated" and "settings"."""
    path = Path(run_dir) / EVAL
    previous = read_json(path) if path.exists() else {}
    kept = previous.get("metrics", {}) if previous.get("epoch") == meta["epoch"] else {}
    result = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "pixels": cfg.pixels,
        "likelihood": cfg.model.likelihood,
        "epoch": meta["epoch"],
        "metrics": {**kept, **{key: entry.to_json() for key, entry in entries.items()}},
    }
    write_json(path, result)
    write_card(run_dir)
    return {**result, "notes": notes, "evaluated": list(entries), "settings": asdict(settings)}


def evaluate_run(
    run_dir: str | Path,
    *,
    metrics: Sequence[str] | str = ("elbo",),
    settings: EvalSettings | dict[str, Any] | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Evaluate every member of a trained run; new entries are merged into RUN_DIR/eval.json
    (entries from another epoch's checkpoint are dropped). Returns the whole record, plus "notes"."""
    chosen = parse_metrics(metrics)
    settings = EvalSettings.of(settings)
    runtime = runtime or Runtime()
    use_device(runtime.device)
    cfg, model, meta = load_run(run_dir, runtime.device)
    model.requires_grad_(False)
    honest = obj.is_normalised_likelihood(cfg.model.likelihood, cfg.pixels)
    x = run_test_points(cfg, settings, runtime).to(runtime.device)
    entries, notes = compute_metrics(model, x, cfg.seeds, chosen, settings, honest, runtime.progress)
    return record_evaluation(run_dir, cfg, meta, entries, notes, settings)

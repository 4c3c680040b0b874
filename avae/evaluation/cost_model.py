"""The cost model of evaluation: how long each metric family takes on a run's test points
(`metric_seconds`), from decoder passes per second (for IWAE, with the encoder draws an implicit
encoder's proposal is fitted to) and, for AIS and BDMC, the fixed cost of their sequential HMC
steps; `avae evaluate` states it before it starts, and `avae reproduce --dry-run` and `avae sweep`
add it to their estimates (avae.repro.costs)."""

from __future__ import annotations

import math

from avae.core.models import MODELS
from avae.data import datasets as data
from avae.data import userdata
from avae.likelihood.scoring import EvalSettings
from avae.training.config import TrainConfig

# Decoder passes per second and member (one z and one image: an IWAE sample, a leapfrog step of one
# chain). CPU: measured on one thread of the shared 2-core machine (IWAE-1000 on 500 points, 3
# members: 42 s; AIS 200 steps x 4 chains on 100 points: 65 s), noisy. GPU: a guess.
DECODER_EVALS_PER_SECOND = {"cpu": 3.6e4, "cuda": 1.0e7}


# AIS on CUDA is bound by kernel launches, not by the decoder: one H200 ran 1.3e6 decoder
# evaluations per second in AIS (eager; 2.35 points/s, 5 members, 8 chains, 1,000 steps) against
# 1.0e7 in IWAE-1000 (benchmarks/gpu-h200). The graphed AIS transition is not measured yet.
SEQUENTIAL_EVALS_PER_SECOND = {"cpu": 3.6e4, "cuda": 1.3e6}


# Seconds of one sequential HMC leapfrog step of AIS beyond its decoder passes (Python, autograd and
# dispatch; a batch of points shares it), which dominates AIS on a few points. CPU: measured with
# one torch thread on the shared 2-core development machine as process time (what it takes on an
# idle core): AIS and BDMC on 10-50 points, 2-8 chains, 20-40 steps, 1.2-1.9 ms. CUDA: not measured
# (the sequential rate above carries the launches at the benchmark's batch size).
SEQUENTIAL_STEP_SECONDS = {"cpu": 1.5e-3, "cuda": 0.0}


# An encoder draw's cost against a decoder pass's: IWAE's proposal for a model with an implicit
# encoder is fitted to `avb_samples` draws of it per point (`fitted_proposal` in the registry). On
# 2026-12-06 (the 2-core AMD EPYC, one thread a run, two runs at once), IWAE-1000 on 2,000
# Fashion-MNIST points, 5 members, latent 20, took AVB (fitted to 500 draws a point) 399.5 s and
# AVAE (its encoder's Gaussian) 337.9 s: 61.6 s for 5e6 draws against 337.9 s for 1e7 passes.
ENCODER_DRAW_SHARE = 0.36


SEQUENTIAL_RUNS = {"ais": 2, "bdmc": 3}  # AIS runs one after another per batch: pilot, counted (+ reverse)


def decoder_rate(device: str, sequential: bool = False) -> float:
    rates = SEQUENTIAL_EVALS_PER_SECOND if sequential else DECODER_EVALS_PER_SECOND
    return rates[device_kind(device)]


def device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def metric_seconds(
    family: str, settings: EvalSettings, points: int, members: int, device: str, model: str
) -> float:
    """The cost model's time for one metric family on `points` test points (before --subset) of a
    `model` run: its decoder passes (and for IWAE the encoder draws its proposal is fitted to, if
    the model's is) and, for AIS and BDMC, the fixed cost of their sequential steps."""
    n = points_evaluated(settings, points)
    fitted = settings.avb_samples * ENCODER_DRAW_SHARE if MODELS[model].fitted_proposal else 0.0
    transitions = settings.ais_chains * settings.ais_steps * (settings.leapfrog + 1) * 1.25  # + the pilot
    passes = {
        "elbo": n,
        "critic": n,
        "recon": n,
        "iwae": n * (max(settings.k) + fitted),
        "sivi": n * settings.sivi_samples * (settings.sivi_k + 1),
        "ais": n * transitions,
        "bdmc": 2 * settings.bdmc_points * transitions,
    }[family]
    batches = math.ceil(annealed_points(family, settings, points) / settings.batch_size)
    steps = SEQUENTIAL_RUNS.get(family, 0) * batches * settings.ais_steps * (settings.leapfrog + 1)
    sequential = steps * SEQUENTIAL_STEP_SECONDS[device_kind(device)]
    return passes * members / decoder_rate(device, sequential=family in SEQUENTIAL_RUNS) + sequential


def points_evaluated(settings: EvalSettings, points: int) -> int:
    """How many of a run's `points` test points a metric family sees: the settings' subset, if set."""
    return min(points, settings.subset) if settings.subset else points


def annealed_points(family: str, settings: EvalSettings, points: int) -> int:
    """The points AIS ("ais") or BDMC ("bdmc", its own simulated points) anneals, for a run's
    `points` test points."""
    return settings.bdmc_points if family == "bdmc" else points_evaluated(settings, points)


def batch_points(family: str, settings: EvalSettings, points: int) -> int:
    """Points in one batch of AIS or BDMC: what one sequential annealing run takes at once."""
    return min(settings.batch_size, annealed_points(family, settings, points))


def test_points(cfg: TrainConfig) -> int:
    """How many test points a run is evaluated on: its data set's test split (the user's own data
    is read to count them), cut to the run's test_subset."""
    return split_points(cfg, "test", cfg.test_subset)


def train_points(cfg: TrainConfig) -> int:
    """How many images a run trains on per epoch: its data set's training split (the user's own
    data is read to count them), cut to the run's train_subset."""
    return split_points(cfg, "train", cfg.train_subset)


def split_points(cfg: TrainConfig, split: str, subset: int) -> int:
    if userdata.is_user_data(cfg.dataset):
        train, test = userdata.splits(cfg.dataset, cfg.test_data, cfg.test_fraction)
        points = len(train if split == "train" else test)
    else:
        points = data.SPLIT_SIZES[split]
    return min(points, subset) if subset else points

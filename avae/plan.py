"""What a reproduction runs: profiles (how much compute), the planned runs of the paper's
experiments, what each still needs, and what that will cost (the cost model of `--dry-run`).

Every run is keyed by the hash of its configuration: a run whose checkpoint reached the last epoch
and whose eval.json and analysis.json hold everything planned is finished; an unfinished one
resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from avae.config import TrainConfig, config_hash, make_config
from avae.data import DATASETS
from avae.errors import ConfigError
from avae.evaluate import decoder_rate, metric_seconds
from avae.io import read_json
from avae.models import MODELS
from avae.paper import EXPERIMENTS, noise_of
from avae.results import INDEX
from avae.runs import (
    ANALYSIS,
    CONFIG,
    EVAL,
    METRICS,
    checkpoint_epoch,
    read_metrics,
    read_record,
    run_dir_name,
)
from avae.scoring import EvalSettings


@dataclass(frozen=True)
class Profile:
    """How much compute a reproduction spends: training budget and evaluation budget.

    Test points: each model's own figure and the discriminator-based figure on every test image of
    the run; IWAE on the first `iwae_points`, AIS on the first `ais_points` (0: all). Every figure
    also records its mean over those two prefixes, so a table can set figures side by side on the
    same test points.
    """

    name: str
    description: str
    epochs: int
    seeds: tuple[int, ...]
    train_subset: int = 0  # first N training images (0: all 60,000)
    test_subset: int = 0  # first N test images for the per-epoch curves and the own figures (0: all)
    datasets: tuple[str, ...] = DATASETS
    latent_dims: tuple[int, ...] = (10, 15, 20)  # keeps only these latent sizes of the experiments
    experiments: tuple[str, ...] = tuple(EXPERIMENTS)
    honest_latents: tuple[int, ...] = (10, 15, 20)  # runs that also get IWAE and AIS
    iwae_k: int = 1000
    iwae_points: int = 0
    ais_points: int = 500
    ais_steps: int = 500
    ais_chains: int = 4
    bdmc_points: int = 0  # points simulated from each model for a BDMC check of AIS (0: none)
    analysis_samples: int = 1000  # samples / test images for FD, q(z) statistics and active units
    classifier_epochs: int = 3  # of the feature classifier (a small CNN), trained once per data set
    classifier_subset: int = 0
    measured: str = ""  # a measured wall time, with its machine; `--dry-run` estimates any machine
    evaluate: bool = True  # False: training only (each epoch's test -ELBO), no figures, no analysis

    def point_prefixes(self) -> tuple[int, ...]:
        """The nested test-point counts every figure is also averaged over."""
        return tuple(sorted({n for n in (self.ais_points, self.iwae_points) if n}))


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke",
        "seconds per run: every code path and every report section; used by the tests",
        epochs=1,
        seeds=(0, 1),
        train_subset=500,
        test_subset=200,
        latent_dims=(10, 15),
        honest_latents=(10,),
        iwae_points=20,
        ais_points=10,
        ais_steps=20,
        ais_chains=2,
        bdmc_points=4,
        analysis_samples=200,
        classifier_epochs=1,
        classifier_subset=2000,
    ),
    "quick": Profile(
        "quick",
        "the README's first command: every experiment on both data sets, 3 seeds, 10 epochs on a "
        "10k-image training subset (short of convergence)",
        epochs=10,
        seeds=(0, 1, 2),
        train_subset=10000,
        test_subset=2000,
        honest_latents=(10,),
        iwae_points=200,
        ais_points=50,
        ais_steps=200,
        ais_chains=4,
        bdmc_points=10,
        analysis_samples=1000,
        classifier_epochs=5,
        measured="93 s on one NVIDIA H200 with --device cuda --jobs 8 (results/quick-h200)",
    ),
    "paper-z10": Profile(
        "paper-z10",
        "the central comparison at paper scale: latent 10, noise 10, every model and reading, "
        "5 seeds, 100 epochs on all 60,000 training images",
        epochs=100,
        seeds=(0, 1, 2, 3, 4),
        latent_dims=(10,),
        experiments=("table1",),
        honest_latents=(10,),
        iwae_points=2000,
        ais_points=200,
        ais_steps=1000,
        ais_chains=4,
        bdmc_points=20,
        analysis_samples=10000,
        classifier_epochs=10,
    ),
    "full": Profile(
        "full",
        "paper scale: every experiment, 5 seeds, 100 epochs, all 60,000 training and 10,000 test images",
        epochs=100,
        seeds=(0, 1, 2, 3, 4),
        iwae_points=0,
        ais_points=1000,
        ais_steps=1000,
        ais_chains=8,
        bdmc_points=100,
        analysis_samples=10000,
        classifier_epochs=10,
    ),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def manifest_profile(manifest: dict[str, Any]) -> Profile | None:
    """The profile a reproduce.json was written for, with its --experiments and --train-only; None
    without a manifest or for a profile given in code (not a known name)."""
    settings = manifest.get("settings", {})
    try:
        profile = get_profile(manifest.get("profile", ""))
        experiments = settings.get("experiments", profile.experiments)
        return select(profile, experiments, train_only=not settings.get("evaluate", True))
    except ConfigError:
        return None


def select(profile: str | Profile, experiments: Sequence[str] = (), train_only: bool = False) -> Profile:
    """The profile restricted to some of its experiments (none given: all of them), and with
    `train_only`, to training alone. The runs keep their configurations, hence their directories:
    a later call with the whole profile on the same --out reuses them and adds what is missing."""
    profile = get_profile(profile)
    outside = [name for name in experiments if name not in profile.experiments]
    if outside:
        what = "is not" if all(name in EXPERIMENTS for name in outside) else "unknown, or not"
        raise ConfigError(
            f"experiment {', '.join(map(repr, outside))} {what} in profile {profile.name!r}; "
            f"choose from {', '.join(profile.experiments)}"
        )
    chosen = tuple(name for name in profile.experiments if name in experiments) or profile.experiments
    return replace(profile, experiments=chosen, evaluate=profile.evaluate and not train_only)


@dataclass
class PlannedRun:
    """One configuration to train (all its seeds at once) and what to evaluate on it."""

    settings: dict[str, Any]
    experiments: list[str]
    honest: bool
    cfg: TrainConfig = field(init=False)

    def __post_init__(self) -> None:
        self.cfg = make_config(self.settings)

    @property
    def key(self) -> str:
        return config_hash(self.cfg)

    @property
    def dir_name(self) -> str:
        return run_dir_name(self.cfg)


def runs_for(profile: str | Profile) -> list[PlannedRun]:
    """Every distinct configuration the profile's experiments need, in a stable order: every
    registered reading of each model is its own run."""
    profile = get_profile(profile)
    planned: dict[str, PlannedRun] = {}
    for dataset in profile.datasets:
        for name in profile.experiments:
            spec = EXPERIMENTS[name]
            for latent in (z for z in spec.latent_dims if z in profile.latent_dims):
                for model in spec.model_names():
                    for noise in sorted({noise_of(model, n) for n in spec.noise_dims}):
                        for reading in MODELS[model].readings.values():
                            settings = {
                                "model": model,
                                "dataset": dataset,
                                "latent_dim": latent,
                                "noise_dim": noise,
                                "epochs": profile.epochs,
                                "seeds": profile.seeds,
                                "train_subset": profile.train_subset,
                                "test_subset": profile.test_subset,
                                **reading,
                            }
                            honest = latent in profile.honest_latents and noise == noise_of(model)
                            run = PlannedRun(settings, [name], honest)
                            if run.key in planned:
                                planned[run.key].experiments.append(name)
                            else:
                                planned[run.key] = run
    return list(planned.values())


# --- evaluation plan -----------------------------------------------------------------------------

EvalStep = tuple[str, str, dict[str, Any]]  # (eval.json key, metric family, evaluate settings)


def eval_steps(run: PlannedRun, profile: Profile) -> list[EvalStep]:
    """Every metric the run needs, with the settings that put figures on shared test points."""
    if not profile.evaluate:
        return []
    prefixes = {"prefixes": profile.point_prefixes()}
    steps: list[EvalStep] = [("neg_elbo", "elbo", prefixes)]
    if MODELS[run.cfg.model.name].has_critic:
        steps.append(("neg_critic", "critic", prefixes))
    if run.honest:
        steps.append(
            (
                f"iwae_k{profile.iwae_k}",
                "iwae",
                {"k": (1, profile.iwae_k), "subset": profile.iwae_points, **prefixes},
            )
        )
        ais = {"ais_steps": profile.ais_steps, "ais_chains": profile.ais_chains}
        steps.append(("ais", "ais", {"subset": profile.ais_points, **ais, **prefixes}))
        if profile.bdmc_points:
            steps.append(("bdmc_forward", "bdmc", {"bdmc_points": profile.bdmc_points, **ais}))
    return steps


def missing_metrics(run_dir: Path, cfg: TrainConfig, steps: list[EvalStep]) -> list[EvalStep]:
    have = read_record(run_dir, EVAL, cfg.epochs).get("metrics", {})
    return [step for step in steps if step[0] not in have]


def analysis_done(run_dir: Path, cfg: TrainConfig) -> bool:
    return bool(read_record(run_dir, ANALYSIS, cfg.epochs))


def status_of(run: PlannedRun, profile: Profile, out: Path) -> tuple[str, int]:
    """("finished" | "evaluate" | "resume" | "new", epochs already trained)."""
    run_dir = out / run.dir_name
    epoch = checkpoint_epoch(run_dir)
    if epoch >= run.cfg.epochs:
        todo = missing_metrics(run_dir, run.cfg, eval_steps(run, profile))
        unfinished = todo or (profile.evaluate and not analysis_done(run_dir, run.cfg))
        return ("evaluate" if unfinished else "finished"), epoch
    return ("resume" if epoch else "new"), epoch


# --- the cost model ------------------------------------------------------------------------------
# Seconds per training step (batch 100, fp32, one CPU thread) as a + b * S for S members, fitted
# to `avae bench`'s figures in benchmarks/bench.json when this checkout has them; otherwise these
# conservative built-in figures (about twice the slowest measured on the 2-core development
# machine). A model the bench does not know costs as the dearest known one. GPU: fitted to the
# committed H200 benchmark's graphed steps (`gpu_step_seconds`), else GPU_STEP_MS per step.
BENCH_JSON = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.json"
GPU_BENCH_JSON = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu-h200" / "gpu_bench.json"
BATCH = 100
BUILTIN_STEP_MS = {"vae": (15.0, 12.0), "vae-noise": (15.0, 12.0), "avb": (40.0, 35.0), "avae": (45.0, 40.0)}
GPU_STEP_MS = 10.0  # without a GPU benchmark: an eager CUDA step, a pessimistic figure


def fit_step_cost(entries: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Least-squares a + b * S (seconds per step) through measured (S, ms/step) points."""
    points = [(e["members"], e["ms_per_step"] / 1e3) for e in entries]
    if not points:
        return None
    if len(points) == 1:
        s, t = points[0]
        return 0.0, t / s
    n = len(points)
    mean_s = sum(p[0] for p in points) / n
    mean_t = sum(p[1] for p in points) / n
    var = sum((p[0] - mean_s) ** 2 for p in points)
    slope = sum((p[0] - mean_s) * (p[1] - mean_t) for p in points) / var
    return max(0.0, mean_t - slope * mean_s), max(slope, 1e-9)


def bench_entries(model: str, bench: Path) -> list[dict[str, Any]]:
    try:
        results = json.loads(bench.read_text()) if bench.exists() else {}
    except (OSError, ValueError):
        return []
    return [
        e
        for e in results.get("training", [])
        if e.get("model") == model and e.get("precision") == "fp32" and not e.get("compile")
    ]


def gpu_step_seconds(model: str, members: int, bench: Path = GPU_BENCH_JSON) -> float:
    """Seconds per graphed CUDA training step, fitted through the committed GPU benchmark's
    (S, graphed ms) points of `model` (measured on one H200), plus 5% for the per-epoch test pass;
    GPU_STEP_MS per step without them."""
    try:
        results = json.loads(bench.read_text()) if bench.exists() else {}
    except (OSError, ValueError):
        results = {}
    entries = [
        {"members": e["members"], "ms_per_step": e["graphed_ms"]}
        for e in results.get("training", [])
        if e.get("model") == model and "graphed_ms" in e
    ]
    fitted = fit_step_cost(entries)
    if fitted is None:
        return GPU_STEP_MS / 1e3 * max(1.0, members / 8)
    a, b = fitted
    return 1.05 * (a + b * members)


def estimate_train_seconds(
    model: str,
    members: int,
    epochs: int,
    train_images: int = 60000,
    device: str = "cpu",
    bench: Path = BENCH_JSON,
) -> float:
    """Wall time of one training process (`members` seeds of `model` trained together) for
    `epochs` epochs over `train_images` images, with the test pass after each epoch."""
    steps = train_images // BATCH
    if device.startswith("cuda"):
        return epochs * steps * gpu_step_seconds(model, members)
    entries = bench_entries(model, bench)
    fitted = fit_step_cost(entries)
    if fitted is None:
        a_ms, b_ms = BUILTIN_STEP_MS.get(model, max(BUILTIN_STEP_MS.values()))
        a, b = a_ms / 1e3, b_ms / 1e3
        eval_s = 0.1 * steps * (a + b * members) * 10000 / train_images
    else:
        a, b = fitted
        eval_s = members * max(e["test_pass_s_per_10k"] / e["members"] for e in entries)
    return float(epochs * (steps * (a + b * members) + eval_s))


RECENT_EPOCHS = 10  # a run's latest epochs time the epochs it has left


def measured_epoch_seconds(run_dir: Path, device: str) -> float | None:
    """The median wall time of the run's latest recorded epochs (metrics.csv times every epoch) if
    the run started on the same kind of device (config.json); None for a run with no epoch yet."""
    metrics, config = run_dir / METRICS, run_dir / CONFIG
    if not (metrics.exists() and config.exists()):
        return None
    if not same_device_kind(read_json(config).get("device", ""), device):
        return None
    per_epoch = {row["epoch"]: float(row["seconds"]) for row in read_metrics(metrics)}
    return median([per_epoch[epoch] for epoch in sorted(per_epoch)[-RECENT_EPOCHS:]])


def same_device_kind(recorded: object, device: str) -> bool:
    return str(recorded).split(":")[0] == device.split(":")[0]


def median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


@dataclass
class Measured:
    """What runs costing the same as a planned run (same model, members, training and test images,
    in the same --out, on the same kind of device) took: seconds per epoch, and the seconds of each
    evaluation part (index.json); the estimates use them before the cost model."""

    epoch_seconds: float | None = None
    part_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def alike(cls, run: PlannedRun, out: Path, device: str) -> Measured:
        index = out / INDEX
        entries = read_json(index).get("runs", {}) if index.exists() else {}
        alike = [
            entry
            for key, entry in entries.items()
            if key != run.key and costs_alike(run.cfg, out / entry["dir"], device)
        ]
        epochs = [measured_epoch_seconds(out / e["dir"], device) for e in alike]
        parts = {part for e in alike for part in e.get("seconds", {})}
        return cls(
            median([s for s in epochs if s is not None]),
            {p: median([e["seconds"][p] for e in alike if p in e.get("seconds", {})]) for p in parts},
        )


def costs_alike(cfg: TrainConfig, run_dir: Path, device: str) -> bool:
    """Whether the run in `run_dir` started on the same kind of device as `device` and trains and
    evaluates as much as `cfg` does."""
    path = run_dir / CONFIG
    if not path.exists():
        return False
    record = read_json(path)
    if not same_device_kind(record.get("device", ""), device):
        return False
    other = make_config(record["config"])
    shape = (other.model.name, len(other.seeds), other.train_subset, other.test_subset, other.batch_size)
    return shape == (cfg.model.name, len(cfg.seeds), cfg.train_subset, cfg.test_subset, cfg.batch_size)


def estimate_eval_seconds(
    run: PlannedRun, profile: Profile, device: str, steps: list[EvalStep], measured: Measured | None = None
) -> float:
    """Evaluation and analysis time of the steps a run still needs: what alike runs took for each
    part (`measured`), else the cost model's figure."""
    test, members = run.cfg.test_subset or 10000, len(run.cfg.seeds)
    took = measured.part_seconds if measured else {}
    seconds = sum(
        took.get(key)
        or metric_seconds(
            family, EvalSettings(**{**settings, "k": (1, profile.iwae_k)}), test, members, device
        )
        for key, family, settings in steps
    )
    analysis = took.get("analysis") or 3 * profile.analysis_samples * members / decoder_rate(device)
    return seconds + analysis


def estimate_run_seconds(
    run: PlannedRun, profile: Profile, out: Path, device: str, measured: bool = True
) -> tuple[float, float]:
    """(training, evaluation) seconds the run still needs; with `measured`, timed by the run's own
    latest epochs, else by alike runs in `out` (`Measured`), else by the cost model."""
    status, epoch = status_of(run, profile, out)
    if status == "finished":
        return 0.0, 0.0
    cfg = run.cfg
    alike = Measured.alike(run, out, device) if measured else None
    train_s = 0.0
    if epoch < cfg.epochs:
        own = measured_epoch_seconds(out / run.dir_name, device) if measured and epoch else None
        per_epoch = own or (alike.epoch_seconds if alike else None)
        train_s = (
            (cfg.epochs - epoch) * per_epoch
            if per_epoch
            else estimate_train_seconds(
                cfg.model.name, len(cfg.seeds), cfg.epochs - epoch, cfg.train_subset or 60000, device
            )
        )
    if not profile.evaluate:
        return train_s, 0.0
    todo = missing_metrics(out / run.dir_name, cfg, eval_steps(run, profile))
    return train_s, estimate_eval_seconds(run, profile, device, todo, alike)

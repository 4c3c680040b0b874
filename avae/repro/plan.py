"""What a reproduction runs: profiles (how much compute), the planned runs of the paper's
experiments, and what each still needs (what that will cost is `avae.repro.costs`).

Every run is keyed by the hash of its configuration: a run whose checkpoint reached the last epoch
and whose eval.json and analysis.json hold everything planned is finished; an unfinished one
resumes from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from avae.core.models import MODELS
from avae.data.datasets import DATASETS
from avae.errors import ConfigError, check_choice
from avae.repro.paper import EXPERIMENTS, PAPER_LATENTS, PAPER_TABLE1, noise_of
from avae.training.config import TrainConfig, config_hash, make_config
from avae.training.packs import pack_key
from avae.training.runs import (
    ANALYSIS,
    EVAL,
    has_weights,
    read_divergence,
    read_record,
    run_dir_name,
    trained_epoch,
)


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
    honest_every_noise: bool = False  # False: only at each model's default noise size (not Fig. 6's 5, 15)
    recon: bool = False  # also the reconstruction term E_q[-log p(x|z)] on every test image
    iwae_k: int = 1000
    iwae_points: int = 0
    ais_points: int = 500
    ais_steps: int = 500
    ais_chains: int = 4
    bdmc_points: int = 0  # points simulated from each model for a BDMC check of AIS (0: none)
    analysis_samples: int = 1000  # samples / test images for FD, q(z) statistics and active units
    classifier_epochs: int = 3  # of the feature classifier (a small CNN), trained once per data set
    classifier_subset: int = 0
    measured: str = ""  # what a whole run took (wall or process time, as it says) and where
    evaluate: bool = True  # False: training only (each epoch's test -ELBO), no figures, no analysis

    def point_prefixes(self) -> tuple[int, ...]:
        """The nested test-point counts every figure is also averaged over."""
        return tuple(sorted({n for n in (self.ais_points, self.iwae_points) if n}))


PAPER_Z10 = Profile(
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
    measured="11.4 h of one process in all, not wall time (training 8.4 h), on a 2-core Intel Xeon "
    "with --jobs 2 (results/paper-z10)",
)

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
    "paper-z10": PAPER_Z10,
    "paper": replace(
        PAPER_Z10,
        name="paper",
        description="the whole paper at paper scale with paper-z10's evaluation: every experiment "
        "(latent 10, 15 and 20; noise 5, 10 and 15), 5 seeds, 100 epochs on all 60,000 training "
        "images; IWAE and AIS on every run, and the reconstruction term. Its latent-10, noise-10 runs "
        "are paper-z10's: copy results/paper-z10 whole into --out (`cp -r results/paper-z10/. OUT/`, "
        "so that its index.json and reproduce.json carry the parts' seconds and the sessions on into "
        "what `avae publish` writes) and they are reused as "
        "published (without the reconstruction term, which needs their weights), but for AVB-AC, "
        "trained anew since its moments no longer include z",
        latent_dims=PAPER_LATENTS,
        experiments=tuple(EXPERIMENTS),
        honest_latents=PAPER_LATENTS,
        honest_every_noise=True,
        recon=True,
        measured="paper-z10's runs: 11.4 h of one process for 12 runs (training 8.4 h), on a 2-core "
        "Intel Xeon with --jobs 2 (results/paper-z10)",
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
    check_choice("profile", profile, PROFILES)
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
    """Every distinct configuration the profile's experiments need, in a stable order (`run_order`):
    every registered reading of each model is its own run."""
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
                            honest = latent in profile.honest_latents and (
                                profile.honest_every_noise or noise == noise_of(model)
                            )
                            run = PlannedRun(settings, [name], honest)
                            if run.key in planned:
                                planned[run.key].experiments.append(name)
                            else:
                                planned[run.key] = run
    return sorted(planned.values(), key=run_order)


def pick_runs(runs: Sequence[PlannedRun], names: Sequence[str]) -> list[PlannedRun]:
    """The runs named in `names`, in that order: each name is a run directory's name as `--dry-run`
    lists it, or the start of exactly one such name (`avb-mnist-z15`)."""
    picked: list[PlannedRun] = []
    for name in names:
        matches = [r for r in runs if r.dir_name == name] or [r for r in runs if r.dir_name.startswith(name)]
        if not matches:
            raise ConfigError(f"no run of this profile is named {name!r}; `--dry-run` lists their names")
        if len(matches) > 1:
            names_found = ", ".join(r.dir_name for r in matches)
            raise ConfigError(f"{name!r} names {len(matches)} runs ({names_found}); give one whole name")
        if matches[0] not in picked:
            picked.append(matches[0])
    return picked


def run_order(run: PlannedRun) -> int:
    """Which runs go first, so that a long reproduction answers the paper's own questions early:
    0 the noise sizes of Fig. 6 (claim 2), 1 the paper's four models (the first reading of each),
    2 the rest (AVB-AC, other readings). The sort is stable: within a rank, the experiments' order."""
    model = run.cfg.model
    if model.noise_dim != noise_of(model.name):
        return 0
    first_reading = next(iter(MODELS[model.name].readings.values()))
    in_paper = model.name in PAPER_TABLE1[next(iter(PAPER_TABLE1))]
    return 1 if in_paper and all(run.settings.get(k) == v for k, v in first_reading.items()) else 2


# --- evaluation plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalStep:
    """One figure a planned run needs: the eval.json key it fills, the metric family that computes
    it (as `avae evaluate --metrics` names it) and evaluate's settings for it."""

    key: str
    family: str
    settings: dict[str, Any] = field(default_factory=dict)


def eval_steps(run: PlannedRun, profile: Profile) -> list[EvalStep]:
    """Every metric the run needs, with the settings that put figures on shared test points."""
    if not profile.evaluate:
        return []
    prefixes = {"prefixes": profile.point_prefixes()}
    steps = [EvalStep("neg_elbo", "elbo", prefixes)]
    if MODELS[run.cfg.model.name].has_critic:
        steps.append(EvalStep("neg_critic", "critic", prefixes))
    if profile.recon:
        steps.append(EvalStep("neg_recon", "recon", prefixes))
    if run.honest:
        steps.append(
            EvalStep(
                f"iwae_k{profile.iwae_k}",
                "iwae",
                {"k": (1, profile.iwae_k), "subset": profile.iwae_points, **prefixes},
            )
        )
        ais = {"ais_steps": profile.ais_steps, "ais_chains": profile.ais_chains}
        steps.append(EvalStep("ais", "ais", {"subset": profile.ais_points, **ais, **prefixes}))
        if profile.bdmc_points:
            steps.append(EvalStep("bdmc_forward", "bdmc", {"bdmc_points": profile.bdmc_points, **ais}))
    return steps


def missing_metrics(run_dir: Path, cfg: TrainConfig, steps: list[EvalStep]) -> list[EvalStep]:
    have = read_record(run_dir, EVAL, cfg.epochs).get("metrics", {})
    return [step for step in steps if step.key not in have]


def analysis_done(run_dir: Path, cfg: TrainConfig) -> bool:
    return bool(read_record(run_dir, ANALYSIS, cfg.epochs))


class RunStatus(str, Enum):
    """What a planned run still needs, as `status_of` finds it. Each is the string it reads as (in
    output, JSON and comparisons alike)."""

    FINISHED = "finished"
    EVALUATE = "evaluate"  # trained; some planned figure or the analysis is missing
    RESUME = "resume"  # trained some epochs, not all
    NEW = "new"
    DIVERGED = "diverged"
    PUBLISHED = "published"

    __str__ = str.__str__  # "finished", not "RunStatus.FINISHED", on every Python
    __format__ = str.__format__


def status_of(run: PlannedRun, profile: Profile, out: Path) -> tuple[RunStatus, int]:
    """(the run's status, epochs already trained). A diverged run (runs.DIVERGED) is not retried:
    the same settings diverge again at the same step. A "published" run was copied from published
    results without its weights and lacks some planned figure, which only retraining it can add."""
    run_dir = out / run.dir_name
    epoch = trained_epoch(run_dir)
    if read_divergence(run_dir) is not None:
        return RunStatus.DIVERGED, epoch
    if epoch >= run.cfg.epochs:
        todo = missing_metrics(run_dir, run.cfg, eval_steps(run, profile))
        unfinished = todo or (profile.evaluate and not analysis_done(run_dir, run.cfg))
        if unfinished and not has_weights(run_dir):
            return RunStatus.PUBLISHED, epoch
        return (RunStatus.EVALUATE if unfinished else RunStatus.FINISHED), epoch
    return (RunStatus.RESUME if epoch else RunStatus.NEW), epoch


def packs_of(runs: Sequence[PlannedRun], out: Path) -> list[list[PlannedRun]]:
    """The runs with training left that can train as one pack (`avae.training.packs`: settings
    equal but for seeds, data set and latent and noise dimensions, which pad; trained to the same
    epoch), in groups of two or more, in plan
    order. A diverged run is none of them (it is not retried)."""
    groups: dict[tuple[str, int], list[PlannedRun]] = {}
    for run in runs:
        run_dir = out / run.dir_name
        epoch = trained_epoch(run_dir)
        if epoch < run.cfg.epochs and read_divergence(run_dir) is None:
            groups.setdefault((pack_key(run.cfg), epoch), []).append(run)
    return [group for group in groups.values() if len(group) > 1]


def pack_members(runs: Sequence[PlannedRun], out: Path) -> dict[str, int]:
    """Each packed run's key and the members of its whole pack (`packs_of`)."""
    return {run.key: sum(len(r.cfg.seeds) for r in group) for group in packs_of(runs, out) for run in group}

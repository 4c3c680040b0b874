"""The paper's experiments written as data, and `avae reproduce`, which runs whatever is missing.

An experiment (`EXPERIMENTS`) names models, latent sizes and noise sizes; each is repeated on every
data set of a profile. A profile (`PROFILES`) says how much compute to spend: epochs, seeds, image
subsets and the evaluation budget. Runs that several experiments share (Fig. 7's curves are Table 1's
runs) are trained once. Every run is keyed by the hash of its configuration: a run whose checkpoint
reached the last epoch and whose eval.json holds every planned metric is reused, an unfinished one
resumes from its last checkpoint, so `reproduce` can be stopped and restarted at any point.

All seeds of one configuration train as one batched model; `jobs` > 1 trains independent
configurations in parallel processes. Each process records its run in `OUT/index.json` under a file
lock; the report reads the run directories themselves, so the index is a convenience only.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from avae.errors import AvaeError, ConfigError
from avae.io import atomic_write_text, read_json, write_json
from avae.models import MODELS
from avae.train import CHECKPOINT, Runtime, TrainConfig, config_hash, make_config, train

DATASETS = ("mnist", "fashion-mnist")

# --- the paper's experiments, as data ------------------------------------------------------------
# noise_dims apply to the models that take injected noise; the VAE always has none.
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "table1": {
        "title": "Table 1: test negative ELBO of the four models at latent 10, 15 and 20",
        "models": ("vae", "vae-noise", "avb", "avae"),
        "latent_dims": (10, 15, 20),
        "noise_dims": (10,),
    },
    "fig6": {
        "title": "Fig. 6: VAE+eps with noise dimension 5, 10 and 15 against the VAE, latent 10",
        "models": ("vae", "vae-noise"),
        "latent_dims": (10,),
        "noise_dims": (5, 10, 15),
    },
    "fig7": {
        "title": "Fig. 7: VAE, VAE+eps and AVAE over training, latent 10 and 15",
        "models": ("vae", "vae-noise", "avae"),
        "latent_dims": (10, 15),
        "noise_dims": (10,),
    },
    "fig8": {
        "title": "Fig. 8: 8x8 sample grids of VAE+eps, AVAE and AVB, latent 10, noise 10",
        "models": ("vae-noise", "avae", "avb"),
        "latent_dims": (10,),
        "noise_dims": (10,),
    },
}

# Table 1 of the paper, negative ELBO in nats: dataset -> model -> latent -> value.
# Named configurations (`avae train --preset NAME`): flat settings for `make_config`; options given
# on the command line or in --config override them.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    # The IWAE paper's anchor (Burda et al. 2016, one stochastic layer): 784-200-200-50 tanh MLPs,
    # dynamically binarised MNIST, the VAE objective, Adam (0.9, 0.999), batch 20, 3280 epochs
    # (test log p(x) about -86.76 after all of them). Not copied: its learning-rate schedule
    # (1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7) and Adam's eps 1e-4; this trains at a constant lr.
    "iwae-anchor": {
        "model": "vae",
        "dataset": "mnist",
        "pixels": "binarized",
        "likelihood": "bernoulli",
        "hidden": (200, 200),
        "latent_dim": 50,
        "activation": "tanh",
        "batch_size": 20,
        "lr": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epochs": 3280,
    },
}

PAPER_TABLE1: dict[str, dict[str, dict[int, float]]] = {
    "mnist": {
        "vae": {10: 109.8, 15: 111.2, 20: 112.8},
        "vae-noise": {10: 107.3, 15: 109.4, 20: 111.1},
        "avb": {10: 95.12, 15: 97.01, 20: 97.81},
        "avae": {10: 93.08, 15: 96.90, 20: 97.90},
    },
    "fashion-mnist": {
        "vae": {10: 221.1, 15: 223.5, 20: 225.4},
        "vae-noise": {10: 220.1, 15: 222.4, 20: 223.9},
        "avb": {10: 216.9, 15: 217.3, 20: 220.3},
        "avae": {10: 216.1, 15: 217.1, 20: 220.6},
    },
}


@dataclass(frozen=True)
class Profile:
    """How much compute a reproduction spends: training budget and evaluation budget."""

    name: str
    description: str
    epochs: int
    seeds: tuple[int, ...]
    train_subset: int = 0  # first N training images (0: all 60,000)
    test_subset: int = 0  # first N test images for the per-epoch curves and the ELBO (0: all 10,000)
    datasets: tuple[str, ...] = DATASETS
    latent_dims: tuple[int, ...] = (10, 15, 20)  # keeps only these latent sizes of the experiments
    experiments: tuple[str, ...] = tuple(EXPERIMENTS)
    honest_latents: tuple[int, ...] = (10, 15, 20)  # runs that also get IWAE and AIS
    iwae_k: int = 1000
    iwae_subset: int = 0  # test points for IWAE (0: the run's whole test set)
    ais_subset: int = 500
    ais_steps: int = 500
    ais_chains: int = 4
    extras_samples: int = 1000  # samples / test images for FD, q(z) statistics and active units
    classifier_epochs: int = 3
    classifier_subset: int = 0


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
        iwae_subset=20,
        ais_subset=10,
        ais_steps=20,
        ais_chains=2,
        extras_samples=200,
        classifier_epochs=1,
        classifier_subset=2000,
    ),
    "quick": Profile(
        "quick",
        "the README's first command: every experiment on both data sets, 3 seeds, a 10k-image "
        "training subset, about 30 minutes on 2 CPU cores",
        epochs=10,
        seeds=(0, 1, 2),
        train_subset=10000,
        test_subset=2000,
        honest_latents=(10,),
        iwae_subset=200,
        ais_subset=50,
        ais_steps=200,
        ais_chains=4,
        extras_samples=1000,
        classifier_epochs=2,
        classifier_subset=20000,
    ),
    "full": Profile(
        "full",
        "paper scale: 5 seeds, 100 epochs, all 60,000 training and 10,000 test images; a GPU job",
        epochs=100,
        seeds=(0, 1, 2, 3, 4),
        iwae_subset=0,
        ais_subset=1000,
        ais_steps=1000,
        ais_chains=8,
        extras_samples=10000,
        classifier_epochs=5,
    ),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


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
    """Every distinct configuration the profile's experiments need, in a stable order."""
    profile = get_profile(profile)
    planned: dict[str, PlannedRun] = {}
    for dataset in profile.datasets:
        for name in profile.experiments:
            spec = EXPERIMENTS[name]
            for latent in spec["latent_dims"]:
                if latent not in profile.latent_dims:
                    continue
                for model in spec["models"]:
                    noises = (0,) if MODELS[model].noise_free else spec["noise_dims"]
                    for noise in noises:
                        settings = {
                            "model": model,
                            "dataset": dataset,
                            "latent_dim": latent,
                            "noise_dim": noise,
                            "epochs": profile.epochs,
                            "seeds": profile.seeds,
                            "train_subset": profile.train_subset,
                            "test_subset": profile.test_subset,
                        }
                        run = PlannedRun(
                            settings, [name], latent in profile.honest_latents and noise in (0, 10)
                        )
                        if run.key in planned:
                            planned[run.key].experiments.append(name)
                        else:
                            planned[run.key] = run
    return list(planned.values())


def run_dir_name(cfg: TrainConfig) -> str:
    return f"{cfg.model.name}-{cfg.dataset}-z{cfg.model.latent_dim}-n{cfg.model.noise_dim}-{config_hash(cfg)}"


# --- evaluation plan -----------------------------------------------------------------------------


def supported_metrics() -> set[str]:
    """Metric families the installed evaluate_run accepts ("elbo" always)."""
    from avae import evaluate

    if "metrics" not in inspect.signature(evaluate.evaluate_run).parameters:
        return {"elbo"}
    return set(getattr(evaluate, "METRICS", ("elbo",)))


def eval_steps(run: PlannedRun, profile: Profile) -> list[tuple[str, str, dict[str, Any]]]:
    """(eval.json key, metric family, evaluate settings) for every metric the run needs."""
    supported = supported_metrics()
    steps = [("neg_elbo", "elbo", {})]
    if run.honest and "iwae" in supported:
        steps.append(
            (f"iwae_k{profile.iwae_k}", "iwae", {"k": (1, profile.iwae_k), "subset": profile.iwae_subset})
        )
    if run.honest and "ais" in supported:
        steps.append(
            (
                "ais",
                "ais",
                {
                    "subset": profile.ais_subset,
                    "ais_steps": profile.ais_steps,
                    "ais_chains": profile.ais_chains,
                },
            )
        )
    return steps


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of the run's last checkpoint, 0 when there is none."""
    from avae.checkpoint import load_checkpoint

    if not (run_dir / CHECKPOINT).exists():
        return 0
    return int(load_checkpoint(run_dir / CHECKPOINT)[1]["epoch"])


def missing_metrics(run_dir: Path, cfg: TrainConfig, steps) -> list[tuple[str, str, dict[str, Any]]]:
    path = run_dir / "eval.json"
    record = read_json(path) if path.exists() else {}
    have = record.get("metrics", {}) if record.get("epoch") == cfg.epochs else {}
    return [step for step in steps if step[0] not in have]


def extras_done(run_dir: Path, cfg: TrainConfig) -> bool:
    path = run_dir / "extras.json"
    return path.exists() and read_json(path).get("epoch") == cfg.epochs


def status_of(run: PlannedRun, profile: Profile, out: Path) -> tuple[str, int]:
    """("finished" | "evaluate" | "resume" | "new", epochs already trained)."""
    run_dir = out / run.dir_name
    epoch = checkpoint_epoch(run_dir)
    if epoch >= run.cfg.epochs:
        if missing_metrics(run_dir, run.cfg, eval_steps(run, profile)) or not extras_done(run_dir, run.cfg):
            return "evaluate", epoch
        return "finished", epoch
    return ("resume" if epoch else "new"), epoch


# --- time estimates ------------------------------------------------------------------------------
# Used when avae.bench is unavailable: rough seconds per epoch on 60,000 images for one member on 2
# CPU cores (measured, noisy), and for one GPU a guess (not measured: small MLPs are bound by kernel
# launches there, so the members of one batched model cost little more than one).
CPU_EPOCH_SECONDS = {"vae": 3.0, "vae-noise": 3.3, "avb": 5.0, "avae": 9.0}
GPU_EPOCH_SECONDS = {"vae": 1.5, "vae-noise": 1.6, "avb": 2.5, "avae": 4.0}
# IWAE importance samples (one z, one image) or AIS leapfrog steps (one chain, one image) per second
# and member. CPU: measured on one thread of the shared 2-core machine (IWAE-1000 on 500 points, 3
# members: 42 s; AIS 200 steps x 4 chains on 100 points: 65 s), noisy. GPU: a guess.
DECODER_EVALS_PER_SECOND = {"cpu": 3.6e4, "cuda": 1.0e7}


def estimate_train_seconds(cfg: TrainConfig, epochs: int, device: str) -> float:
    members = len(cfg.seeds)
    images = cfg.train_subset or 60000
    if not device.startswith("cuda"):  # avae.bench measures CPUs only (its GPU figure is the CPU's)
        try:
            from avae.bench import estimate_seconds

            return float(
                estimate_seconds(cfg.model.name, members, epochs, train_images=images, device=device)
            )
        except (ImportError, AttributeError, TypeError, ValueError):
            pass
    if device.startswith("cuda"):
        per_epoch = GPU_EPOCH_SECONDS[cfg.model.name] * max(1.0, members / 8)
    else:
        per_epoch = CPU_EPOCH_SECONDS[cfg.model.name] * members
    return per_epoch * images / 60000 * epochs


def estimate_eval_seconds(run: PlannedRun, profile: Profile, device: str, steps) -> float:
    members = len(run.cfg.seeds)
    test = run.cfg.test_subset or 10000
    rate = DECODER_EVALS_PER_SECOND["cuda" if device.startswith("cuda") else "cpu"]
    evals = 0.0
    for _, family, settings in steps:
        if family == "elbo":
            evals += test
        elif family == "iwae":
            evals += (settings["subset"] or test) * profile.iwae_k
        elif family == "ais":
            evals += settings["subset"] * settings["ais_chains"] * settings["ais_steps"] * 10
    evals += 3 * profile.extras_samples  # samples, reconstructions, encoder passes
    return evals * members / rate + 2.0  # + loading


# --- the worker ----------------------------------------------------------------------------------


def locked_update_index(out: Path, key: str, entry: dict[str, Any]) -> None:
    """Merge one run's summary into OUT/index.json, under an exclusive lock on OUT/.index.lock."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".index.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            path = out / "index.json"
            index = read_json(path) if path.exists() else {"runs": {}}
            index.setdefault("runs", {})[key] = entry
            write_json(path, index)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def rebuild_index(out: str | Path) -> dict[str, Any]:
    """index.json from the run directories alone (if the index was lost or is stale)."""
    out = Path(out)
    index: dict[str, Any] = {"runs": {}}
    for config in sorted(out.glob("*/config.json")):
        record = read_json(config)
        cfg = make_config(record["config"])
        index["runs"][config_hash(cfg)] = summary_entry(config.parent, cfg)
    write_json(out / "index.json", index)
    return index


def summary_entry(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    path = run_dir / "eval.json"
    record = read_json(path) if path.exists() else {}
    return {
        "dir": run_dir.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "latent_dim": cfg.model.latent_dim,
        "noise_dim": cfg.model.noise_dim,
        "seeds": list(cfg.seeds),
        "epochs": cfg.epochs,
        "trained_epochs": checkpoint_epoch(run_dir),
        "metrics": {k: {"mean": v["mean"], "sem": v["sem"]} for k, v in record.get("metrics", {}).items()},
    }


def execute_run(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume), evaluate and compute the report's extras for one planned run."""
    from avae import report
    from avae.evaluate import evaluate_run

    if task.get("threads"):
        import torch

        torch.set_num_threads(task["threads"])
    out = Path(task["out"])
    run: PlannedRun = task["run"]
    profile: Profile = task["profile"]
    cfg, run_dir = run.cfg, out / run.dir_name
    device, data_dir = task["device"], task["data_dir"]
    started = time.perf_counter()
    trained = False
    if checkpoint_epoch(run_dir) < cfg.epochs:
        callback = tensorboard_callback(run_dir, cfg) if task.get("tensorboard") else None
        kwargs = {"on_epoch": callback} if callback is not None else {}
        train(cfg, run_dir, resume=True, runtime=Runtime(device, data_dir, task["progress"]), **kwargs)
        trained = True
    evaluated = []
    for key, family, settings in missing_metrics(run_dir, cfg, eval_steps(run, profile)):
        if family == "elbo":
            evaluate_run(run_dir, device=device, data_dir=data_dir)
        else:
            evaluate_run(run_dir, metrics=(family,), settings=settings, device=device, data_dir=data_dir)
        evaluated.append(key)
    if not extras_done(run_dir, cfg):
        report.compute_extras(
            run_dir,
            classifier=report.classifier_path(out, cfg.dataset),
            samples=profile.extras_samples,
            device=device,
            data_dir=data_dir,
        )
        evaluated.append("extras")
    entry = summary_entry(run_dir, cfg)
    locked_update_index(out, run.key, entry)
    return {
        "dir": run.dir_name,
        "trained": trained,
        "evaluated": evaluated,
        "seconds": round(time.perf_counter() - started, 1),
    }


def tensorboard_callback(run_dir: Path, cfg: TrainConfig):
    """An on_epoch callback writing training scalars and sample grids for TensorBoard, or None
    (with a message) when tensorboard is not installed or train() has no epoch hook."""
    if "on_epoch" not in inspect.signature(train).parameters:
        print("avae: --tensorboard needs train(on_epoch=...); training without it", file=sys.stderr)
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(
            "avae: --tensorboard needs the tensorboard package: pip install 'avae[tensorboard]'; "
            "training without it",
            file=sys.stderr,
        )
        return None
    writer = SummaryWriter(str(run_dir / "tensorboard"))

    def on_epoch(epoch: int, rows: list[dict[str, Any]], model) -> None:
        from avae.nets import MemberRandom
        from avae.report import image_grid

        for row in rows:
            for key, value in row.items():
                if key.startswith(("train_", "test_")) and isinstance(value, (int, float)):
                    writer.add_scalar(f"seed{row['seed']}/{key}", value, epoch)
        import torch

        device = next(model.parameters()).device
        with torch.no_grad():
            samples = model.sample(64, MemberRandom(cfg.seeds, "samples", device)).float().cpu().numpy()
        for member, seed in enumerate(cfg.seeds):
            writer.add_image(
                f"seed{seed}/samples", image_grid(samples[member].clip(0, 1)), epoch, dataformats="HW"
            )
        writer.flush()

    return on_epoch


# --- the command ---------------------------------------------------------------------------------


def dry_run_table(profile: Profile, out: Path, device: str, jobs: int) -> tuple[str, float]:
    from avae.report import format_table

    rows, total = [], 0.0
    for run in runs_for(profile):
        status, epoch = status_of(run, profile, out)
        steps = eval_steps(run, profile)
        train_s = (
            estimate_train_seconds(run.cfg, run.cfg.epochs - epoch, device) if epoch < run.cfg.epochs else 0
        )
        todo = missing_metrics(out / run.dir_name, run.cfg, steps) if status != "finished" else []
        eval_s = estimate_eval_seconds(run, profile, device, todo) if status != "finished" else 0
        total += train_s + eval_s
        rows.append(
            [
                run.dir_name,
                ",".join(run.experiments),
                len(run.cfg.seeds),
                run.cfg.epochs,
                f"{status} ({epoch} done)" if status == "resume" else status,
                ",".join(k for k, _, _ in steps),
                f"{train_s:.0f}",
                f"{eval_s:.0f}",
            ]
        )
    header = ["run", "experiments", "seeds", "epochs", "status", "metrics", "train s (est.)", "eval s (est.)"]
    return format_table(header, rows), total


def reproduce(
    profile: str | Profile,
    out: str | Path,
    *,
    device: str = "cpu",
    data_dir: str | None = None,
    progress: bool = True,
    jobs: int = 1,
    dry_run: bool = False,
    tensorboard: bool = False,
) -> list[dict[str, Any]]:
    """Train, evaluate and analyse every run of the profile that is not finished."""
    profile = get_profile(profile)
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
    out = Path(out)
    runs = runs_for(profile)
    if dry_run:
        table, total = dry_run_table(profile, out, device, jobs)
        print(table)
        print(
            f"\n{len(runs)} runs of profile {profile.name!r} on {device}: about {total / 60:.1f} min of "
            f"compute in all (rough estimate), about {total / 60 / min(jobs, os.cpu_count() or 1):.1f} min "
            f"with --jobs {jobs}"
        )
        return []
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "reproduce.json",
        {
            "profile": profile.name,
            "settings": json.loads(json.dumps(asdict(profile))),
            "runs": [{"key": r.key, "dir": r.dir_name, "experiments": r.experiments} for r in runs],
        },
    )
    from avae import report

    for dataset in profile.datasets:  # once per data set, before the workers need it
        report.ensure_classifier(
            report.classifier_path(out, dataset),
            dataset,
            epochs=profile.classifier_epochs,
            subset=profile.classifier_subset,
            device=device,
            data_dir=data_dir,
        )
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    tasks = [
        {
            "run": run,
            "profile": profile,
            "out": str(out),
            "device": device,
            "data_dir": data_dir,
            "progress": progress and jobs == 1,
            "threads": threads,
            "tensorboard": tensorboard,
        }
        for run in runs
    ]
    results: list[dict[str, Any]] = []
    failures: list[str] = []  # a failed run (e.g. diverged) does not stop the others
    started = time.perf_counter()
    if jobs == 1:
        for task in tasks:
            try:
                results.append(announce(execute_run(task), len(results), len(tasks)))
            except AvaeError as exc:
                failures.append(f"{task['run'].dir_name}: {exc}")
                print(f"avae: run failed: {failures[-1]}", file=sys.stderr)
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(execute_run, task): task["run"].dir_name for task in tasks}
            for future in as_completed(futures):
                try:
                    results.append(announce(future.result(), len(results), len(tasks)))
                except AvaeError as exc:
                    failures.append(f"{futures[future]}: {exc}")
                    print(f"avae: run failed: {failures[-1]}", file=sys.stderr)
    atomic_write_text(out / "reproduce.log", "\n".join(json.dumps(r) for r in results) + "\n")
    if failures:
        raise AvaeError(
            f"{len(failures)} of {len(tasks)} runs failed ({'; '.join(failures)}); the others are "
            f"finished: fix the cause, rerun the same command (only those run), then `avae report {out}`"
        )
    print(
        f"\n{len(runs)} runs ({sum(r['trained'] for r in results)} trained) in "
        f"{time.perf_counter() - started:.0f} s; write the report with `avae report {out}`"
    )
    return results


def announce(result: dict[str, Any], done: int, total: int) -> dict[str, Any]:
    what = (
        "trained"
        if result["trained"]
        else ("evaluated" if result["evaluated"] else "finished earlier, reused")
    )
    extra = f" ({', '.join(result['evaluated'])})" if result["evaluated"] else ""
    print(f"[{done + 1}/{total}] {result['dir']}: {what}{extra}, {result['seconds']} s", flush=True)
    return result


def with_epochs(profile: Profile, epochs: int) -> Profile:
    return replace(profile, epochs=epochs)

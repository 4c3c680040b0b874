"""The paper's runs written as data, and `avae reproduce`, which trains whatever is missing.

A profile says how much compute to spend; a run is a flat settings dict for `make_config`.
Finished runs are found by the hash of their configuration and reused, so `reproduce` can be
stopped and started again at any point without losing or repeating finished work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avae.checkpoint import load_checkpoint
from avae.errors import ConfigError
from avae.evaluate import evaluate_run
from avae.io import atomic_write_text, read_json
from avae.models import MODELS
from avae.report import format_table
from avae.train import CHECKPOINT, Runtime, TrainConfig, config_hash, make_config, train


@dataclass(frozen=True)
class Profile:
    """How much compute a reproduction spends per run."""

    name: str
    epochs: int
    seeds: tuple[int, ...]
    train_subset: int = 0
    test_subset: int = 0
    datasets: tuple[str, ...] = ("mnist",)
    latent_dims: tuple[int, ...] = (10,)


PROFILES: dict[str, Profile] = {
    # a few seconds per model: exercises every code path; used by the tests
    "smoke": Profile("smoke", epochs=1, seeds=(0,), train_subset=1000, test_subset=500),
    # the README's first command: the four models at latent 10 on MNIST in about 10 minutes
    "quick": Profile("quick", epochs=10, seeds=(0,)),
}

PAPER_NEG_ELBO = {  # Table 1, MNIST, latent 10
    "vae": 109.8,
    "vae-noise": 107.3,
    "avb": 95.12,
    "avae": 93.08,
}


def runs_for(profile: Profile) -> list[dict[str, Any]]:
    """Flat settings for every run of the profile: each model, data set and latent size."""
    return [
        {
            "model": model,
            "dataset": dataset,
            "latent_dim": latent,
            "epochs": profile.epochs,
            "seeds": profile.seeds,
            "train_subset": profile.train_subset,
            "test_subset": profile.test_subset,
        }
        for dataset in profile.datasets
        for latent in profile.latent_dims
        for model in MODELS
    ]


def run_dir_name(cfg: TrainConfig) -> str:
    return f"{cfg.model.name}-{cfg.dataset}-z{cfg.model.latent_dim}-{config_hash(cfg)}"


def is_finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """True when the run trained all its epochs and was evaluated at the last one."""
    if not (run_dir / CHECKPOINT).exists() or not (run_dir / "eval.json").exists():
        return False
    _, meta = load_checkpoint(run_dir / CHECKPOINT)
    return meta["epoch"] == cfg.epochs and read_json(run_dir / "eval.json")["epoch"] == cfg.epochs


def reproduce(
    profile_name: str,
    out: str | Path,
    *,
    device: str = "cpu",
    data_dir: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate every run of the profile that is not finished; print the table."""
    if profile_name not in PROFILES:
        raise ConfigError(f"unknown profile {profile_name!r}; choose one of {', '.join(PROFILES)}")
    out = Path(out)
    runtime = Runtime(device, data_dir, progress)
    results = []
    for settings in runs_for(PROFILES[profile_name]):
        cfg = make_config(settings)
        run_dir = out / run_dir_name(cfg)
        started = time.perf_counter()
        if is_finished(run_dir, cfg):
            print(f"{run_dir.name}: finished earlier, reused")
        else:
            train(cfg, run_dir, resume=True, runtime=runtime)
            evaluate_run(run_dir, device=device, data_dir=data_dir)
        results.append({**read_json(run_dir / "eval.json"), "seconds": time.perf_counter() - started})
    table = results_table(results)
    atomic_write_text(out / "results.md", table + "\n")
    print(table)
    print(f"\nruns, metrics, checkpoints and sample grids are in {out}/")
    return results


def results_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        metric = result["metrics"]["neg_elbo"]
        paper = PAPER_NEG_ELBO.get(result["model"]) if result["dataset"] == "mnist" else None
        rows.append(
            [
                result["model"],
                result["dataset"],
                result["epoch"],
                f"{metric['mean']:.2f} ± {metric['std']:.2f}"
                if metric["members"] > 1
                else f"{metric['mean']:.2f}",
                paper if paper is not None else "-",
                metric["label"],
            ]
        )
    header = [
        "model",
        "dataset",
        "epochs",
        "test neg. ELBO (ours)",
        "paper (Table 1)",
        "what it is",
    ]
    return format_table(header, rows)

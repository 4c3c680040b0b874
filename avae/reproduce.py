"""`avae reproduce`: train, evaluate and analyse whatever a profile's runs still need.

All seeds of one configuration train as one batched model; `jobs` > 1 runs independent
configurations in parallel processes. Each process records its run in `OUT/index.json` under a
file lock; the report reads the run directories themselves, so the index is a convenience only.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from avae.analysis import analyse_run, classifier_path, ensure_classifier
from avae.config import Runtime, TrainConfig, config_hash
from avae.errors import AvaeError, ConfigError
from avae.evaluate import evaluate_run
from avae.figures import format_table, image_grid
from avae.io import atomic_write_text, file_lock, read_json, write_json
from avae.nets import MemberRandom
from avae.plan import (
    PlannedRun,
    Profile,
    analysis_done,
    estimate_run_seconds,
    eval_steps,
    get_profile,
    missing_metrics,
    runs_for,
    status_of,
)
from avae.runs import EVAL, checkpoint_epoch, read_config
from avae.train import train

MANIFEST = "reproduce.json"
INDEX = "index.json"


@dataclass
class Task:
    """One planned run for a worker process, with how to run it."""

    run: PlannedRun
    profile: Profile
    out: Path
    runtime: Runtime
    tensorboard: bool = False


def locked_update_index(out: Path, key: str, entry: dict[str, Any]) -> None:
    """Merge one run's summary into OUT/index.json, under an exclusive lock on OUT/.index.lock."""
    with file_lock(out / ".index.lock"):
        path = out / INDEX
        index = read_json(path) if path.exists() else {"runs": {}}
        index.setdefault("runs", {})[key] = entry
        write_json(path, index)


def rebuild_index(out: str | Path) -> dict[str, Any]:
    """index.json from the run directories alone (if the index was lost or is stale)."""
    out = Path(out)
    index: dict[str, Any] = {"runs": {}}
    for config in sorted(out.glob("*/config.json")):
        cfg = read_config(config.parent)
        index["runs"][config_hash(cfg)] = summary_entry(config.parent, cfg)
    write_json(out / INDEX, index)
    return index


def summary_entry(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    record = read_json(run_dir / EVAL) if (run_dir / EVAL).exists() else {}
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


def execute_run(task: Task) -> dict[str, Any]:
    """Train (or resume), evaluate and analyse one planned run."""
    cfg, run_dir, runtime = task.run.cfg, task.out / task.run.dir_name, task.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    started = time.perf_counter()
    trained = checkpoint_epoch(run_dir) < cfg.epochs
    if trained:
        callback = tensorboard_callback(run_dir, cfg) if task.tensorboard else None
        train(cfg, run_dir, resume=True, runtime=runtime, on_epoch=callback)
    evaluated = []
    for key, family, settings in missing_metrics(run_dir, cfg, eval_steps(task.run, task.profile)):
        evaluate_run(run_dir, metrics=(family,), settings=settings, runtime=runtime)
        evaluated.append(key)
    if not analysis_done(run_dir, cfg):
        analyse_run(
            run_dir,
            classifier=classifier_path(task.out, cfg.dataset),
            samples=task.profile.analysis_samples,
            runtime=runtime,
        )
        evaluated.append("analysis")
    locked_update_index(task.out, task.run.key, summary_entry(run_dir, cfg))
    return {
        "dir": task.run.dir_name,
        "trained": trained,
        "evaluated": evaluated,
        "seconds": round(time.perf_counter() - started, 1),
    }


def tensorboard_callback(run_dir: Path, cfg: TrainConfig):
    """An on_epoch callback writing training scalars and sample grids for TensorBoard, or None
    (with a message) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional extra: imported only when asked for
    except ImportError:
        print(
            "avae: --tensorboard needs the tensorboard package: pip install 'avae[tensorboard]'; "
            "training without it",
            file=sys.stderr,
        )
        return None
    writer = SummaryWriter(str(run_dir / "tensorboard"))

    def on_epoch(epoch: int, rows: list[dict[str, Any]], model) -> None:
        for row in rows:
            for key, value in row.items():
                if key.startswith(("train_", "test_")) and isinstance(value, (int, float)):
                    writer.add_scalar(f"seed{row['seed']}/{key}", value, epoch)
        device = next(model.parameters()).device
        with torch.no_grad():
            samples = model.sample(64, MemberRandom(cfg.seeds, "samples", device)).float().cpu().numpy()
        for member, seed in enumerate(cfg.seeds):
            writer.add_image(
                f"seed{seed}/samples", image_grid(samples[member].clip(0, 1)), epoch, dataformats="HW"
            )
        writer.flush()

    return on_epoch


def dry_run_table(profile: Profile, out: Path, device: str) -> tuple[str, float]:
    rows, total = [], 0.0
    for run in runs_for(profile):
        status, epoch = status_of(run, profile, out)
        train_s, eval_s = estimate_run_seconds(run, profile, out, device)
        total += train_s + eval_s
        rows.append(
            [
                run.dir_name,
                ",".join(run.experiments),
                len(run.cfg.seeds),
                run.cfg.epochs,
                f"{status} ({epoch} done)" if status == "resume" else status,
                ",".join(k for k, _, _ in eval_steps(run, profile)),
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
    runtime: Runtime | None = None,
    jobs: int = 1,
    dry_run: bool = False,
    tensorboard: bool = False,
) -> list[dict[str, Any]]:
    """Train, evaluate and analyse every run of the profile that is not finished."""
    profile = get_profile(profile)
    runtime = runtime or Runtime()
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
    out = Path(out)
    runs = runs_for(profile)
    if dry_run:
        table, total = dry_run_table(profile, out, runtime.device)
        print(table)
        print(
            f"\n{len(runs)} runs of profile {profile.name!r} on {runtime.device}: about {total / 60:.1f} min "
            f"of compute in all (estimate), about {total / 60 / min(jobs, os.cpu_count() or 1):.1f} min "
            f"with --jobs {jobs}"
        )
        return []
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / MANIFEST,
        {
            "profile": profile.name,
            "settings": json.loads(json.dumps(asdict(profile))),
            "runs": [{"key": r.key, "dir": r.dir_name, "experiments": r.experiments} for r in runs],
        },
    )
    for dataset in profile.datasets:  # once per data set, before the workers need it
        ensure_classifier(
            classifier_path(out, dataset),
            dataset,
            epochs=profile.classifier_epochs,
            subset=profile.classifier_subset,
            runtime=runtime,
        )
    worker_runtime = replace(
        runtime,
        progress=runtime.progress and jobs == 1,
        threads=max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else runtime.threads,
    )
    tasks = [Task(run, profile, out, worker_runtime, tensorboard) for run in runs]
    results, failures = run_tasks(tasks, jobs)
    atomic_write_text(out / "reproduce.log", "\n".join(json.dumps(r) for r in results) + "\n")
    if failures:
        raise AvaeError(
            f"{len(failures)} of {len(tasks)} runs failed ({'; '.join(failures)}); the others are "
            f"finished: fix the cause, rerun the same command (only those run), then `avae report {out}`"
        )
    print(
        f"\n{len(runs)} runs ({sum(r['trained'] for r in results)} trained); "
        f"write the report with `avae report {out}`"
    )
    return results


def run_tasks(tasks: list[Task], jobs: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every task, in this process or in `jobs` worker processes; a failed run (e.g. diverged)
    does not stop the others."""
    results: list[dict[str, Any]] = []
    failures: list[str] = []

    def record(name: str, outcome) -> None:
        try:
            results.append(announce(outcome(), len(results), len(tasks)))
        except AvaeError as exc:
            failures.append(f"{name}: {exc}")
            print(f"avae: run failed: {failures[-1]}", file=sys.stderr)

    if jobs == 1:
        for task in tasks:
            record(task.run.dir_name, lambda task=task: execute_run(task))
        return results, failures
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(execute_run, task): task.run.dir_name for task in tasks}
        for future in as_completed(futures):
            record(futures[future], future.result)
    return results, failures


def announce(result: dict[str, Any], done: int, total: int) -> dict[str, Any]:
    what = (
        "trained"
        if result["trained"]
        else ("evaluated" if result["evaluated"] else "finished earlier, reused")
    )
    extra = f" ({', '.join(result['evaluated'])})" if result["evaluated"] else ""
    print(f"[{done + 1}/{total}] {result['dir']}: {what}{extra}, {result['seconds']} s", flush=True)
    return result

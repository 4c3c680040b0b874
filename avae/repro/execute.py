"""One planned run, start to finish (`execute_run`): train or resume it, evaluate what its plan still
needs, analyse it, in its own run directory, and record it in the reproduction's index.json. Every
executor (avae.repro.runner) runs a `Task` through here, in whatever process it has."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avae.core.nets import MemberRandom
from avae.errors import ConfigError
from avae.evaluation.analysis import analyse_run, classifier_path, train_classifier_once
from avae.evaluation.evaluate import evaluate_run
from avae.io import file_lock, read_json, write_json
from avae.repro.plan import EvalStep, PlannedRun, Profile, analysis_done, eval_steps, missing_metrics
from avae.repro.results import INDEX
from avae.training.config import Runtime, TrainConfig
from avae.training.images import image_grid
from avae.training.runs import EVAL, metric_entries, trained_epoch
from avae.training.train import EpochCallback, train


@dataclass
class Task:
    """One planned run for a worker process, with how to run it.

    With a profile, the run gets the profile's evaluation plan and analysis (`avae reproduce`).
    Without one (`avae sweep`), it gets `steps` and no analysis."""

    run: PlannedRun
    profile: Profile | None
    out: Path
    runtime: Runtime
    tensorboard: bool = False
    steps: list[EvalStep] | None = None  # the evaluation plan; None: the profile's
    packed: bool = False  # trained in a pack just before (`avae.repro.runner.train_in_packs`)

    def eval_plan(self) -> list[EvalStep]:
        """The metrics this run must have in eval.json."""
        if self.steps is not None:
            return self.steps
        if self.profile is None:
            raise ConfigError("a task needs a profile or evaluation steps")
        return eval_steps(self.run, self.profile)


def locked_update_index(
    out: Path, key: str, entry: dict[str, Any], seconds: dict[str, float] | None = None
) -> None:
    """Merge one run's summary into OUT/index.json, under an exclusive lock on OUT/.index.lock; the
    seconds of each part are added to what earlier sessions recorded."""
    with file_lock(out / ".index.lock"):
        path = out / INDEX
        index = read_json(path) if path.exists() else {"runs": {}}
        before = index.setdefault("runs", {}).get(key, {}).get("seconds", {})
        spent = {
            part: round(before.get(part, 0.0) + (seconds or {}).get(part, 0.0), 1)
            for part in {*before, *(seconds or {})}
        }
        index["runs"][key] = {**entry, "seconds": dict(sorted(spent.items()))}
        write_json(path, index)


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
        "trained_epochs": trained_epoch(run_dir),
        "metrics": {k: {"mean": v.mean, "sem": v.sem} for k, v in metric_entries(record).items()},
    }


# Training is charged to index.json at the first epoch's end after this many seconds, and at the
# training call's end: a stop loses at most this much of it, and short epochs (a GPU's) do not each
# rewrite the shared index under its lock.
TRAIN_CHARGE_SECONDS = 60.0


class PartClock:
    """The seconds a run's parts take, each charged to OUT/index.json as soon as it is spent (the
    training every TRAIN_CHARGE_SECONDS, at an epoch's end: `on_epoch`), so that a session stopped
    part-way keeps what it spent. `book(part, seconds)` records them: one run's entry (`of_run`),
    or a pack's runs by members (`avae.repro.runner.charge_by_members`)."""

    def __init__(self, book: Callable[[str, float], None]) -> None:
        self.book, self.mark = book, time.perf_counter()

    @classmethod
    def of_run(cls, task: Task) -> PartClock:
        """A clock charging one task's run."""
        run_dir = task.out / task.run.dir_name

        def book(part: str, seconds: float) -> None:
            entry = summary_entry(run_dir, task.run.cfg)
            locked_update_index(task.out, task.run.key, entry, {part: seconds})

        return cls(book)

    def charge(self, part: str) -> None:
        """Charge the seconds since the last mark to `part`, and mark now."""
        now = time.perf_counter()
        self.book(part, now - self.mark)
        self.mark = now

    def skip(self) -> None:
        """Charge the seconds since the last mark to nothing (waiting for another run's work)."""
        self.mark = time.perf_counter()

    def on_epoch(self, then: EpochCallback | None = None) -> EpochCallback:
        """A training callback (`train`'s on_epoch) that charges "train" at an epoch's end once
        TRAIN_CHARGE_SECONDS have passed since the last charge, then calls `then`, if given."""

        def charge_then(epoch: int, rows: list[dict[str, Any]], model) -> None:
            if time.perf_counter() - self.mark >= TRAIN_CHARGE_SECONDS:
                self.charge("train")
            if then is not None:
                then(epoch, rows, model)

        return charge_then


def execute_run(task: Task) -> dict[str, Any]:
    """Train (or resume), evaluate and analyse one planned run; index.json accumulates the seconds
    each part took, over every session that worked on the run, as each part ends (training: every
    TRAIN_CHARGE_SECONDS; `PartClock`)."""
    cfg, run_dir, runtime = task.run.cfg, task.out / task.run.dir_name, task.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    started, clock = time.perf_counter(), PartClock.of_run(task)
    trained = trained_epoch(run_dir) < cfg.epochs
    if trained:
        tensorboard = tensorboard_callback(run_dir, cfg) if task.tensorboard else None
        train(cfg, run_dir, resume=True, runtime=runtime, on_epoch=clock.on_epoch(tensorboard))
        clock.charge("train")  # after the last epoch: the run's card and sample grids
    evaluated = []
    for step in missing_metrics(run_dir, cfg, task.eval_plan()):
        evaluate_run(run_dir, metrics=(step.family,), settings=step.settings, runtime=runtime)
        evaluated.append(step.key)
        clock.charge(step.key)
    if task.profile is not None and task.profile.evaluate and not analysis_done(run_dir, cfg):
        classifier = prepare_classifier(task.profile, task.out, cfg.dataset, runtime)
        if classifier.trained:
            clock.charge("classifier")
        else:
            clock.skip()  # another run trained it: waiting for it is not this run's cost
        samples = task.profile.analysis_samples
        analyse_run(run_dir, classifier=classifier.path, samples=samples, runtime=runtime)
        evaluated.append("analysis")
        clock.charge("analysis")
    if not evaluated and not trained:  # a finished run, reused: its entry, nothing spent
        locked_update_index(task.out, task.run.key, summary_entry(run_dir, cfg))
    return {
        "dir": task.run.dir_name,
        "trained": trained or task.packed,
        "evaluated": evaluated,
        "seconds": round(time.perf_counter() - started, 1),
    }


@dataclass(frozen=True)
class Classifier:
    path: Path
    trained: bool  # by this call (else it was cached, or another run trained it meanwhile)


def prepare_classifier(profile: Profile, out: Path, dataset: str, runtime: Runtime) -> Classifier:
    """The feature classifier of `dataset` for the analysis, trained by the first run that needs it
    (under a file lock, so parallel runs train it once) and cached in OUT; no run waits for it
    before its own training."""
    path = classifier_path(out, dataset)
    epochs, subset = profile.classifier_epochs, profile.classifier_subset
    trained = train_classifier_once(path, dataset, epochs=epochs, subset=subset, runtime=runtime)
    return Classifier(path, trained)


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

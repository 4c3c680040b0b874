"""Training: the loop that runs a model's phases, checkpoints every epoch and resumes exactly.

One process trains the S members of one configuration at once (one per seed, see `avae.core.nets`).
Each iteration runs the model's phases top to bottom (`LatentModel.phases`); for AVAE that is
Algorithm 1:

1. an ELBO step on the decoder theta and encoder phi (eq. 9), with the adversarial term added to
   the encoder's loss under the "joint" reading of the encoder update,
2. a discriminator step on D (eq. 13), `disc_steps` times,
3. under the "separate" reading only, an adversarial step on the encoder phi against D (eq. 14).

Each phase has its own Adam optimiser. Gradients are taken only with respect to the phase's own
parameters, so, e.g., the discriminator step cannot move the decoder.

One iteration is one replayable unit (`avae.core.graphs`): it reads the batch and every member's noise
from static buffers that each step fills first (the noise copied from the member's own pooled
stream, so the numbers, the streams and an exact resume are those of a plain eager loop). On CUDA
the whole iteration, every phase's forward, backward and fused Adam step, is captured once in a
CUDA graph and replayed once per step (AVAE_CUDA_GRAPHS=0 turns this off); on CPU it runs eagerly.

This module is the loop over epochs and the run directory it fills; the iteration and the epoch of
steps are `avae.training.steps`, and what a checkpoint restores is `avae.training.resume`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from avae.core.graphs import use_device
from avae.core.models import LatentModel
from avae.data import datasets as data
from avae.errors import ConfigError, DivergenceError
from avae.io import file_lock, write_json
from avae.likelihood.scoring import EpochFigure
from avae.training.card import export_weights, write_card
from avae.training.checkpoint import save_checkpoint
from avae.training.config import Runtime, TrainConfig, refuse_unused
from avae.training.images import save_sample_grids
from avae.training.resume import checkpoint_payload, cpu_threads_of, restore_state
from avae.training.runs import (
    CHECKPOINT,
    CONFIG,
    LOCK,
    METRICS,
    clear_divergence,
    prepare_run_dir,
    read_metrics,
    record_divergence,
    record_resume,
    run_record,
    write_metrics,
)
from avae.training.steps import MemberImages, TrainingState, divergence, new_state, run_epoch

# What `train` and `train_pack` call after each epoch's checkpoint: (epoch, the epoch's rows of the
# (first) run, the model). For loggers and clocks: it must not change the model.
EpochCallback = Callable[[int, list[dict[str, Any]], LatentModel], None]


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    runtime: Runtime | None = None,
    on_epoch: EpochCallback | None = None,
) -> Path:
    """Train every member of `cfg` into the run directory `out`; return `out`.

    Each epoch appends one row per member to metrics.csv and replaces checkpoint.safetensors
    (atomically). With `resume`, training continues from the checkpoint in `out` and ends with
    the same weights as an uninterrupted run. `on_epoch(epoch, rows, model)`, if given, is called
    after each epoch's checkpoint (for loggers; it must not change the model). A second process
    training into the same `out` is refused while the first holds OUT/.lock.
    """
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(
            f"cfg must be a TrainConfig, got {type(cfg).__name__}; build it with avae.make_config(settings)"
        )
    if not isinstance(runtime, (Runtime, type(None))):
        raise ConfigError(f"runtime must be an avae.Runtime, got {type(runtime).__name__}")
    if not resume:
        refuse_unused(cfg)  # as make_config does, for a TrainConfig built by hand
    runtime = runtime or Runtime()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose another --out")
    device = use_device(runtime.device)
    train_x, test_x = split_data(cfg, runtime)
    if len(train_x) < cfg.batch_size:  # refused before anything is written
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(train_x)} training images")
    with file_lock(out / LOCK, blocking=False) as held:
        if not held:
            raise ConfigError(
                f"{out} is being trained by another process; wait for it or choose another --out"
            )
        return train_locked(cfg, out, resume, runtime, on_epoch, train_x.to(device), test_x.to(device))


@dataclass
class RunSlot:
    """One configuration among the members a state trains: its settings, its run directory, which
    rows of the state are its members (`members`, a slice with its start and stop: all of them, or
    a pack's share, `avae.training.packs`), the checkpoint it resumed from (None: a new run) and
    its metrics rows so far."""

    cfg: TrainConfig
    out: Path
    members: slice
    checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def train_locked(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    runtime: Runtime,
    on_epoch,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
) -> Path:
    device = train_x.device
    checkpoint = prepare_run_dir(cfg, out, resume)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    state = new_state(cfg, device, runtime.compile)
    run = RunSlot(cfg, out, slice(0, len(cfg.seeds)), checkpoint)
    if checkpoint is not None:
        restore_state(state, cfg, *checkpoint)
    start_run(run, state.epoch, runtime, examples(cfg, len(train_x), len(test_x)))
    test_pass = EpochFigure(state.model, test_x, cfg.seeds, graphed=state.graphs)  # neg_elbo_per_member
    label = f"{cfg.model.name} {cfg.dataset} S={len(cfg.seeds)}"
    with (
        cpu_threads_of(checkpoint, device),
        state.iteration,  # (each unit's graph is released when the block ends: GraphedCall.release)
        test_pass.unit,
    ):
        train_epochs(state, [run], train_x, test_pass, runtime, label, on_epoch)
    finish_run(state.model, cfg.seeds, out)
    return out


def examples(cfg: TrainConfig, train: int, test: int) -> dict[str, int]:
    """The numbers of images trained on and of the per-epoch figure, as config.json states them."""
    return {"train": train, "valid" if cfg.holdout else "test": test}


def start_run(run: RunSlot, epoch: int, runtime: Runtime, counts: dict[str, int]) -> None:
    """A resumed run reads its metrics rows up to the checkpoint's `epoch`; a new one writes its
    config.json (with the numbers of images, `counts`, that the card states)."""
    if run.checkpoint is not None:
        run.rows = [r for r in read_metrics(run.out / METRICS) if r["epoch"] <= epoch]
        if epoch == run.cfg.epochs:
            print(f"avae: {run.out} already has {epoch} epochs; nothing to train", file=sys.stderr)
        return
    record = run_record(run.cfg, runtime)
    record["data"]["examples"] = counts
    write_json(run.out / CONFIG, record)


def train_epochs(
    state: TrainingState,
    runs: list[RunSlot],
    train_x: torch.Tensor | MemberImages,
    figure: Callable[[], torch.Tensor],
    runtime: Runtime,
    label: str,
    on_epoch: EpochCallback | None = None,
) -> None:
    """Train `state` up to the runs' epochs (one setting for all: the loop reads only settings a
    pack's configurations share), each epoch writing every run's rows, metrics.csv and checkpoint
    (its own members' share of the state). `figure()` is the per-epoch figure of every member, [S].
    metrics.csv's seconds are the run's share of the epoch by members (all of it for one run), so
    that a packed run's cost adds up and compares with an unpacked run's.

    A non-finite loss writes diverged.json into the run of the member it names (numbered within
    that run) and raises the DivergenceError as `run_epoch` raised it (numbered within the state)."""
    cfg = runs[0].cfg
    size = train_x.size if isinstance(train_x, MemberImages) else len(train_x)
    steps = size // cfg.batch_size
    with tqdm(
        total=cfg.epochs * steps,
        initial=state.epoch * steps,
        desc=label,
        unit="step",
        disable=None if runtime.progress else True,  # None: off unless stderr is a terminal
        dynamic_ncols=True,
    ) as bar:
        while state.epoch < cfg.epochs:
            state.epoch += 1
            started = time.perf_counter()
            try:
                train_means = run_epoch(state, cfg, train_x, runtime, bar)
            except DivergenceError as error:
                run = owner(runs, error.member)
                record_divergence(run.out, run.cfg, within(run, error))
                raise
            test_values = figure()
            seconds = time.perf_counter() - started
            for run in runs:
                means = {name: values[run.members] for name, values in train_means.items()}
                share = seconds * (len(run.cfg.seeds) / len(state.seeds))  # a pack's epoch, by members
                write_epoch(state, run, means, test_values[run.members], share)
            bar.set_postfix(test=f"{float(test_values.mean()):.2f}")
            if runtime.progress and bar.disable:  # no terminal: one line per epoch instead of a bar
                print(
                    f"{label}: epoch {state.epoch}/{cfg.epochs}, test figure "
                    f"{float(test_values.mean()):.2f}, {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            if on_epoch is not None:  # e.g. TensorBoard logging: on_epoch(epoch, this epoch's rows, model)
                on_epoch(state.epoch, runs[0].rows[-len(runs[0].cfg.seeds) :], state.model)


def write_epoch(
    state: TrainingState, run: RunSlot, train_means: dict[str, torch.Tensor], test_values, seconds: float
) -> None:
    """One epoch's records of one run: its rows into metrics.csv, its members' checkpoint, and the
    end of any divergence or resume it had."""
    run.rows += epoch_rows(run.cfg, state.epoch, train_means, test_values, seconds)
    write_metrics(run.out / METRICS, run.rows)
    save_checkpoint(run.out / CHECKPOINT, *checkpoint_payload(state, run.cfg, run.members))
    clear_divergence(run.out)  # this epoch got past any earlier divergence
    if run.checkpoint is not None and state.epoch == run.checkpoint[1]["epoch"] + 1:
        record_resume(run.out, run.cfg, state.epoch - 1)  # once the resumed run has written an epoch


def owner(runs: list[RunSlot], member: int) -> RunSlot:
    """The run whose members include row `member` of the state."""
    return next(run for run in runs if run.members.start <= member < run.members.stop)


def within(run: RunSlot, error: DivergenceError) -> DivergenceError:
    """`error` with its member numbered within `run` (as the run's own metrics.csv numbers it)."""
    member = error.member - run.members.start
    return divergence(error.term, error.epoch, error.step, member, error.seed)


def finish_run(model: LatentModel, seeds, out: Path) -> None:
    """A finished run's sample grids, its exported weights and its model card."""
    save_sample_grids(model, seeds, out)
    export_weights(out)
    write_card(out)


def split_data(cfg: TrainConfig, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and the images of the per-epoch figure: the test set, or with
    cfg.holdout the last N training images, which are then not trained on (a validation split;
    with binarised pixels they are binarised once, with a fixed seed, as the test set is)."""
    own = {"test_data": cfg.test_data, "test_fraction": cfg.test_fraction}
    train_x = data.load_pixels(cfg.dataset, "train", cfg.pixels, runtime.data_dir, **own)
    if not cfg.holdout:
        test_x = data.load_pixels(cfg.dataset, "test", cfg.pixels, runtime.data_dir, **own)
        return subset(train_x, cfg.train_subset, "train"), subset(test_x, cfg.test_subset, "test")
    if cfg.holdout >= len(train_x):
        raise ConfigError(
            f"holdout {cfg.holdout} leaves none of the {len(train_x)} training images to train on"
        )
    held = train_x[-cfg.holdout :]
    if cfg.pixels == "binarized":
        held = torch.bernoulli(held, generator=torch.Generator().manual_seed(0))
    kept = subset(train_x[: -cfg.holdout], cfg.train_subset, "train", f" left by holdout {cfg.holdout}")
    return kept, subset(held, cfg.test_subset, "test", " held out")


def subset(x: torch.Tensor, n: int, split: str, where: str = "") -> torch.Tensor:
    """The first n examples of x (0: all); n beyond them uses all, and says so."""
    if n > len(x):
        examples = "training examples" if split == "train" else "test examples"
        print(
            f"avae: {split}_subset {n} is more than the {len(x)} {examples} there are{where}; "
            f"using all {len(x)} (as config.json and the model card record)",
            file=sys.stderr,
        )
    return x[:n] if n else x


def epoch_rows(
    cfg: TrainConfig, epoch: int, train_means, test_values, seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for member, seed in enumerate(cfg.seeds):
        row = {"epoch": epoch, "member": member, "seed": seed}
        row.update({f"train_{k}": round(float(v[member]), 6) for k, v in train_means.items()})
        row["valid_neg_elbo" if cfg.holdout else "test_neg_elbo"] = round(float(test_values[member]), 6)
        row["seconds"] = round(seconds, 3)
        rows.append(row)
    return rows

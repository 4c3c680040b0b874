"""Packs: several configurations trained as the members of one model.

One process trains the S members (one per seed) of a configuration as one member-batched model
(`avae.core.nets`); more members per model is where a GPU's speed is. A pack goes further: the
members of several configurations that differ only in their seeds, data set and latent and noise
dimensions (`PACKABLE`) train as one model, one graph. What makes each configuration's result its
own:

- Each member has its own data: its own data set (`MemberImages`: the distinct data sets one after
  another, each member reading its own), its own order and its own binarisation, from its own
  "data" stream, as in its unpacked run. Its own noise too: every stream is keyed by its seed.
- Each member's initial weights come from its seed alone; members never mix (the losses are per
  member and summed only to take one gradient), so a packed configuration trains as it would
  alone, to the rounding of the batched products.
- Padding: the pack's model has the largest latent dimension L and noise dimension N of its
  configurations; a member of dimensions l <= L, n <= N (`LatentModel.pad_members`) draws its
  own l or n normals per row from its own stream, as its unpacked run does, the padded
  coordinates exactly 0 (`MemberRandom.padded_normal`), and starts from its unpacked run's initial
  weights embedded with every padded entry 0 (`initial_weights`): the encoder's mu and log-variance
  rows of a padded latent coordinate (so mu = 0, sigma = 1, z = 0 and its KL term is exactly 0),
  the decoder's and critic's columns of it, the encoder's columns of a padded noise coordinate.
  Every padded weight then has an input or an output that is exactly 0, so its gradient is
  exactly 0 and Adam (no weight decay) leaves it 0; the padded coordinates add exactly 0 to every
  loss and gradient. AVB-AC's moments of a padded coordinate (all draws 0) are set to N(0, 1)
  there. Only the widths of the matrix products differ from the unpacked run, so a padded
  member matches it to their rounding, not bitwise.
- Each configuration keeps its own run directory: config.json (its own config hash), metrics.csv,
  its members' share of the checkpoint every epoch (`checkpoint_payload`, cut to its own latent
  and noise dimensions), diverged.json, the card.
  `train(cfg, out, resume=True)` continues any one of them alone, from exactly its state; a pack
  resumes from its configurations' checkpoints (embedded again, `resize_payload`, and joined,
  `merge_payloads`), which must be at one epoch.

A diverging member does not take its pack down: its configuration is recorded as diverged, as an
unpacked run would be (diverged.json, the checkpoint of the epoch before kept, nothing of the
diverging epoch written), and the pack is trained again without it from the others' checkpoints
of that epoch. Resume is exact, so the others end as they would have; the cost is at most one
epoch trained again. Masking the member out instead would take more than a mask on its losses:
Adam moves a weight whose gradient is zeroed (its moments decay, not vanish), so a masked member
would need freezing besides, and its non-finite values would stay in the graph for the rest of
the run.

Settings other than `PACKABLE` must be equal; `pack_groups` sorts configurations into packs that
can train together. Padding costs: every member computes at the pack's largest sizes.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from avae.core.graphs import use_device
from avae.core.models import build_model
from avae.errors import ConfigError, DivergenceError
from avae.io import file_lock
from avae.likelihood.scoring import EpochFigure
from avae.training.config import Runtime, TrainConfig, config_dict, flatten, refuse_unused
from avae.training.resume import cpu_threads_of, merge_payloads, own_dims, resize_payload, restore_state
from avae.training.runs import LOCK, load_run, prepare_run_dir
from avae.training.steps import MemberImages, TrainingState, new_state
from avae.training.train import (
    EpochCallback,
    RunSlot,
    examples,
    finish_run,
    owner,
    split_data,
    start_run,
    train_epochs,
    within,
)

# The settings in which a pack's configurations may differ (the dimensions by padding).
PACKABLE = ("seeds", "dataset", "latent_dim", "noise_dim")
# The settings in which the runs of an evaluation pack may differ (`avae.evaluation.packs`):
# their checkpoints are at their own sizes, and evaluation does not pad.
SAME_SIZES = ("seeds", "dataset")


@dataclass(frozen=True)
class PackEntry:
    """One configuration of a pack and its run directory."""

    cfg: TrainConfig
    out: Path


@dataclass(frozen=True)
class PackOutcome:
    """How one configuration of a pack ended: trained to its epochs, or `diverged` (its
    diverged.json says where; its last good checkpoint is kept)."""

    out: Path
    diverged: DivergenceError | None = None


def pack_key(cfg: TrainConfig, packable: Sequence[str] = PACKABLE) -> str:
    """What a pack's configurations share: every setting but `packable`, as sorted JSON."""
    settings = {k: v for k, v in flatten(config_dict(cfg)).items() if k not in packable}
    return json.dumps(settings, sort_keys=True)


def differing_settings(a: TrainConfig, b: TrainConfig, packable: Sequence[str] = PACKABLE) -> str:
    """The settings other than `packable` in which `a` and `b` differ, as "key a vs b, ..." ("" when
    they may share a pack)."""
    first, other = flatten(config_dict(a)), flatten(config_dict(b))
    keys = sorted(
        k for k in first.keys() | other.keys() if k not in packable and first.get(k) != other.get(k)
    )
    return ", ".join(f"{k} {first.get(k)!r} vs {other.get(k)!r}" for k in keys)


def pack_groups(cfgs: Sequence[TrainConfig]) -> list[list[int]]:
    """The indices of `cfgs` grouped into packs (configurations that may train together), in the
    order of their first configuration."""
    groups: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        groups.setdefault(pack_key(cfg), []).append(index)
    return list(groups.values())


def check_packable(entries: Sequence[PackEntry]) -> None:
    """Refuse a pack whose configurations differ in more than `PACKABLE`, or share a directory."""
    if not entries:
        raise ConfigError("a pack needs at least one configuration")
    for entry in entries:
        if not isinstance(entry, PackEntry) or not isinstance(entry.cfg, TrainConfig):
            raise ConfigError("a pack is a list of PackEntry(cfg: TrainConfig, out: Path)")
    outs = [Path(e.out).resolve() for e in entries]
    if len(set(outs)) != len(outs):
        raise ConfigError("two configurations of a pack train into one directory; give each its own")
    for entry in entries[1:]:
        details = differing_settings(entries[0].cfg, entry.cfg)
        if details:
            raise ConfigError(
                f"configurations of one pack may differ only in {', '.join(PACKABLE)} ({details}); "
                "train them in separate packs (avae.training.packs.pack_groups sorts them)"
            )


def padded_config(entries: Sequence[PackEntry]) -> TrainConfig:
    """The configuration of the pack's model: the first's, at the largest latent and noise
    dimensions of its configurations."""
    cfg = entries[0].cfg
    latent = max(e.cfg.model.latent_dim for e in entries)
    noise = max(e.cfg.model.noise_dim for e in entries)
    return replace(cfg, model=replace(cfg.model, latent_dim=latent, noise_dim=noise))


def member_dims(entries: Sequence[PackEntry]) -> list[dict[str, int]] | None:
    """Each member's latent and noise dimensions (`LatentModel.pad_members`), or None when every
    configuration has the pack's own (no padding)."""
    dims = [own_dims(e.cfg) for e in entries for _ in e.cfg.seeds]
    return None if all(d == dims[0] for d in dims) else dims


@torch.no_grad()
def initial_weights(state: TrainingState, runs: Sequence[RunSlot]) -> None:
    """Each configuration's members start from its unpacked run's initial weights (built at its own
    sizes from its seeds), embedded in the padded model with every padded entry 0."""
    weights = dict(state.model.named_parameters())
    for run in runs:
        own = build_model(run.cfg.model, run.cfg.seeds)
        tensors = {f"model.{name}": value for name, value in own.state_dict().items()}
        for key, value in resize_payload(state, tensors, own_dims(run.cfg), pad=True).items():
            weights[key[len("model.") :]][run.members].copy_(value)


def member_slices(entries: Sequence[PackEntry]) -> list[slice]:
    """Each configuration's rows of the pack's members: its seeds, one after another."""
    slices, start = [], 0
    for entry in entries:
        slices.append(slice(start, start + len(entry.cfg.seeds)))
        start += len(entry.cfg.seeds)
    return slices


def train_pack(
    entries: Sequence[PackEntry],
    *,
    resume: bool = False,
    runtime: Runtime | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[PackOutcome]:
    """Train the configurations of `entries` as one model, each into its own run directory (as
    `train` would, with the same files), and return how each ended, in order. `on_epoch(epoch, rows,
    model)`, if given, is called after each epoch, as `train` calls it (rows: those of the first
    configuration still in the pack; model: the whole pack's).

    A configuration whose member diverges is recorded as diverged (diverged.json, its checkpoint of
    the epoch before kept) and the pack goes on without it from the others' last checkpoints."""
    entries = [PackEntry(e.cfg, Path(e.out)) if isinstance(e, PackEntry) else e for e in entries]
    check_packable(entries)
    if not isinstance(runtime, (Runtime, type(None))):
        raise ConfigError(f"runtime must be an avae.Runtime, got {type(runtime).__name__}")
    if not resume:
        for entry in entries:
            refuse_unused(entry.cfg)
    runtime = runtime or Runtime()
    diverged: dict[Path, DivergenceError] = {}
    live = list(entries)
    while live:
        try:
            train_pack_once(live, resume, runtime, on_epoch)
            break
        except DivergenceError as error:
            slot = owner(slots_of(live), error.member)
            lost = next(e for e in live if e.out == slot.out)
            diverged[lost.out] = within(slot, error)  # numbered as its diverged.json numbers it
            live.remove(lost)
            print(
                f"avae: {lost.out} diverged ({diverged[lost.out]}); training the pack's other "
                f"{len(live)} configuration(s) on from their last checkpoints",
                file=sys.stderr,
            )
            resume = True  # the others continue from their checkpoints of the epoch before
    return [PackOutcome(e.out, diverged.get(e.out)) for e in entries]


def slots_of(entries: Sequence[PackEntry]) -> list[RunSlot]:
    """Each configuration's slot in the pack's state (`avae.training.train.RunSlot`)."""
    slices = member_slices(entries)
    return [RunSlot(e.cfg, e.out, members) for e, members in zip(entries, slices, strict=True)]


@dataclass
class PackData:
    """A pack's data: every member's training images (`MemberImages`), the distinct test sets of
    the per-epoch figure, and which of them each member is scored on."""

    train: MemberImages
    tests: list[torch.Tensor]
    test_of: torch.Tensor  # [S], the index into `tests` of each member's test set


def pack_data(entries: Sequence[PackEntry], runtime: Runtime, device: torch.device) -> PackData:
    """Load each distinct data set once and point each member at its own; refuse data sets of
    different sizes (the members of one model take their steps together)."""
    datasets: list[str] = []
    loaded: list[tuple[torch.Tensor, torch.Tensor]] = []
    for entry in entries:
        if entry.cfg.dataset not in datasets:
            datasets.append(entry.cfg.dataset)
            loaded.append(split_data(entry.cfg, runtime))
    size = len(loaded[0][0])
    if any(len(train_x) != size for train_x, _ in loaded):
        sizes = ", ".join(f"{d}: {len(x)}" for d, (x, _) in zip(datasets, loaded, strict=True))
        raise ConfigError(f"a pack's data sets must have one number of training images ({sizes})")
    batch_size = entries[0].cfg.batch_size
    if size < batch_size:
        raise ConfigError(f"batch_size {batch_size} exceeds the {size} training images")
    which = [datasets.index(e.cfg.dataset) for e in entries for _ in e.cfg.seeds]
    test_of = torch.tensor(which, dtype=torch.long)
    images = torch.cat([train_x for train_x, _ in loaded]).to(device)
    starts = (test_of * size).to(device)
    return PackData(MemberImages(images, starts, size), [t.to(device) for _, t in loaded], test_of)


class PackFigure:
    """The per-epoch figure of every member of a pack on its own test set, [S]: one pass of every
    member over each distinct test set (`EpochFigure`: the "eval" stream restarts at every pass,
    so each member's figure on its own set is that of its unpacked run), each member's taken."""

    def __init__(self, state: TrainingState, data: PackData):
        self.passes = [EpochFigure(state.model, x, state.seeds, graphed=state.graphs) for x in data.tests]
        self.test_of = data.test_of

    def __call__(self) -> torch.Tensor:
        if len(self.passes) == 1:
            return self.passes[0]()
        figures = torch.stack([figure() for figure in self.passes])  # [tests, S]
        return figures.gather(0, self.test_of[None]).squeeze(0)


def train_pack_once(
    entries: list[PackEntry], resume: bool, runtime: Runtime, on_epoch: EpochCallback | None = None
) -> None:
    """One attempt at a pack: every run directory locked, the pack's state restored from its
    configurations' checkpoints (or new), trained to the configurations' epochs."""
    device = use_device(runtime.device)
    data = pack_data(entries, runtime, device)
    with contextlib.ExitStack() as stack:
        for entry in entries:
            if not stack.enter_context(file_lock(entry.out / LOCK, blocking=False)):
                raise ConfigError(
                    f"{entry.out} is being trained by another process; wait for it or leave it "
                    "out of the pack"
                )
        runs = slots_of(entries)
        for run in runs:
            run.checkpoint = prepare_run_dir(run.cfg, run.out, resume)
        epochs = {0 if run.checkpoint is None else int(run.checkpoint[1]["epoch"]) for run in runs}
        if len(epochs) > 1:
            raise ConfigError(
                f"a pack's configurations must resume from one epoch, these are at {sorted(epochs)}; "
                "train them apart, or bring them to one epoch first"
            )
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        cfg, dims = padded_config(entries), member_dims(entries)
        seeds = [s for e in entries for s in e.cfg.seeds]
        state = new_state(cfg, device, runtime.compile, seeds=seeds, member_dims=dims)
        saved = [run.checkpoint for run in runs if run.checkpoint is not None]
        if saved:  # each embedded at the pack's sizes (padding: with its padded entries 0)
            padded = [
                (resize_payload(state, r.checkpoint[0], own_dims(r.cfg), pad=True), r.checkpoint[1])
                for r in runs
            ]
            restore_state(state, cfg, *merge_payloads(padded))
        elif dims is not None:
            initial_weights(state, runs)
        for run in runs:
            tests = len(data.tests[int(data.test_of[run.members.start])])
            start_run(run, state.epoch, runtime, examples(run.cfg, data.train.size, tests))
        figure = PackFigure(state, data)
        stack.enter_context(cpu_threads_of(saved[0] if saved else None, device))
        stack.enter_context(state.iteration)
        for test_pass in figure.passes:
            stack.enter_context(test_pass.unit)
        label = f"pack of {len(entries)} {cfg.model.name} S={len(state.seeds)}"
        train_epochs(state, runs, data.train, figure, runtime, label, on_epoch)
        for entry in entries:  # each from its own checkpoint, as an unpacked run would be
            _, model, _ = load_run(entry.out, str(device))
            finish_run(model, entry.cfg.seeds, entry.out)

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
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from avae.core.graphs import GraphedCall, StaticNoise, count_draws, graphs_wanted, use_device
from avae.core.models import LatentModel, Phase, StepSettings, build_model
from avae.core.nets import MemberRandom
from avae.data import datasets as data
from avae.errors import ConfigError, DivergenceError
from avae.io import file_lock, write_json
from avae.likelihood.scoring import EpochFigure
from avae.training.card import export_weights, write_card
from avae.training.checkpoint import save_checkpoint
from avae.training.config import Runtime, TrainConfig, config_dict, config_hash, refuse_unused, versions
from avae.training.images import save_sample_grids
from avae.training.runs import (
    CHECKPOINT,
    CONFIG,
    LOCK,
    METRICS,
    clear_divergence,
    load_weights,
    prepare_run_dir,
    read_metrics,
    record_divergence,
    record_resume,
    run_record,
    write_metrics,
)

NOISE_POOL = 1 << 18  # standard normals drawn per member at once by the training noise stream


@dataclass
class TrainingState:
    """What a checkpoint restores: weights, optimiser moments and every member's RNG streams."""

    model: LatentModel
    phases: list[Phase]
    optimizers: list[torch.optim.Optimizer]
    data_rng: MemberRandom
    noise_rng: MemberRandom
    epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    # One iteration's static inputs and the iteration itself (set by `new_state`).
    batch: torch.Tensor | None = None  # [S, B, D]
    step_noise: StaticNoise | None = None  # every draw of one iteration, [S, N]
    iteration: GraphedCall | None = None  # () -> the logged terms [terms, S]
    term_names: list[str] = field(default_factory=list)
    graphs: bool = False  # the iteration is a CUDA graph (Adam capturable)


def new_state(
    cfg: TrainConfig, device: torch.device, compile: bool = False, graphs: bool | None = None
) -> TrainingState:
    """Model, optimisers, RNG streams and the replayable iteration; `graphs` None: CUDA graphs on
    CUDA unless turned off (`avae.core.graphs.graphs_wanted`)."""
    graphs = graphs_wanted(device, compile) if graphs is None else graphs
    model = build_model(cfg.model, cfg.seeds).to(device)
    if compile:
        for module in model.modules():
            if isinstance(module, torch.nn.Sequential):
                module.compile(dynamic=False)  # in place: parameter names stay as they are
    phases = model.phases(step_settings(cfg))
    # The fused (single-kernel) Adam: measured 4.6x faster than foreach on CPU for S=15 members.
    # capturable: its step counter stays on the device, so that a CUDA graph can replay the step.
    optimizers = [
        torch.optim.Adam(
            p.params,
            lr=p.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=True,
            capturable=graphs,
        )
        for p in phases
    ]
    state = TrainingState(
        model,
        phases,
        optimizers,
        MemberRandom(cfg.seeds, "data", device),
        MemberRandom(cfg.seeds, "noise", device, pool=NOISE_POOL),
        graphs=graphs,
    )
    members = len(cfg.seeds)
    state.batch = torch.zeros(members, cfg.batch_size, cfg.model.data_dim, device=device)
    counts = count_draws(lambda noise: phase_losses(state, noise), members, device)
    state.step_noise = StaticNoise(members, counts, device)
    state.iteration = GraphedCall(lambda: iteration(state, cfg), enabled=graphs)
    return state


def step_settings(cfg: TrainConfig) -> StepSettings:
    """The settings the model's phases are made of: learning rates and discriminator steps."""
    return StepSettings(lr=cfg.lr, disc_lr=cfg.disc_lr, adv_lr=cfg.adv_lr, disc_steps=cfg.disc_steps)


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast of the matrix products when cfg.precision == "bf16", else nothing. No cast
    cache on CUDA: cached casts would outlive a CUDA-graph capture (PyTorch's graph notes)."""
    enabled = cfg.precision == "bf16"
    return torch.autocast(device.type, torch.bfloat16, enabled=enabled, cache_enabled=device.type != "cuda")


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    runtime: Runtime | None = None,
    on_epoch=None,
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
    if checkpoint is not None:
        restore_state(state, cfg, *checkpoint)
        state.rows = [r for r in read_metrics(out / METRICS) if r["epoch"] <= state.epoch]
        if state.epoch == cfg.epochs:
            print(f"avae: {out} already has {cfg.epochs} epochs; nothing to train", file=sys.stderr)
    else:
        record = run_record(cfg, runtime)
        figure = "valid" if cfg.holdout else "test"
        record["data"]["examples"] = {"train": len(train_x), figure: len(test_x)}  # what the card states
        write_json(out / CONFIG, record)
    steps = len(train_x) // cfg.batch_size
    test_pass = EpochFigure(state.model, test_x, cfg.seeds, graphed=state.graphs)  # neg_elbo_per_member
    label = f"{cfg.model.name} {cfg.dataset} S={len(cfg.seeds)}"
    with (
        cpu_threads_of(checkpoint, device),
        state.iteration,  # (each unit's graph is released when the block ends: GraphedCall.release)
        test_pass.unit,
        tqdm(
            total=cfg.epochs * steps,
            initial=state.epoch * steps,
            desc=label,
            unit="step",
            disable=None if runtime.progress else True,  # None: off unless stderr is a terminal
            dynamic_ncols=True,
        ) as bar,
    ):
        while state.epoch < cfg.epochs:
            state.epoch += 1
            started = time.perf_counter()
            try:
                train_means = run_epoch(state, cfg, train_x, runtime, bar)
            except DivergenceError as error:
                record_divergence(out, cfg, error)
                raise
            test_values = test_pass()
            state.rows += epoch_rows(
                cfg, state.epoch, train_means, test_values, time.perf_counter() - started
            )
            write_metrics(out / METRICS, state.rows)
            save_checkpoint(out / CHECKPOINT, *checkpoint_payload(state, cfg))
            clear_divergence(out)  # this epoch got past any earlier divergence
            if checkpoint is not None and state.epoch == checkpoint[1]["epoch"] + 1:
                record_resume(out, cfg, state.epoch - 1)  # once the resumed run has written an epoch
            bar.set_postfix(test=f"{float(test_values.mean()):.2f}")
            if runtime.progress and bar.disable:  # no terminal: one line per epoch instead of a bar
                print(
                    f"{label}: epoch {state.epoch}/{cfg.epochs}, test figure "
                    f"{float(test_values.mean()):.2f}, {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            if on_epoch is not None:  # e.g. TensorBoard logging: on_epoch(epoch, this epoch's rows, model)
                on_epoch(state.epoch, state.rows[-len(cfg.seeds) :], state.model)
    save_sample_grids(state.model, cfg.seeds, out)
    export_weights(out)
    write_card(out)
    return out


@contextlib.contextmanager
def cpu_threads_of(checkpoint, device: torch.device):
    """On CPU, resume with the torch thread count the checkpoint was written with, whatever
    `Runtime.threads` (or `reproduce --jobs`) asks for: exactness wins over the requested count.

    CPU kernels (matrix products in particular) may split their reductions by thread, so the
    same run with 1 and 3 threads differs in the last bits. Every checkpoint records the count,
    and a resumed run uses it again, so that resuming gives bitwise the weights of an
    uninterrupted run even where another OMP_NUM_THREADS or CPU set would choose otherwise.
    """
    wanted = checkpoint[1].get("cpu_threads") if checkpoint is not None else None
    previous = torch.get_num_threads()
    if device.type != "cpu" or not isinstance(wanted, int) or wanted < 1 or wanted == previous:
        yield
        return
    print(
        f"avae: resuming with {wanted} CPU threads as the checkpoint was written (not {previous}) "
        "so that the result is the same as an uninterrupted run",
        file=sys.stderr,
    )
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


def run_epoch(
    state: TrainingState, cfg: TrainConfig, train_x: torch.Tensor, runtime: Runtime, bar=None
) -> dict[str, torch.Tensor]:
    """One pass over the training set; returns each logged term's epoch mean, [S] per term. `bar`
    (a tqdm progress bar, or None for none) advances by the steps taken.

    No host synchronisation per step: batches are gathered by index from the device-resident
    `train_x` straight into the static batch, noise comes from a per-member pool (cleared here, so
    that a checkpoint at the end of an epoch resumes exactly) into the static noise, the iteration
    is one graph replay on CUDA, and finiteness is checked every `runtime.check_every` steps.
    """
    steps = len(train_x) // cfg.batch_size
    batches = epoch_batches(state.data_rng.permutations(len(train_x)), steps, cfg.batch_size)
    state.noise_rng.clear_pool()
    totals: torch.Tensor | None = None
    pending: list[torch.Tensor] = []
    for step in range(steps):
        stacked = train_step(state, cfg, train_x, batches[step])
        pending.append(stacked)
        totals = stacked if totals is None else totals + stacked
        if len(pending) == runtime.check_every or step == steps - 1:
            check_finite(pending, state.term_names, state.epoch, step, cfg.seeds)
            if bar is not None:
                bar.update(len(pending))
            pending.clear()
    return {name: total / steps for name, total in zip(state.term_names, totals, strict=True)}


def train_step(state: TrainingState, cfg: TrainConfig, train_x: torch.Tensor, indices: torch.Tensor):
    """One step, no host synchronisation: the images of `indices` into the static batch, this step's
    noise into the static noise, then the iteration (every phase: forward, backward, Adam; one graph
    replay on CUDA). Returns the logged terms [terms, S], a copy the next step does not overwrite."""
    load_batch(state, cfg, train_x, indices)
    state.noise_rng.fill(state.step_noise.buffer, state.step_noise.counts)
    return state.iteration().clone()


def epoch_batches(order: torch.Tensor, steps: int, batch_size: int) -> torch.Tensor:
    """Each member's permutation [S, n] as the flat indices of every step's batch: [steps, S * B]
    (member-major, so that gathering step t gives the batch [S, B, D] row by row)."""
    members = order.shape[0]
    per_step = order[:, : steps * batch_size].reshape(members, steps, batch_size).transpose(0, 1)
    return per_step.reshape(steps, members * batch_size)


def load_batch(state: TrainingState, cfg: TrainConfig, train_x: torch.Tensor, indices: torch.Tensor) -> None:
    """The images of `indices` [S * B] into the static batch [S, B, D] (binarised per member with
    its data stream when cfg.pixels is "binarized")."""
    flat = state.batch.view(-1, state.batch.shape[-1])
    if cfg.pixels != "binarized":
        torch.index_select(train_x, 0, indices, out=flat)
        return
    state.batch.copy_(data.binarize(train_x[indices].view_as(state.batch), state.data_rng.generators))


def iteration(state: TrainingState, cfg: TrainConfig) -> torch.Tensor:
    """One training iteration on the static inputs: the phases top to bottom, each `phase.repeats`
    times, one Adam step each time. Returns the logged terms stacked, [terms, S]."""
    state.step_noise.rewind()
    terms: dict[str, torch.Tensor] = {}
    for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
        for _ in range(phase.repeats):
            with autocast(cfg, state.batch.device):
                terms.update(take_step(phase, optimizer, state.batch, state.step_noise))
    state.term_names = list(terms)
    return torch.stack(list(terms.values())).float()


def phase_losses(state: TrainingState, noise) -> None:
    """Every loss of one iteration, without steps (`new_state` counts the noise draws with it)."""
    for phase in state.phases:
        for _ in range(phase.repeats):
            phase.loss(state.batch, noise)


def take_step(
    phase: Phase, optimizer: torch.optim.Optimizer, x: torch.Tensor, rng: MemberRandom | StaticNoise
) -> dict[str, torch.Tensor]:
    """One Adam step on `phase.params` only; returns the phase's loss and terms, [S] each."""
    loss, terms = phase.loss(x, rng)
    grads = torch.autograd.grad(loss.sum(), phase.params)  # members' losses are independent
    for param, grad in zip(phase.params, grads, strict=True):
        param.grad = grad
    with torch.autocast(x.device.type, enabled=False):
        optimizer.step()
    return {f"loss_{phase.name}": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


def check_finite(pending: list[torch.Tensor], names: list[str], epoch: int, last_step: int, seeds) -> None:
    """Raise DivergenceError naming the first non-finite term, its step and member."""
    flags = torch.isfinite(torch.stack(pending))  # [steps, terms, S]
    if bool(flags.all()):
        return
    k, term, member = (~flags).nonzero()[0].tolist()
    step = last_step - len(pending) + 1 + k
    raise DivergenceError(
        f"non-finite {names[term]} at epoch {epoch}, step {step + 1}, member {member} "
        f"(seed {seeds[member]}); the checkpoint of epoch {epoch - 1} is kept (if any). "
        "Continue it with --resume and a lower --lr (and --disc-lr / --adv-lr)",
        epoch=epoch,
        step=step + 1,
        member=member,
        seed=int(seeds[member]),
        term=names[term],
    )


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


def checkpoint_payload(
    state: TrainingState, cfg: TrainConfig
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    groups = {}
    for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
        saved = optimizer.state_dict()
        groups[phase.name] = saved["param_groups"]
        for index, slots in saved["state"].items():
            for slot, value in slots.items():
                tensors[f"optim.{phase.name}.{index}.{slot}"] = (
                    value.reshape(-1) if value.dim() == 0 else value
                )
    for stream in ("data", "noise"):
        for member, rng_state in enumerate(getattr(state, f"{stream}_rng").get_state()):
            tensors[f"rng.{stream}.{member}"] = rng_state
    meta = {
        "epoch": state.epoch,
        "config": config_dict(cfg),
        "config_hash": config_hash(cfg),
        "optimizer_groups": groups,
        "versions": versions(),
        "data_md5": data.checksums(cfg.dataset, cfg.test_data),
        "cpu_threads": torch.get_num_threads(),
    }
    return tensors, meta


def restore_state(
    state: TrainingState, cfg: TrainConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    load_weights(state.model, tensors)
    for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
        slots: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"optim.{phase.name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, slot = key[len(prefix) :].split(".")
                slots.setdefault(int(index), {})[slot] = value.reshape(()) if slot == "step" else value
        optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer_groups"][phase.name]})
        for group in optimizer.param_groups:
            group["lr"] = phase.lr  # from this run's settings: a resumed run may lower the learning rate
            group["capturable"] = state.graphs  # as this run needs it, whatever wrote the checkpoint
    for stream in ("data", "noise"):
        rng = getattr(state, f"{stream}_rng")
        rng.set_state([tensors[f"rng.{stream}.{m}"] for m in range(len(cfg.seeds))])
    state.epoch = int(meta["epoch"])

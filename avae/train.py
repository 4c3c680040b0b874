"""Training: the configuration as a plain object, the loop, checkpoints and resume.

One process trains the S members of one configuration at once (one per seed, see `avae.nets`).
Each iteration runs the model's phases top to bottom; for AVAE that is Algorithm 1:

1. an ELBO step on the decoder theta and encoder phi (eq. 9),
2. a discriminator step on D (eq. 13), `disc_steps` times,
3. an adversarial step on the encoder phi against D (eq. 14).

Each phase has its own Adam optimiser. Gradients are taken only with respect to the phase's own
parameters, so, e.g., the discriminator step cannot move the decoder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy
import torch
from tqdm.auto import tqdm

import avae
from avae import data
from avae.checkpoint import load_checkpoint, save_checkpoint
from avae.errors import CheckpointError, ConfigError, DivergenceError
from avae.evaluate import neg_elbo_per_member
from avae.io import atomic_write_text, remove_stale_temporaries, write_json
from avae.models import MODELS, LatentModel, ModelConfig, Phase, build_model, default_noise_dim
from avae.nets import MemberRandom
from avae.report import save_sample_grids

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.csv"
CONFIG = "config.json"
# Settings that may change when a run is resumed (e.g. a lower learning rate after divergence).
RESUMABLE_CHANGES = ("epochs", "lr", "disc_lr", "adv_lr")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Defaults follow the paper, or say why where it is silent:

    - batch_size 100 and Adam lr 1e-3 (beta 0.9, 0.999): Adam's published defaults; the paper
      names Adam but no rate or batch size.
    - disc_lr = adv_lr = lr, disc_steps 1: one discriminator step per ELBO step, as Algorithm 1
      lists one of each; AVB overrides the optimiser with its reference code's settings.
    - pixels "continuous": the paper scales pixels to [0, 1] and does not binarise.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: str = "mnist"
    pixels: str = "continuous"
    batch_size: int = 100
    epochs: int = 10
    lr: float = 1e-3
    disc_lr: float = 1e-3
    adv_lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    disc_steps: int = 1
    seeds: tuple[int, ...] = (0,)
    train_subset: int = 0  # use only the first N training images (0: all); for tests and smoke runs
    test_subset: int = 0  # evaluate on the first N test images (0: all 10,000)

    def __post_init__(self) -> None:
        if self.dataset not in data.DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(data.DATASETS)}")
        if self.pixels not in data.PIXEL_MODES:
            raise ConfigError(
                f"unknown pixel mode {self.pixels!r}; choose one of {', '.join(data.PIXEL_MODES)}"
            )
        for key in ("batch_size", "epochs", "disc_steps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")
        for key in ("lr", "disc_lr", "adv_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.train_subset < 0 or self.test_subset < 0:
            raise ConfigError("train_subset and test_subset must be >= 0 (0 means all)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds must be distinct non-negative integers, got {list(self.seeds)}")


MODEL_KEYS = {f.name for f in fields(ModelConfig)} - {"name"}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"model"}


def make_config(overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flat settings, e.g. {"model": "avae", "latent_dim": 15, "epochs": 5}.

    Unset settings take the model's defaults (its noise dimension and optimiser settings) and then
    the general defaults. A nested dict as written to config.json is accepted too.
    """
    flat = flatten(overrides)
    unknown = sorted(set(flat) - MODEL_KEYS - TRAIN_KEYS - {"model"})
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see `avae train --help`")
    name = flat.get("model", "vae")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    model_args = {"name": name, "noise_dim": default_noise_dim(name)}
    model_args.update({k: v for k, v in flat.items() if k in MODEL_KEYS})
    train_args = {**MODELS[name].train_defaults}
    train_args.update({k: v for k, v in flat.items() if k in TRAIN_KEYS})
    try:
        model_cfg = ModelConfig(**coerce(ModelConfig, model_args))
        return TrainConfig(model=model_cfg, **coerce(TrainConfig, train_args))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting: {exc}") from None


def flatten(settings: dict[str, Any]) -> dict[str, Any]:
    flat = dict(settings)
    if isinstance(flat.get("model"), dict):
        nested = flat.pop("model")
        flat.update({k: v for k, v in nested.items() if k != "name"}, model=nested.get("name", "vae"))
    return flat


def coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Turn lists into tuples and check scalar types, so a config file fails early and clearly."""
    types = {f.name: f.type for f in fields(cls)}
    out = {}
    for key, value in values.items():
        kind = str(types[key])
        if "tuple" in kind:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
                raise ConfigError(f"{key} must be a list of integers, got {value!r}")
            value = tuple(value)
        elif kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number, got {value!r}")
            value = float(value)
        elif kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        out[key] = value
    return out


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    return {
        "avae": avae.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


@dataclass
class Runtime:
    """How to run, as opposed to what to run: none of this changes the result's definition."""

    device: str = "cpu"
    data_dir: str | None = None
    progress: bool = True
    check_every: int = 50  # steps between checks for non-finite losses (one host sync each)
    # "fp32" (default) or "bf16": matrix products under bf16 autocast (weights, Adam and losses stay
    # float32). It changes the numerics (see benchmarks/BENCH.md), so it is recorded in config.json
    # and in every checkpoint, and a run is resumed only with the precision it was trained with.
    precision: str = "fp32"
    compile: bool = False  # torch.compile each network (measured: see benchmarks/BENCH.md)


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


NOISE_POOL = 1 << 18  # standard normals drawn per member at once by the training noise stream
PRECISIONS = ("fp32", "bf16")


def new_state(cfg: TrainConfig, device: torch.device, compile: bool = False) -> TrainingState:
    model = build_model(cfg.model, cfg.seeds).to(device)
    if compile:
        for module in model.modules():
            if isinstance(module, torch.nn.Sequential):
                module.compile(dynamic=False)  # in place: parameter names stay as they are
    phases = model.phases()
    # The fused (single-kernel) Adam: measured 4.6x faster than foreach on CPU for S=15 members.
    optimizers = [
        torch.optim.Adam(
            p.params, lr=getattr(cfg, p.lr_key) * p.lr_scale, betas=(cfg.beta1, cfg.beta2), fused=True
        )
        for p in phases
    ]
    return TrainingState(
        model,
        phases,
        optimizers,
        MemberRandom(cfg.seeds, "data", device),
        MemberRandom(cfg.seeds, "noise", device, pool=NOISE_POOL),
    )


def autocast(runtime: Runtime, device: torch.device):
    """bf16 autocast of the matrix products when runtime.precision == "bf16", else nothing."""
    if runtime.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {runtime.precision!r}; choose one of {', '.join(PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=runtime.precision == "bf16")


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
    after each epoch's checkpoint (for loggers; it must not change the model).
    """
    runtime = runtime or Runtime()
    out = Path(out)
    device = torch.device(runtime.device)
    checkpoint = prepare_run_dir(cfg, out, resume)
    train_x = subset(data.load_pixels(cfg.dataset, "train", cfg.pixels, runtime.data_dir), cfg.train_subset)
    test_x = subset(data.load_pixels(cfg.dataset, "test", cfg.pixels, runtime.data_dir), cfg.test_subset)
    train_x, test_x = train_x.to(device), test_x.to(device)
    if len(train_x) < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(train_x)} training images")
    state = new_state(cfg, device, runtime.compile)
    if checkpoint is not None:
        saved_precision = checkpoint[1].get("precision", "fp32")
        if saved_precision != runtime.precision:
            raise ConfigError(
                f"cannot resume {out / CHECKPOINT}: it was trained with --precision {saved_precision}, "
                f"not {runtime.precision}; resume with --precision {saved_precision}"
            )
        restore_state(state, cfg, *checkpoint)
        state.rows = [r for r in read_metrics(out / METRICS) if r["epoch"] <= state.epoch]
    else:
        write_json(out / CONFIG, run_record(cfg, runtime))
    steps = len(train_x) // cfg.batch_size
    label = f"{cfg.model.name} {cfg.dataset} S={len(cfg.seeds)}"
    with (
        cpu_threads_of(checkpoint, device),
        tqdm(
            total=cfg.epochs * steps,
            initial=state.epoch * steps,
            desc=label,
            unit="step",
            disable=not runtime.progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        while state.epoch < cfg.epochs:
            state.epoch += 1
            started = time.perf_counter()
            train_means = run_epoch(state, cfg, train_x, runtime, bar)
            test_values = neg_elbo_per_member(state.model, test_x, cfg.seeds)
            state.rows += epoch_rows(
                cfg, state.epoch, train_means, test_values, time.perf_counter() - started
            )
            write_metrics(out / METRICS, state.rows)
            tensors, meta = checkpoint_payload(state, cfg)
            if runtime.precision != "fp32":  # absent means fp32 (checkpoints of earlier versions)
                meta["precision"] = runtime.precision
            save_checkpoint(out / CHECKPOINT, tensors, meta)
            bar.set_postfix(test=f"{float(test_values.mean()):.2f}")
            if on_epoch is not None:  # e.g. TensorBoard logging: on_epoch(epoch, this epoch's rows, model)
                on_epoch(state.epoch, state.rows[-len(cfg.seeds) :], state.model)
    save_sample_grids(state.model, cfg.seeds, out)
    return out


@contextlib.contextmanager
def cpu_threads_of(checkpoint, device: torch.device):
    """On CPU, resume with the torch thread count the checkpoint was written with.

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


def subset(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[:n] if n else x


def run_epoch(
    state: TrainingState, cfg: TrainConfig, train_x: torch.Tensor, runtime: Runtime, bar
) -> dict[str, torch.Tensor]:
    """One pass over the training set; returns each logged term's epoch mean, [S] per term.

    No host synchronisation per step: batches are gathered by index from the device-resident
    `train_x`, noise comes from a per-member pool (cleared here, so that a checkpoint at the end
    of an epoch resumes exactly), and finiteness is checked every `runtime.check_every` steps.
    """
    steps = len(train_x) // cfg.batch_size
    order = state.data_rng.permutations(len(train_x))
    state.noise_rng.clear_pool()
    device = train_x.device
    repeats = [getattr(cfg, phase.repeats_key) if phase.repeats_key else 1 for phase in state.phases]
    totals: torch.Tensor | None = None
    names: list[str] = []
    pending: list[torch.Tensor] = []
    for step in range(steps):
        x = train_x[order[:, step * cfg.batch_size : (step + 1) * cfg.batch_size]]  # [S, B, D]
        if cfg.pixels == "binarized":
            x = data.binarize(x, state.data_rng.generators)
        terms: dict[str, torch.Tensor] = {}
        for phase, optimizer, count in zip(state.phases, state.optimizers, repeats, strict=True):
            for _ in range(count):
                with autocast(runtime, device):
                    terms.update(take_step(phase, optimizer, x, state.noise_rng))
        stacked = torch.stack(list(terms.values())).float()  # [terms, S]
        names = list(terms)
        pending.append(stacked)
        totals = stacked if totals is None else totals + stacked
        if len(pending) == runtime.check_every or step == steps - 1:
            check_finite(pending, names, state.epoch, step, cfg.seeds)
            bar.update(len(pending))
            pending.clear()
    return {name: total / steps for name, total in zip(names, totals, strict=True)}


def take_step(
    phase: Phase, optimizer: torch.optim.Optimizer, x: torch.Tensor, rng: MemberRandom
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
        "Continue it with --resume and a lower --lr (and --disc-lr / --adv-lr)"
    )


def epoch_rows(
    cfg: TrainConfig, epoch: int, train_means, test_values, seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for member, seed in enumerate(cfg.seeds):
        row = {"epoch": epoch, "member": member, "seed": seed}
        row.update({f"train_{k}": round(float(v[member]), 6) for k, v in train_means.items()})
        row["test_neg_elbo"] = round(float(test_values[member]), 6)
        row["seconds"] = round(seconds, 3)
        rows.append(row)
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def num(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run_record(cfg: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    """What config.json holds: enough to repeat the run exactly."""
    return {
        "config": config_dict(cfg),
        "config_hash": config_hash(cfg),
        "versions": versions(),
        "data": {"dataset": cfg.dataset, "md5": data.checksums(cfg.dataset)},
        "command": sys.argv,
        "device": runtime.device,
        "precision": runtime.precision,
    }


def prepare_run_dir(cfg: TrainConfig, out: Path, resume: bool):
    """Refuse to overwrite a finished or running run; return its checkpoint when resuming."""
    path = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose another --out")
    if not path.exists():
        if (out / METRICS).exists() and not resume:
            raise ConfigError(f"{out} already holds a run; pass --resume or choose another --out")
        if resume and out.is_dir():
            remove_stale_temporaries(out, (CHECKPOINT, METRICS, CONFIG))
        return None
    if not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    tensors, meta = load_checkpoint(path)
    check_resumable(cfg, meta, path)
    remove_stale_temporaries(out, (CHECKPOINT, METRICS, CONFIG))  # left by a writer killed mid-write
    return tensors, meta


def check_resumable(cfg: TrainConfig, meta: dict[str, Any], path: Path) -> None:
    saved, wanted = flatten(meta["config"]), flatten(config_dict(cfg))
    differing = [
        k
        for k in sorted(set(saved) | set(wanted))
        if k not in RESUMABLE_CHANGES and saved.get(k) != wanted.get(k)
    ]
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} there vs {wanted.get(k)!r} here" for k in differing)
        raise ConfigError(f"cannot resume {path}: it was trained with another configuration ({details})")


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
        "data_md5": data.checksums(cfg.dataset),
        "cpu_threads": torch.get_num_threads(),
    }
    return tensors, meta


def restore_state(
    state: TrainingState, cfg: TrainConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    load_weights(state.model, tensors, "resume")
    for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
        slots: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"optim.{phase.name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, slot = key[len(prefix) :].split(".")
                slots.setdefault(int(index), {})[slot] = value.reshape(()) if slot == "step" else value
        optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer_groups"][phase.name]})
        for group in optimizer.param_groups:
            group["lr"] = (
                getattr(cfg, phase.lr_key) * phase.lr_scale
            )  # a resumed run may lower the learning rate
    for stream in ("data", "noise"):
        rng = getattr(state, f"{stream}_rng")
        rng.set_state([tensors[f"rng.{stream}.{m}"] for m in range(len(cfg.seeds))])
    state.epoch = int(meta["epoch"])


def load_weights(model: LatentModel, tensors: dict[str, torch.Tensor], what: str) -> None:
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint weights do not match the configuration ({first})") from None


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[TrainConfig, LatentModel, dict[str, Any]]:
    """The configuration, trained model and checkpoint metadata of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory; give the --out of `avae train`")
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    cfg = make_config(meta["config"])
    model = build_model(cfg.model, cfg.seeds)
    load_weights(model, tensors, "evaluate")
    return cfg, model.to(device), meta

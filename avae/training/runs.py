"""A run directory and its files, one home for their names and formats.

config.json              what the run is (configuration, versions, data checksums, command)
metrics.csv              one row per epoch and member
checkpoint.safetensors   weights, optimiser moments, RNG streams (`avae.training.checkpoint`)
eval.json                figures of `avae evaluate` (`avae.evaluation.evaluate`), each a `MetricEntry`
analysis.json            analyses beyond the paper (`avae.evaluation.analysis`)
diverged.json            where training last diverged, until an epoch past it is written
samples_seed*.png        8x8 sample grids, recon_seed*.png reconstructions
.lock                    held by the one process that trains into the directory
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from avae.core.models import LatentModel, build_model
from avae.data import datasets as data
from avae.errors import CheckpointError, ConfigError, DivergenceError
from avae.io import read_csv, read_json, remove_stale_temporaries, write_csv, write_json
from avae.training.checkpoint import checkpoint_meta, load_checkpoint
from avae.training.config import (
    RESUMABLE_CHANGES,
    Runtime,
    TrainConfig,
    config_dict,
    config_hash,
    flatten,
    make_config,
    refuse_unused,
    versions,
)

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.csv"
CONFIG = "config.json"
EVAL = "eval.json"
ANALYSIS = "analysis.json"
DIVERGED = "diverged.json"
LOCK = ".lock"
CARD = "README.md"  # the model card (`avae.training.card`)
WEIGHTS = "model.safetensors"  # the weights alone (`avae.training.card.export_weights`)


def run_dir_name(cfg: TrainConfig) -> str:
    """The directory name of a run in a reproduction: readable settings, then the config hash."""
    name, model = data.label(cfg.dataset), cfg.model
    return f"{model.name}-{name}-z{model.latent_dim}-n{model.noise_dim}-{config_hash(cfg)}"


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(path, list(rows[0]), [list(row.values()) for row in rows])


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return read_csv(path)


def run_record(cfg: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    """What config.json holds: enough to repeat the run exactly."""
    return {
        "config": config_dict(cfg),
        "config_hash": config_hash(cfg),
        "versions": versions(),
        "data": {"dataset": cfg.dataset, "md5": data.checksums(cfg.dataset, cfg.test_data)},
        "command": sys.argv,
        "device": runtime.device,
    }


def resume_config(run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    """The configuration to resume RUN_DIR with: its config.json, with only the resumable settings
    (epochs, learning rates) taken from `given`; any other setting given with a different value is
    refused, so a resumed run cannot silently become another run."""
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(
            f"--resume: {run_dir} holds no run (no {CONFIG}); drop --resume to start one there, "
            "or give the --out of an existing run"
        )
    recorded = config_dict(read_config(run_dir))
    saved = flatten(recorded)
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(given).items()}
    refused = sorted(k for k, v in given.items() if k not in RESUMABLE_CHANGES and v != saved.get(k))
    if refused:
        details = ", ".join(f"{k} {saved.get(k)!r} -> {given[k]!r}" for k in refused)
        raise ConfigError(
            f"--resume continues {run_dir} as its {CONFIG} says; only {', '.join(RESUMABLE_CHANGES)} "
            f"may change ({details}); drop those options or train into another --out"
        )
    changed = {k: v for k, v in given.items() if k in RESUMABLE_CHANGES and v != saved.get(k)}
    cfg = make_config({**recorded, **changed})  # config.json's form: the run as it was trained
    refuse_unused(cfg, changed)  # a changed setting must matter, as for a new run
    return cfg


def record_resume(run_dir: Path, cfg: TrainConfig, from_epoch: int) -> None:
    """Keep config.json describing the run after a resume: the configuration as it now is, and
    one entry per resume with its command and the settings it changed."""
    path = run_dir / CONFIG
    record = read_json(path, "run configuration") if path.exists() else {}
    before = flatten(record.get("config", {}))
    now = flatten(config_dict(cfg))
    changes = {k: [before.get(k), v] for k, v in now.items() if k in before and before[k] != v}
    record.setdefault("resumes", []).append(
        {"from_epoch": from_epoch, "command": sys.argv, "changes": changes}
    )
    record.update(config=config_dict(cfg), config_hash=config_hash(cfg))
    write_json(path, record)


def read_config(run_dir: str | Path) -> TrainConfig:
    """The configuration recorded in RUN_DIR/config.json."""
    path = Path(run_dir) / CONFIG  # a hand-edited value's error names the file
    return read_json(path, "run configuration", parse=lambda record: make_config(record["config"]))


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of the run's last checkpoint, 0 when there is none (read from the checkpoint's
    header: the weights are not loaded)."""
    if not (run_dir / CHECKPOINT).exists():
        return 0
    return int(checkpoint_meta(run_dir / CHECKPOINT)["epoch"])


def has_weights(run_dir: Path) -> bool:
    """Whether the run can be evaluated further: it keeps its checkpoint, or at least the weights
    exported when it finished (`load_run` reads either); published runs keep neither."""
    return (run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists()


def trained_epoch(run_dir: Path) -> int:
    """How many epochs the run has trained: its checkpoint's epoch or, for a run published without
    weights (config.json, metrics.csv and figures alone), the last epoch of its metrics.csv."""
    if (run_dir / CHECKPOINT).exists():
        return checkpoint_epoch(run_dir)
    if not (run_dir / METRICS).exists():
        return 0
    return max((int(row["epoch"]) for row in read_metrics(run_dir / METRICS)), default=0)


def prepare_run_dir(cfg: TrainConfig, out: Path, resume: bool):
    """Refuse to overwrite a finished or running run, or to resume one whose history (checkpoint
    and metrics.csv up to its epoch) is not all there; return its checkpoint when resuming.

    Without a checkpoint, a resume starts afresh only where nothing would be lost: no metrics.csv,
    or one epoch's rows of a run killed between writing them and its first checkpoint."""
    path = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose another --out")
    if not path.exists():
        if (out / METRICS).exists() and not resume:
            raise ConfigError(f"{out} already holds a run; pass --resume or choose another --out")
        if resume and (out / CARD).exists() and not (out / WEIGHTS).exists():
            raise CheckpointError(
                f"{out} was published without weights (no {CHECKPOINT}), so it cannot be resumed; "
                "train the same settings into another --out to continue them"
            )
        done = max((int(row["epoch"]) for row in read_metrics(out / METRICS)), default=0)
        if resume and (done > 1 or (out / EVAL).exists() or (out / WEIGHTS).exists()):
            raise CheckpointError(
                f"{out} has {done} epochs in {METRICS} but no {CHECKPOINT}, and resuming would train "
                f"again from epoch 0 over them: restore the checkpoint, or train into another --out"
            )
        if resume and out.is_dir():
            remove_stale_temporaries(out, (CHECKPOINT, METRICS, CONFIG))
        return None
    if not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    tensors, meta = load_checkpoint(path)
    check_resumable(cfg, meta, path)
    epoch, rows = int(meta["epoch"]), read_metrics(out / METRICS)
    have = {(row.get("epoch"), row.get("seed")) for row in rows}
    lost = [e for e in range(1, epoch + 1) if any((e, seed) not in have for seed in cfg.seeds)]
    if lost:
        where = f"lacks epoch(s) {', '.join(map(str, lost))}" if rows else "is missing or empty"
        raise CheckpointError(
            f"{out / METRICS} {where} of the {epoch} epochs of the run's checkpoint, and resuming "
            "would lose that history: restore the file, or train into another --out"
        )
    remove_stale_temporaries(out, (CHECKPOINT, METRICS, CONFIG))  # left by a writer killed mid-write
    return tensors, meta


def check_resumable(cfg: TrainConfig, meta: dict[str, Any], path: Path) -> None:
    """Refuse to resume checkpoint `path` with another configuration, or with fewer epochs than
    it has (which would train nothing)."""
    saved = flatten(config_dict(make_config(meta["config"])))  # older checkpoints lack newer keys
    wanted = flatten(config_dict(cfg))
    differing = [
        k
        for k in sorted(set(saved) | set(wanted))
        if k not in RESUMABLE_CHANGES and saved.get(k) != wanted.get(k)
    ]
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} there vs {wanted.get(k)!r} here" for k in differing)
        raise ConfigError(f"cannot resume {path}: it was trained with another configuration ({details})")
    if cfg.epochs < int(meta["epoch"]):
        raise ConfigError(
            f"{path.parent} already has {meta['epoch']} epochs, so epochs {cfg.epochs} would train "
            f"nothing; ask for more than {meta['epoch']} (--epochs) to train further"
        )


def load_weights(model: LatentModel, tensors: dict[str, torch.Tensor]) -> None:
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
    if not (run_dir / CHECKPOINT).exists() and (run_dir / WEIGHTS).exists():
        tensors, meta = load_exported(run_dir)
    else:
        tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    cfg = make_config(meta["config"])  # as trained: its precision and every other setting
    model = build_model(cfg.model, cfg.seeds)
    load_weights(model, tensors)
    return cfg, model.to(device), meta


def load_exported(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A run shared without its checkpoint: the weights alone (model.safetensors, as
    `avae.training.card.export_weights` writes them, with their epoch) and the configuration in config.json.
    Enough to evaluate, analyse or sample; not to resume training."""
    try:
        with safe_open(run_dir / WEIGHTS, framework="pt") as f:
            epoch = int((f.metadata() or {})["epoch"])
            tensors = {f"model.{key}": f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{run_dir / WEIGHTS} is not weights avae exported ({exc}); train again"
        ) from None
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} has {WEIGHTS} but no {CONFIG}: its configuration is unknown")
    return tensors, {"epoch": epoch, "config": read_json(run_dir / CONFIG)["config"]}


@dataclass(frozen=True)
class MemberFigure:
    """One member's figure in an eval.json entry: its seed, its mean over the test points, and the
    standard error of that mean over the points."""

    seed: int
    value: float
    sem_points: float


@dataclass(frozen=True)
class MetricEntry:
    """One figure of eval.json ("neg_elbo", "iwae_k1000", "ais", ...), as `avae evaluate` writes it
    (`to_json`) and every reader reads it (`from_json`): what it is (label, estimator, settings, kind,
    whether it is a log-likelihood), each member's value, their mean, std and sem across members, the
    sem over test points, the number of points, each member's mean over the first n points
    (`prefix_means`, keyed by n as text), the seconds it took and, for BDMC, the gap."""

    label: str
    estimator: str
    settings: dict[str, Any]
    is_log_likelihood: bool
    kind: str
    per_member: tuple[MemberFigure, ...]
    mean: float
    std: float
    sem: float
    members: int
    sem_points: float
    points: int
    prefix_means: dict[str, list[float]]
    seconds: float
    gap: float | None = None  # BDMC's entries only: mean of reverse - forward

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> MetricEntry:
        members = tuple(MemberFigure(**member) for member in entry["per_member"])
        return cls(**{**entry, "per_member": members})

    def to_json(self) -> dict[str, Any]:
        """The entry as eval.json holds it (no "gap" but for BDMC)."""
        entry = asdict(self)
        entry["per_member"] = [asdict(member) for member in self.per_member]
        if self.gap is None:
            del entry["gap"]
        return entry

    def values(self, points: int | None = None) -> list[float] | None:
        """Each member's value, over the first `points` test points when given (None when the figure
        was not computed on that many)."""
        if points is None or points == self.points:
            return [member.value for member in self.per_member]
        return self.prefix_means.get(str(points))


def metric_entries(record: dict[str, Any]) -> dict[str, MetricEntry]:
    """The figures of an eval.json record, by key."""
    return {key: MetricEntry.from_json(entry) for key, entry in record.get("metrics", {}).items()}


def read_record(run_dir: Path, name: str, epoch: int) -> dict[str, Any]:
    """eval.json or analysis.json of a run when it belongs to checkpoint `epoch`, else {}."""
    path = run_dir / name
    record = read_json(path) if path.exists() else {}
    return record if record.get("epoch") == epoch else {}


def record_divergence(run_dir: Path, cfg: TrainConfig, error: DivergenceError) -> None:
    """Write DIVERGED: the epoch, step, member, seed and loss term that went non-finite, under the
    settings of the attempt (its learning rates and config hash). The last good checkpoint is
    untouched; `clear_divergence` removes the record once an epoch past it is written."""
    write_json(
        run_dir / DIVERGED,
        {
            "epoch": error.epoch,
            "step": error.step,
            "member": error.member,
            "seed": error.seed,
            "term": error.term,
            "message": str(error),
            "settings": {k: getattr(cfg, k) for k in RESUMABLE_CHANGES},
            "config_hash": config_hash(cfg),
            "command": sys.argv,
        },
    )


def divergence_label(record: dict[str, Any]) -> str:
    """How a table or listing names a diverged run: "diverged (epoch E, seed S)"."""
    return f"diverged (epoch {record['epoch']}, seed {record['seed']})"


def clear_divergence(run_dir: Path) -> None:
    (run_dir / DIVERGED).unlink(missing_ok=True)


def read_divergence(run_dir: Path) -> dict[str, Any] | None:
    """The run's divergence record while it still holds: no epoch at or past it has been trained
    (metrics.csv, which published runs keep without their checkpoints); None otherwise."""
    path = run_dir / DIVERGED
    if not path.exists():
        return None
    record = read_json(path, "divergence record")
    rows = read_metrics(run_dir / METRICS) if (run_dir / METRICS).exists() else []
    trained = max((int(row["epoch"]) for row in rows), default=0)
    return record if trained < record["epoch"] else None

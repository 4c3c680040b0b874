"""A run directory's model card, README.md: what a person needs to read, trust and reuse the run.
It is written when training ends and rewritten whenever evaluate_run adds figures. The weights
are also exported alone as model.safetensors beside config.json, the layout of the Hugging Face
Hub's PyTorch mixin, so a run can be shared there as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save

from avae.core.models import MODELS, reading_of, row_label
from avae.io import atomic_write_bytes, atomic_write_text, read_json
from avae.training.checkpoint import load_checkpoint
from avae.training.config import TrainConfig
from avae.training.runs import (
    CARD,
    CHECKPOINT,
    CONFIG,
    EVAL,
    METRICS,
    WEIGHTS,
    metric_entries,
    read_config,
    read_metrics,
    read_record,
    trained_epoch,
)


def export_weights(run_dir: Path) -> Path:
    """The model's weights alone (no optimiser state or RNG streams) as model.safetensors."""
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    weights = {k[len("model.") :]: v.contiguous() for k, v in tensors.items() if k.startswith("model.")}
    atomic_write_bytes(run_dir / WEIGHTS, save(weights, metadata={"epoch": str(meta["epoch"])}))
    return run_dir / WEIGHTS


def figures_table(record: dict[str, Any]) -> list[str]:
    rows = ["| figure | value (mean ± sem over members) | what it is | test points |", "|---|---|---|---|"]
    for key, entry in sorted(metric_entries(record).items()):
        kind = entry.kind + ("" if entry.is_log_likelihood else "; not a log-likelihood")
        value = f"{entry.mean:.2f} ± {entry.sem:.2f}"
        rows.append(f"| `{key}` | {value} | {entry.label} ({kind}) | {entry.points} |")
    return rows


def examples_trained(cfg: TrainConfig, record: dict[str, Any]) -> str:
    """How many examples the run trained on: as training recorded it in config.json, else (runs
    of earlier versions) what its settings say."""
    recorded = record.get("data", {}).get("examples", {}).get("train")
    if recorded is not None:
        return f"{recorded:,}"
    held = f" of those left by holdout {cfg.holdout:,}" if cfg.holdout else ""
    return f"at most {cfg.train_subset:,}{held}" if cfg.train_subset else f"all{held}"


def evaluation_lines(run_dir: Path, epoch: int) -> list[str]:
    """The card's table of eval.json figures of the weights' epoch; figures of an earlier epoch are
    left out, with a line saying so."""
    evaluation = read_record(run_dir, EVAL, epoch)
    if evaluation:
        return [f"Evaluated at epoch {epoch} (`{EVAL}`):", "", *figures_table(evaluation)]
    stale = read_json(run_dir / EVAL).get("epoch") if (run_dir / EVAL).exists() else None
    if stale is not None:
        return [
            f"`{EVAL}` holds figures of epoch {stale}, not of these weights (epoch {epoch}), so they are "
            "not shown: `avae evaluate RUN_DIR` evaluates these."
        ]
    return ["Not evaluated yet: `avae evaluate RUN_DIR`."]


def write_card(run_dir: str | Path) -> Path:
    """RUN_DIR/README.md from config.json, metrics.csv and eval.json (its figures of the weights'
    epoch only)."""
    run_dir = Path(run_dir)
    cfg, record = read_config(run_dir), read_json(run_dir / CONFIG, "run configuration")
    rows = read_metrics(run_dir / METRICS)
    epoch = trained_epoch(run_dir)
    last = [r for r in rows if r["epoch"] == epoch]
    column = "valid_neg_elbo" if cfg.holdout else "test_neg_elbo"
    curve = ", ".join(f"seed {r['seed']}: {r[column]:.2f}" for r in last) or "no epoch yet"
    model = MODELS[cfg.model.name]
    epochs = f"{epoch}" if epoch == cfg.epochs else f"{epoch} of {cfg.epochs}"
    version = record.get("versions", {}).get("avae", "?")
    lines = [
        f"# {row_label(cfg.model.name, reading_of(cfg.model))} on {cfg.dataset}",
        "",
        f"{model.__doc__.strip().splitlines()[0]} Trained by avae {version} "
        f"with {len(cfg.seeds)} seeds ({', '.join(map(str, cfg.seeds))}), one member each, for {epochs} "
        f"epochs on {examples_trained(cfg, record)} training examples ({cfg.pixels} pixels, "
        f"{cfg.model.likelihood} decoder, latent {cfg.model.latent_dim}, noise {cfg.model.noise_dim}).",
        "",
        "## Data",
        "",
        *[f"- `{name}`: MD5 `{md5}`" for name, md5 in record.get("data", {}).get("md5", {}).items()],
        "",
        "## Figures",
        "",
        f"Per-epoch {column.replace('_', ' ')} at epoch {epoch} (the model's own objective, "
        f"{model.metric_label}): {curve}.",
        "",
        *evaluation_lines(run_dir, epoch),
        "",
        "## Settings",
        "",
        "Every setting is in `config.json` (with package versions and data checksums); the weights are in "
        f"`{WEIGHTS}` (and, with the optimiser state, in `{CHECKPOINT}`). Both are safetensors: no pickle.",
        "",
        "## Use",
        "",
        "```python",
        "import avae",
        "model = avae.load('RUN_DIR')      # encode, decode, reconstruct, sample, score",
        "```",
        "",
        "`avae evaluate RUN_DIR --metrics elbo,iwae,ais --subset 200` adds honest figures to eval.json.",
        "",
    ]
    atomic_write_text(run_dir / CARD, "\n".join(lines))
    return run_dir / CARD

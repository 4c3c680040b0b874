"""A run directory's model card, README.md: what a person needs to read, trust and reuse the run.
It is written when training ends and rewritten whenever evaluate_run adds figures. The weights
are also exported alone as model.safetensors beside config.json, the layout of the Hugging Face
Hub's PyTorch mixin, so a run can be shared there as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save

from avae.checkpoint import load_checkpoint
from avae.io import atomic_write_bytes, atomic_write_text, read_json
from avae.models import MODELS, reading_of, row_label
from avae.runs import CHECKPOINT, CONFIG, EVAL, METRICS, read_config, read_metrics

CARD = "README.md"
WEIGHTS = "model.safetensors"


def export_weights(run_dir: Path) -> Path:
    """The model's weights alone (no optimiser state or RNG streams) as model.safetensors."""
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    weights = {k[len("model.") :]: v.contiguous() for k, v in tensors.items() if k.startswith("model.")}
    atomic_write_bytes(run_dir / WEIGHTS, save(weights, metadata={"epoch": str(meta["epoch"])}))
    return run_dir / WEIGHTS


def figures_table(record: dict[str, Any]) -> list[str]:
    rows = ["| figure | value (mean ± sem over members) | what it is | test points |", "|---|---|---|---|"]
    for key, entry in sorted(record.get("metrics", {}).items()):
        kind = entry["kind"] + ("" if entry["is_log_likelihood"] else "; not a log-likelihood")
        value = f"{entry['mean']:.2f} ± {entry['sem']:.2f}"
        rows.append(f"| `{key}` | {value} | {entry['label']} ({kind}) | {entry['points']} |")
    return rows


def write_card(run_dir: str | Path) -> Path:
    """RUN_DIR/README.md from config.json, metrics.csv and eval.json."""
    run_dir = Path(run_dir)
    cfg, record = read_config(run_dir), read_json(run_dir / CONFIG, "run configuration")
    rows = read_metrics(run_dir / METRICS)
    last = [r for r in rows if r["epoch"] == max((r["epoch"] for r in rows), default=0)]
    column = "valid_neg_elbo" if cfg.holdout else "test_neg_elbo"
    curve = ", ".join(f"seed {r['seed']}: {r[column]:.2f}" for r in last) or "no epoch yet"
    evaluation = read_json(run_dir / EVAL) if (run_dir / EVAL).exists() else {}
    model = MODELS[cfg.model.name]
    version = record.get("versions", {}).get("avae", "?")
    lines = [
        f"# {row_label(cfg.model.name, reading_of(cfg.model))} on {cfg.dataset}",
        "",
        f"{model.__doc__.strip().splitlines()[0]} Trained by avae {version} "
        f"with {len(cfg.seeds)} seeds ({', '.join(map(str, cfg.seeds))}), one member each, for {cfg.epochs} "
        f"epochs on {cfg.train_subset or 'all'} training examples ({cfg.pixels} pixels, "
        f"{cfg.model.likelihood} decoder, latent {cfg.model.latent_dim}, noise {cfg.model.noise_dim}).",
        "",
        "## Data",
        "",
        *[f"- `{name}`: MD5 `{md5}`" for name, md5 in record.get("data", {}).get("md5", {}).items()],
        "",
        "## Figures",
        "",
        f"Per-epoch {column.replace('_', ' ')} at the last epoch (the model's own objective, "
        f"{model.metric_label}): {curve}.",
        "",
        *(figures_table(evaluation) if evaluation else ["Not evaluated yet: `avae evaluate RUN_DIR`."]),
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

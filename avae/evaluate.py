"""Evaluation of trained members: the paper's ELBO (each model's own objective) on test data."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avae.models import LatentModel
from avae.nets import MemberRandom


@torch.no_grad()
def neg_elbo_per_member(
    model: LatentModel, x: torch.Tensor, seeds: Sequence[int], batch_size: int = 1000
) -> torch.Tensor:
    """Mean over `x` [N, D] of each member's `neg_elbo`, [S] (float64).

    Noise comes from a fixed "eval" stream per member, so the figure is repeatable and evaluating
    never disturbs the training streams.
    """
    rng = MemberRandom(seeds, "eval", x.device)
    total = torch.zeros(len(seeds), dtype=torch.float64, device=x.device)
    for chunk in x.split(batch_size):
        batch = chunk.unsqueeze(0).expand(len(seeds), -1, -1)
        total += model.neg_elbo(batch, rng).double().sum(-1)
    return (total / len(x)).cpu()


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the standard error of the mean across members."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n) if n > 1 else 0.0, "members": n}


def evaluate_run(run_dir: str | Path, *, device: str = "cpu", data_dir: str | None = None) -> dict[str, Any]:
    """Test negative ELBO of every member of a trained run; written to RUN_DIR/eval.json."""
    from avae import data
    from avae.io import write_json
    from avae.train import load_run

    cfg, model, meta = load_run(run_dir, device)
    test_x = data.load_pixels(cfg.dataset, "test", cfg.pixels, data_dir)
    if cfg.test_subset:
        test_x = test_x[: cfg.test_subset]
    started = time.perf_counter()
    values = neg_elbo_per_member(model, test_x.to(device), cfg.seeds).tolist()
    result = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "epoch": meta["epoch"],
        "metrics": {
            "neg_elbo": {
                "label": model.metric_label,
                "estimator": "model objective, one noise draw per test point",
                "is_log_likelihood": False,
                "per_member": [{"seed": s, "value": v} for s, v in zip(cfg.seeds, values, strict=True)],
                **summarise(values),
                "points": len(test_x),
                "seconds": round(time.perf_counter() - started, 3),
            }
        },
    }
    write_json(Path(run_dir) / "eval.json", result)
    return result

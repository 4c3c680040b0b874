"""Evaluation packs: several trained runs of one model that differ only in their seeds and data set
(a training pack's, `avae.training.packs`, of equal sizes: evaluation does not pad) evaluated as one
model. Their members are loaded into one member-batched model and every metric is one call over all
of them (graphed on CUDA where the estimator is), each member scored on its own run's test points
(`avae.likelihood.scoring.MemberPoints`); each run's eval.json is written as `evaluate_run` on that
run alone writes it (`avae.evaluation.evaluate.record_evaluation`, the one writer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avae.core import objectives as obj
from avae.core.graphs import use_device
from avae.core.models import build_model
from avae.errors import ConfigError
from avae.evaluation.evaluate import compute_entries, parse_metrics, record_evaluation, run_test_points
from avae.likelihood.scoring import EvalSettings, MemberPoints
from avae.training.checkpoint import load_checkpoint
from avae.training.config import Runtime, TrainConfig, make_config
from avae.training.packs import SAME_SIZES, differing_settings
from avae.training.runs import CHECKPOINT, WEIGHTS, load_exported, load_weights


@dataclass
class PackedRun:
    """One run of an evaluation pack: its directory, configuration, checkpoint metadata and weights."""

    run_dir: Path
    cfg: TrainConfig
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]


def load_pack(run_dirs: Sequence[str | Path]) -> list[PackedRun]:
    """Every run's configuration and weights, refusing (ConfigError, before any evaluation) a run
    without weights, a run given twice, and runs that differ in more than their seeds and data set
    (`avae.training.packs.SAME_SIZES`)."""
    if isinstance(run_dirs, (str, Path)) or not run_dirs:
        raise ConfigError("an evaluation pack needs a list of at least one run directory")
    dirs = [Path(r) for r in run_dirs]
    seen: set[Path] = set()
    for run_dir in dirs:
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir} is not a run directory; give the --out of `avae train`")
        if not ((run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists()):
            raise ConfigError(
                f"{run_dir} has no {CHECKPOINT} (nor exported {WEIGHTS}), so it cannot be evaluated; "
                "train it first, or leave it out of the pack"
            )
        if run_dir.resolve() in seen:
            raise ConfigError(f"{run_dir} is given twice in one evaluation pack; give each run once")
        seen.add(run_dir.resolve())
    runs = []
    for run_dir in dirs:
        if (run_dir / CHECKPOINT).exists():
            tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
        else:
            tensors, meta = load_exported(run_dir)
        weights = {k: v for k, v in tensors.items() if k.startswith("model.")}
        runs.append(PackedRun(run_dir, make_config(meta["config"]), meta, weights))
    for run in runs[1:]:
        details = differing_settings(runs[0].cfg, run.cfg, SAME_SIZES)
        if details:
            raise ConfigError(
                f"the runs of an evaluation pack may differ only in {' and '.join(SAME_SIZES)}, but "
                f"{runs[0].run_dir} and {run.run_dir} differ in {details}; evaluate them in separate "
                "packs or alone (evaluate_run)"
            )
    return runs


def member_rows(counts: Sequence[int]) -> tuple[slice, ...]:
    """Each run's rows of a pack's members, given each run's number of members in order."""
    rows, start = [], 0
    for count in counts:
        rows.append(slice(start, start + count))
        start += count
    return tuple(rows)


def evaluate_pack(
    run_dirs: Sequence[str | Path],
    *,
    metrics: Sequence[str] | str = ("elbo",),
    settings: EvalSettings | dict[str, Any] | None = None,
    runtime: Runtime | None = None,
) -> list[dict[str, Any]]:
    """Evaluate several runs of one model that differ only in their seeds and data set (a training pack's
    of equal sizes, `avae.training.packs.SAME_SIZES`) as one model: their members one after another,
    every metric one call over all of them (graphed on CUDA where the estimator is), each member
    scored on its own run's test points (`MemberPoints`). Each run's eval.json gets what
    `evaluate_run` on it alone writes (`record_evaluation`, the same writer): every random stream is
    keyed by its member's seed, each run's entries (values, chain statistics, BDMC gap) come from its
    own members, and the values differ only by the rounding of the batched products (measured in
    tests/test_evalpack.py). Returns each run's record, as `evaluate_run` does, in order.

    Runs whose test sets differ in their number of points cannot share batches of points, and an IWAE
    chunks each member's draws as its run would alone (the chunk depends on the run's number of
    members), so the runs are grouped by number of test points (and, for IWAE, of seeds): one model
    and one call per metric per group. A training pack's runs make one group."""
    chosen = parse_metrics(metrics)
    settings = EvalSettings.of(settings)
    if not isinstance(runtime, (Runtime, type(None))):
        raise ConfigError(f"runtime must be an avae.Runtime, got {type(runtime).__name__}")
    runtime = runtime or Runtime()
    runs = load_pack(run_dirs)
    device = use_device(runtime.device)
    tests: dict[str, torch.Tensor] = {}  # by data set: every other setting is the pack's
    for run in runs:
        if run.cfg.dataset not in tests:
            tests[run.cfg.dataset] = run_test_points(run.cfg, settings, runtime)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, run in enumerate(runs):
        seeds = len(run.cfg.seeds) if "iwae" in chosen else 0
        groups.setdefault((len(tests[run.cfg.dataset]), seeds), []).append(index)
    cfg = runs[0].cfg
    honest = obj.is_normalised_likelihood(cfg.model.likelihood, cfg.pixels)
    results: list[dict[str, Any]] = [{} for _ in runs]
    for group in groups.values():
        members = [runs[i] for i in group]
        seeds = [s for run in members for s in run.cfg.seeds]
        model = build_model(cfg.model, seeds)
        load_weights(model, {k: torch.cat([run.weights[k] for run in members]) for k in members[0].weights})
        model = model.to(device).requires_grad_(False)
        datasets = list(dict.fromkeys(run.cfg.dataset for run in members))
        which = [datasets.index(run.cfg.dataset) for run in members for _ in run.cfg.seeds]
        points = MemberPoints(torch.stack([tests[d] for d in datasets]).to(device), torch.tensor(which))
        rows = member_rows([len(run.cfg.seeds) for run in members])
        budget = len(members[0].cfg.seeds)
        entries, notes = compute_entries(
            model, points, seeds, chosen, settings, honest, runtime.progress, rows, budget
        )
        for position, (index, run) in enumerate(zip(group, members, strict=True)):
            own = {key: figures[position] for key, figures in entries.items()}
            results[index] = record_evaluation(run.run_dir, run.cfg, run.meta, own, notes, settings)
    return results

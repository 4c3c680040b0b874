"""The finished work of a reproduction as the report reads it: one `RunResult` per run directory,
indexed by table row. Reading only: nothing here trains, evaluates or writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avae.core.models import reading_of
from avae.io import read_json
from avae.repro.paper import RowKey
from avae.training.config import TrainConfig
from avae.training.runs import (
    ANALYSIS,
    EVAL,
    METRICS,
    MetricEntry,
    divergence_label,
    read_config,
    read_divergence,
    read_metrics,
    read_record,
    trained_epoch,
)

MANIFEST = "reproduce.json"
INDEX = "index.json"
SWEEP = "sweep.json"  # what `avae sweep` writes


@dataclass
class RunResult:
    """One run directory: its configuration, curves, evaluation and analysis at its last epoch."""

    dir: Path
    cfg: TrainConfig
    rows: list[dict[str, Any]]
    eval: dict[str, Any]
    analysis: dict[str, Any]
    trained_epochs: int
    divergence: dict[str, Any] | None = None  # runs.DIVERGED while it holds

    @property
    def missing_label(self) -> str:
        """What a table shows for a figure this run lacks."""
        if self.divergence:
            return divergence_label(self.divergence)
        return "not evaluated"

    @property
    def key(self) -> RowKey:
        m = self.cfg.model
        return RowKey(self.cfg.dataset, m.name, reading_of(m), m.latent_dim, m.noise_dim)

    def entry(self, key: str) -> MetricEntry | None:
        entry = self.eval.get("metrics", {}).get(key)
        return None if entry is None else MetricEntry.from_json(entry)

    def metric(self, key: str, points: int | None = None) -> list[float] | None:
        """Per-member values of an eval.json figure, over its first `points` test points when
        given (None when the figure was not computed on exactly those points)."""
        entry = self.entry(key)
        return None if entry is None else entry.values(points)

    def analysed(self, key: str) -> list[float] | None:
        values = [row.get(key) for row in self.analysis.get("per_member", [])]
        return values if values and None not in values else None

    def by_epoch(self, column: str = "test_neg_elbo") -> dict[int, list[float]]:
        """The seeds' values of a metrics.csv column after each epoch, in epoch order."""
        by_epoch: dict[int, list[float]] = {}
        for row in self.rows:
            by_epoch.setdefault(int(row["epoch"]), []).append(float(row[column]))
        return dict(sorted(by_epoch.items()))

    @property
    def feature_space(self) -> tuple[Any, ...] | None:
        """What this run's Frechet distances were measured with (None: not analysed): the feature
        classifier and the number of samples, identified by the classifier's test accuracy and the
        distance between as many training and test images that it gave (analysis.json's
        `reference_frechet_distance`, to the 3 decimals the report prints). A classifier is trained
        once per output folder, so runs evaluated in different folders or on a replaced machine may
        have different ones, and their distances are then not comparable."""
        classifier = self.analysis.get("classifier")
        reference = self.analysis.get("reference_frechet_distance")
        if not classifier or reference is None:
            return None
        return (classifier.get("test_accuracy"), round(reference, 3))

    def values(self, metric: str, points: int | None = None) -> list[float] | None:
        """A figure of eval.json or of analysis.json by name."""
        return self.analysed(metric) if metric == "frechet_distance" else self.metric(metric, points)


def collect_runs(out: str | Path) -> list[RunResult]:
    """Every run directory under `out` with a config.json and at least one finished epoch; when
    `out/reproduce.json` lists the planned runs, only those. Checkpoints are not needed: published
    results carry config.json, metrics.csv, eval.json and analysis.json alone."""
    out = Path(out)
    manifest = out / MANIFEST
    wanted = {r["dir"] for r in read_json(manifest)["runs"]} if manifest.exists() else None
    runs = []
    for config in sorted(out.glob("*/config.json")):
        run_dir = config.parent
        cfg = read_config(run_dir)
        if wanted is not None and run_dir.name not in wanted:
            continue
        rows = read_metrics(run_dir / METRICS)
        epoch = trained_epoch(run_dir)
        if not epoch:
            continue
        runs.append(
            RunResult(
                run_dir,
                cfg,
                [r for r in rows if r["epoch"] <= epoch],
                read_record(run_dir, EVAL, epoch),
                read_record(run_dir, ANALYSIS, epoch),
                epoch,
                read_divergence(run_dir),
            )
        )
    return runs


def shared_points(
    table: dict[RowKey, RunResult], dataset: str, key: str, latent: int | None = None
) -> int | None:
    """The test points every run of `dataset` (at `latent`, if given) has figure `key` on: the
    smallest count recorded, so that a table can set their figures side by side."""
    counts = {
        run.entry(key).points
        for row, run in table.items()
        if row.dataset == dataset and latent in (None, row.latent) and run.entry(key)
    }
    return min(counts) if counts else None


def index_runs(runs: list[RunResult]) -> dict[RowKey, RunResult]:
    """Table row -> the run trained furthest (then with most seeds)."""
    best: dict[RowKey, RunResult] = {}
    for run in runs:
        old = best.get(run.key)
        if old is None or (run.trained_epochs, len(run.cfg.seeds)) > (old.trained_epochs, len(old.cfg.seeds)):
            best[run.key] = run
    return best


SHORT_OF_CONVERGENCE = 1.0  # nats per epoch: still improving faster than this at the end of training
# The epochs whose trend says whether a run still improves: over one epoch alone, the seeds' mean
# test figure of AVB moves by 1-2 nats either way at epoch 100 (a critic-based figure), which says
# nothing about a trend.
CONVERGENCE_EPOCHS = 5


def recent_gain(
    run: RunResult, column: str = "test_neg_elbo", epochs: int = CONVERGENCE_EPOCHS
) -> float | None:
    """How fast the seeds' mean test figure was falling at the end of training, in nats per epoch:
    minus the least-squares slope over the last `epochs` epochs (over the last two, the last
    epoch's fall; None with one epoch)."""
    by_epoch = list(run.by_epoch(column).values())[-epochs:]
    if len(by_epoch) < 2:
        return None
    means = np.array([sum(values) / len(values) for values in by_epoch])
    return float(-np.polyfit(np.arange(len(means)), means, 1)[0])


def short_of_convergence(run: RunResult) -> bool:
    """True when the run was still improving by more than SHORT_OF_CONVERGENCE nats per epoch over
    its last CONVERGENCE_EPOCHS epochs, or trained a single epoch (no evidence either way)."""
    gain = recent_gain(run)
    return gain is None or gain > SHORT_OF_CONVERGENCE

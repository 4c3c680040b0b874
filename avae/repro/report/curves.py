"""The report's training curves: each run's test -ELBO per epoch from metrics.csv, mean and 95% band
over seeds, drawn for Figs. 6 and 7 (`curves_section`) and for a sweep's points
(avae.repro.report.sweep_report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avae.core.models import MODELS
from avae.evaluation import stats
from avae.io import write_csv
from avae.repro.paper import RowKey, dataset_label, rows_of
from avae.repro.report.claims import key_label
from avae.repro.report.figures import Curve, Panel, plot_curves
from avae.repro.report.tables import Table
from avae.repro.results import RunResult


def curve_panels(datasets: list[str], which: str) -> tuple[str, list[tuple[str, list[RowKey]]]]:
    """Fig. 6 or Fig. 7 ("fig6", "fig7"): its title, and each panel's title and rows."""
    if which == "fig6":
        title = "Fig. 6: VAE+eps with noise dimension 5, 10, 15 against the VAE (latent 10)"
        return title, [
            (
                dataset_label(d),
                [*rows_of(d, "vae", 10), *(rows_of(d, "vae-noise", 10, n)[0] for n in (5, 10, 15))],
            )
            for d in datasets
        ]
    title = "Fig. 7: VAE, VAE+eps and AVAE over training (latent 10 and 15)"
    return title, [
        (
            f"{dataset_label(d)}, latent {z}",
            [k for m in ("vae", "vae-noise", "avae") for k in rows_of(d, m, z)],
        )
        for d in datasets
        for z in (10, 15)
    ]


def curves_section(table: Table, datasets: list[str], figdir: Path, which: str) -> str:
    title, panels = curve_panels(datasets, which)
    csv_rows, drawn = [], []
    for panel_title, keys in panels:
        curves = key_curves(table, keys)
        drawn.append(Panel(panel_title, curves))
        for key, curve in zip(keys, curves, strict=True):
            csv_rows += [[*key, p["epoch"], p["seeds"], p["mean"], p["lo"], p["hi"]] for p in curve.points]
    plot_curves(drawn, figdir / f"{which}.png", title)
    write_csv(
        figdir / f"{which}.csv",
        [
            "dataset",
            "model",
            "reading",
            "latent_dim",
            "noise_dim",
            "epoch",
            "seeds",
            "mean",
            "ci95_low",
            "ci95_high",
        ],
        csv_rows,
    )
    missing = [f"{key_label(k)} ({k.dataset})" for _, keys in panels for k in keys if k not in table]
    note = f" Missing runs: {', '.join(missing)}." if missing else ""
    return "\n".join(
        [
            f"## {title}",
            "",
            "Test negative ELBO after every epoch (metrics.csv), mean over seeds with a shaded 95% CI band."
            + note,
            "",
            f"![{which}](report/{which}.png)",
            "",
            f"CSV: [report/{which}.csv](report/{which}.csv)",
        ]
    )


def key_curves(table: Table, keys: list[RowKey]) -> list[Curve]:
    """A panel's curves, one per row key in the model's colour; keys sharing a colour take the
    next line style in the panel's order (AVAE separate is dashed beside AVAE joint), so a row
    keeps its style whether or not the others ran."""
    curves = []
    for i, key in enumerate(keys):
        colour = MODELS[key.model].colour
        style = sum(MODELS[k.model].colour == colour for k in keys[:i])
        run = table.get(key)
        curves.append(Curve(key_label(key), curve_stats(run) if run else [], colour, style, curve_note(run)))
    return curves


def curve_note(run: RunResult | None, divergence: dict[str, Any] | None = None) -> str:
    """What a figure's legend says after a run's label: why it has no curve, or why it stops
    (`divergence`: the record of a run without a finished epoch, which has no RunResult)."""
    divergence = run.divergence if run else divergence
    if divergence:
        return f"diverged at epoch {divergence['epoch']}"
    return "not run" if run is None else ""


def curve_stats(run: RunResult, column: str = "test_neg_elbo") -> list[dict[str, float]]:
    """Per epoch: mean and 95% CI band over the run's seeds of `column` in metrics.csv."""
    points = []
    for epoch, values in run.by_epoch(column).items():
        mean, half = stats.mean_ci(values)
        half = 0.0 if half != half else half
        points.append(
            {"epoch": epoch, "seeds": len(values), "mean": mean, "lo": mean - half, "hi": mean + half}
        )
    return points

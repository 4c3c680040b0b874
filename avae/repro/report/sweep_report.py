"""The report of `avae sweep` (`write_sweep_report`): each point of sweep.json with its run's figures,
and one curve per point in its own colour and style. `avae report` writes it for a folder that holds
sweep.json and no reproduce.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avae.errors import ConfigError
from avae.io import atomic_write_text, read_json, write_csv
from avae.repro.paper import dataset_label
from avae.repro.report.caveats import convergence_warning, divergence_note
from avae.repro.report.curves import curve_note, curve_stats
from avae.repro.report.figures import Curve, Panel, format_table, plot_curves
from avae.repro.report.tables import cell, runs_section
from avae.repro.results import INDEX, RunResult, collect_runs
from avae.training.runs import divergence_label


def write_sweep_report(out: Path, record: dict[str, Any]) -> Path:
    """OUT/report.md of `avae sweep`: each point of sweep.json with its run's figures, and its
    curve in its own colour and style (report/sweep.png, report/sweep.csv)."""
    runs = {run.dir.name: run for run in collect_runs(out)}
    points = [(entry, runs.get(entry["dir"])) for entry in record["points"]]
    present = list({run.dir.name: run for _, run in points if run}.values())
    if not present:
        raise ConfigError(f"no trained runs in {out}; run `avae sweep --out {out}` again to train them")
    figdir = out / "report"
    figdir.mkdir(parents=True, exist_ok=True)
    grid = " ".join(f"{key}={','.join(setting(v) for v in values)}" for key, values in record["grid"].items())
    settings = "; ".join(f"{key} {setting(value, ',')}" for key, value in record["settings"].items())
    sections = [
        f"# Sweep report\n\n`avae sweep --grid {grid}`: {len(points)} points, {len(present)} trained run(s); "
        "shared "
        f"settings: {settings}. Written by `avae report` from sweep.json and the run directories alone."
        + convergence_warning(present, "every figure below")
        + divergence_note(present),
        sweep_points_section(record, points),
        sweep_curves_section(record, points, figdir),
        runs_section(present, {}, read_json(out / INDEX) if (out / INDEX).exists() else {}),
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path


def point_label(point: dict[str, Any]) -> str:
    """A sweep point as its settings: "lr=0.001, adv_weight=0.1"."""
    return ", ".join(f"{key}={setting(value)}" for key, value in point.items())


def setting(value: Any, separator: str = "/") -> str:
    """A setting's value as `avae sweep --grid` takes it: a list's items joined by "/"."""
    return separator.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def sweep_points_section(
    record: dict[str, Any], points: list[tuple[dict[str, Any], RunResult | None]]
) -> str:
    figures = list(dict.fromkeys(key for _, run in points if run for key in run.eval.get("metrics", {})))
    rows = []
    for entry, run in points:
        cells = [setting(entry["point"][key]) for key in record["grid"]] + [entry["dir"]]
        if run is None:  # no finished epoch: diverged in its first, or not trained
            diverged = entry.get("diverged")
            rows.append(
                [*cells, divergence_label(diverged) if diverged else "not trained", *("-" for _ in figures)]
            )
            continue
        gap = run.missing_label if run.divergence else "-"
        rows.append(
            [*cells, f"{run.trained_epochs}/{run.cfg.epochs}", *(cell(run.metric(f), gap) for f in figures)]
        )
    return "\n".join(
        [
            "## Points",
            "",
            "Each point's figures at its run's last epoch (eval.json): nats, lower is better, mean ± 95% "
            "confidence interval over seeds (t distribution).",
            "",
            format_table([*record["grid"], "run", "epochs", *figures], rows),
        ]
    )


def sweep_curves_section(
    record: dict[str, Any], points: list[tuple[dict[str, Any], RunResult | None]], figdir: Path
) -> str:
    """One curve per run of the sweep, labelled by its points, each in its own colour (then style)."""
    labels: dict[str, list[str]] = {}
    for entry, _ in points:
        labels.setdefault(entry["dir"], []).append(point_label(entry["point"]))
    runs = {entry["dir"]: (entry, run) for entry, run in points}
    curves, csv_rows = [], []  # (data set, or None for a run not there: said in every panel)
    for i, (name, names) in enumerate(labels.items()):
        entry, run = runs[name]
        points_of = curve_stats(run) if run else []
        note = curve_note(run, entry.get("diverged"))
        curve = Curve("; ".join(names), points_of, f"C{i % 10}", i // 10, note)
        curves.append((run.cfg.dataset if run else None, curve))
        csv_rows += [
            ["; ".join(names), name, p["epoch"], p["seeds"], p["mean"], p["lo"], p["hi"]] for p in points_of
        ]
    datasets = list(dict.fromkeys(d for d, _ in curves if d))
    panels = [Panel(dataset_label(d), [c for e, c in curves if e in (d, None)]) for d in datasets]
    title = f"avae sweep over {', '.join(record['grid'])}: test negative ELBO over training"
    plot_curves(panels, figdir / "sweep.png", title)
    write_csv(
        figdir / "sweep.csv", ["point", "run", "epoch", "seeds", "mean", "ci95_low", "ci95_high"], csv_rows
    )
    return "\n".join(
        [
            "## Test negative ELBO over training",
            "",
            "After every epoch (metrics.csv), one curve per point in its own colour, mean over seeds with a "
            "shaded 95% CI band.",
            "",
            "![sweep](report/sweep.png)",
            "",
            "CSV: [report/sweep.csv](report/sweep.csv)",
        ]
    )

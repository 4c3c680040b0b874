"""`avae report DIR`: report.md, PNG figures and CSV files from the run directories of a
reproduction. It only reads: training, evaluation and analysis are `avae reproduce`'s (or
`avae evaluate` / `avae analyse`'s) work, and the report names the command that fills any gap.
The same run files always give the same report, byte for byte."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from avae.core.models import MODELS, row_label
from avae.errors import ConfigError
from avae.evaluation import stats
from avae.io import atomic_write_bytes, atomic_write_text, read_json, write_csv
from avae.repro.costs import estimate_run_seconds
from avae.repro.paper import (
    DATASET_LABELS,
    PAPER_LATENTS,
    PAPER_TABLE1,
    RowKey,
    dataset_label,
    noise_of,
    rows_of,
)
from avae.repro.plan import PROFILES, get_profile, runs_for
from avae.repro.report.claims import claims_section, key_label
from avae.repro.report.figures import Curve, Panel, format_table, plot_curves
from avae.repro.report.findings import findings_section
from avae.repro.results import (
    INDEX,
    MANIFEST,
    SWEEP,
    RunResult,
    collect_runs,
    index_runs,
    last_epoch_gain,
    shared_points,
    short_of_convergence,
)
from avae.training.runs import CONFIG, divergence_label

Table = dict[RowKey, RunResult]


def table_rows(dataset: str, latent: int) -> list[RowKey]:
    """Every registered model and reading at one latent size, in registry order."""
    return [key for model in MODELS for key in rows_of(dataset, model, latent)]


def cell(values: list[float] | None, missing: str = "-") -> str:
    return stats.fmt_ci(values) if values else missing


def header_section(runs: list[RunResult], datasets: list[str], profile: str) -> str:
    epochs = sorted({r.cfg.epochs for r in runs})
    images = sorted({r.cfg.train_subset or 60000 for r in runs})
    budget = (
        f"Training budget: {', '.join(map(str, epochs))} epoch(s) on {', '.join(f'{n:,}' for n in images)} "
        f"training images, {len(runs[0].cfg.seeds)} seeds per configuration. The paper trains on all "
        "60,000 images (epochs and number of runs unstated)."
    )
    budget += convergence_warning(runs, "every verdict below") + divergence_note(runs)
    return (
        "# Reproduction report: Variational Autoencoder Model Based on Adversarial Strategy (AVAE)\n\n"
        f"Profile `{profile}`, {len(runs)} runs, data sets: "
        f"{', '.join(dataset_label(d) for d in datasets)}. "
        "Written by `avae report` from the run directories alone.\n\n" + budget
    )


def convergence_warning(runs: list[RunResult], caveated: str) -> str:
    """A warning when runs were still improving at their last epoch (diverged runs are said apart),
    saying that `caveated` carries that caveat."""
    short = [r for r in runs if short_of_convergence(r) and not r.divergence]
    if not short:
        return ""
    gains = [g for g in (last_epoch_gain(r) for r in short) if g is not None]
    largest = f" (up to {max(gains):.1f} nats in the last epoch)" if gains else ""
    return (
        f" **Warning: {len(short)} of {len(runs)} runs were still improving by more than 1 nat per "
        f"epoch at their last epoch{largest}: their numbers describe how fast each model learns, "
        f"not what it reaches, and {caveated} carries that caveat.**"
    )


def divergence_note(runs: list[RunResult]) -> str:
    """A sentence per diverged run: where its loss went non-finite; it has no figures, only the curves
    of the epochs before."""
    notes = [
        f"{key_label(r.key)} on {dataset_label(r.cfg.dataset)} diverged: its {r.divergence['term']} went "
        f"non-finite at epoch {r.divergence['epoch']}, step {r.divergence['step']}, seed "
        f"{r.divergence['seed']}, at learning rate {r.divergence['settings']['lr']:g}"
        for r in runs
        if r.divergence
    ]
    if not notes:
        return ""
    return (
        f" **Diverged: {'; '.join(notes)}.** A diverged run trains all its seeds together, so it has no "
        "figure for any seed; its curves show the epochs before, and every test that needs it is missing."
    )


def train_only_note(manifest: dict[str, Any]) -> str:
    if manifest.get("settings", {}).get("evaluate", True):
        return ""
    return (
        "\n\n**Training only** (`avae reproduce --train-only`): each epoch's test -ELBO is all that was "
        "evaluated (Fig. 7's curves); the same command without `--train-only` adds every figure."
    )


def table1_section(table: Table, datasets: list[str], figdir: Path) -> str:
    lines = [
        "## Table 1: test negative ELBO, ours beside the paper's",
        "",
        "Nats, lower is better; mean ± 95% confidence interval over seeds (t distribution). *Own*: each "
        "model's own objective on the test images, as the paper reports it (for VAE, VAE+eps and AVAE a "
        "lower bound on log p(x); for AVB and AVB-AC a discriminator-based estimate, not a bound). "
        "*Critic*: the discriminator-based figure E[log p(x|z) + the critic's log p(z)/q(z|x)], for AVAE "
        "logit D(x, z) in AVB's form, a plausible source of the paper's AVAE numbers. Paper: its Table 1.",
    ]
    csv_rows = []
    for dataset in datasets:
        latents = [z for z in PAPER_LATENTS if any(k.dataset == dataset and k.latent == z for k in table)]
        header = ["model"] + [f"z={z} {part}" for z in latents for part in ("own", "critic", "paper")]
        rows = []
        for key in table_rows(dataset, 10):
            row = [row_label(key.model, key.reading)]
            for latent in latents:
                run = table.get(key._replace(latent=latent))
                own = run.metric("neg_elbo") if run else None
                critic = run.metric("neg_critic") if run else None
                paper = PAPER_TABLE1.get(dataset, {}).get(key.model, {}).get(latent)
                own_cell = cell(own, run.missing_label if run else "not run")
                row += [own_cell, cell(critic), "-" if paper is None else f"{paper:g}"]
                for name, values in (("own", own), ("critic", critic)):
                    mean, half = stats.mean_ci(values) if values else (float("nan"), float("nan"))
                    csv_rows.append(
                        [dataset, key.model, key.reading, latent, name, len(values or []), mean, half, paper]
                    )
            rows.append(row)
        lines += [
            "",
            f"### {dataset_label(dataset)}{budget_note(table, dataset)}",
            "",
            format_table(header, rows),
        ]
    write_csv(
        figdir / "table1.csv",
        ["dataset", "model", "reading", "latent_dim", "figure", "seeds", "mean", "ci95", "paper"],
        csv_rows,
    )
    return "\n".join([*lines, "", "CSV: [report/table1.csv](report/table1.csv)"])


def budget_note(table: Table, dataset: str) -> str:
    runs = [r for r in table.values() if r.cfg.dataset == dataset]
    run = next((r for r in runs if r.entry("neg_elbo")), runs[0] if runs else None)  # not a diverged one
    if run is None:
        return ""
    points = (run.entry("neg_elbo") or {}).get("points", "?")
    return (
        f" ({len(run.cfg.seeds)} seeds, {run.cfg.epochs} epochs, {run.cfg.train_subset or 60000} "
        f"training images, {points} test images)"
    )


HONEST_FIGURES = (("neg_elbo", "own"), ("neg_critic", "critic"), ("iwae_k1", "IWAE-1"))


def honest_section(table: Table, datasets: list[str], figdir: Path, iwae_key: str, fill: str) -> str:
    iwae_name = iwae_key.replace("iwae_k", "IWAE-")
    lines = [
        "## Honest figures on shared test points",
        "",
        f"Negative {iwae_name} (each model's encoder as the proposal; for AVB and AVB-AC a Gaussian fitted "
        "to its samples) and negative AIS (from the prior, HMC transitions with a step-size schedule fixed "
        "by a pilot run) estimate -log p(x) from above in expectation and mean the same thing for every "
        "model, unlike the paper's figure. Every figure of a table below is averaged over the same test "
        "points (the first N test images), so a row can be read across. Mean ± 95% CI over seeds.",
    ]
    csv_rows, missing = [], []
    for dataset in datasets:
        for key_name, label in ((iwae_key, iwae_name), ("ais", "AIS")):
            points = shared_points(table, dataset, key_name)
            if points is None:
                continue
            figures = [*HONEST_FIGURES, (iwae_key, iwae_name)] + (
                [("ais", "AIS")] if key_name == "ais" else []
            )
            rows = []
            for key in (k for k in table_rows(dataset, 10) if k in table):
                run = table[key]
                values = [run.metric(name, points) for name, _ in figures]
                gap = "diverged" if run.divergence else "-"
                rows.append([row_label(key.model, key.reading), *(cell(v, gap) for v in values)])
                for (name, _), v in zip(figures, values, strict=True):
                    mean, half = stats.mean_ci(v) if v else (float("nan"), float("nan"))
                    csv_rows.append([dataset, key.model, key.reading, points, name, len(v or []), mean, half])
            title = (
                f"### {dataset_label(dataset)}, latent 10: the first {points} test images ({label} points)"
            )
            lines += ["", title, "", format_table(["model", *(f for _, f in figures)], rows)]
        missing += [
            table[k].dir.name
            for k in table_rows(dataset, 10)
            if k in table and not table[k].entry("ais") and not table[k].divergence
        ]
    if any(
        not r.eval.get("metrics", {}).get("neg_elbo", {}).get("is_log_likelihood", True)
        for r in table.values()
    ):
        lines += [
            "",
            "Caution: these runs use a Bernoulli decoder on continuous grey-level pixels (the paper's "
            "setting), which is not a normalised density on [0, 1]^784, so the figures are comparable "
            "between models but are not log-likelihoods.",
        ]
    if missing:
        lines += [
            "",
            f"Not evaluated with AIS: {', '.join(missing)}. {fill}",
        ]
    write_csv(
        figdir / "honest.csv",
        ["dataset", "model", "reading", "points", "metric", "seeds", "mean", "ci95"],
        csv_rows,
    )
    return "\n".join([*lines, "", "CSV: [report/honest.csv](report/honest.csv)"])


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


def grid_section(
    table: Table,
    datasets: list[str],
    figdir: Path,
    title: str,
    note: str,
    models,
    image: Callable,
    prefix: str,
) -> str:
    """A Markdown table of per-run PNG grids (first seed), copied under report/."""
    keys = [(m, r) for m in models for r in MODELS[m].readings]
    lines = [title, "", note, "", "| data set | " + " | ".join(row_label(m, r) for m, r in keys) + " |"]
    lines.append("|---|" + "---|" * len(keys))
    for dataset in datasets:
        cells = []
        for model, reading in keys:
            run = table.get((dataset, model, reading, 10, noise_of(model)))
            name = f"{prefix}_{dataset}_{model}{'_' + reading if reading else ''}.png"
            source = image(run) if run else None
            if source is not None and source.exists():
                atomic_write_bytes(figdir / name, source.read_bytes())
                cells.append(f"![{model}](report/{name})")
            else:
                cells.append(run.missing_label if run and run.divergence else "missing run")
        lines.append(f"| {dataset_label(dataset)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def samples(run: RunResult) -> Path:
    return run.dir / f"samples_seed{run.cfg.seeds[0]}.png"


def recon(run: RunResult) -> Path:
    return run.dir / f"recon_seed{run.cfg.seeds[0]}.png"


ANALYSES = ("active_units", "kl_fitted_gaussian", "mmd", "frechet_distance")


def analysis_section(table: Table, datasets: list[str], figdir: Path, fill: str) -> str:
    rows, csv_rows, references, missing = [], [], {}, []
    for key in sorted(
        table,
        key=lambda k: (datasets.index(k.dataset), k.latent, list(MODELS).index(k.model), k.reading, k.noise),
    ):
        run = table[key]
        if run.divergence:  # nothing to analyse, and nothing a command could fill
            rows.append([dataset_label(key.dataset), key_label(key), run.missing_label, "-", "-", "-"])
            continue
        if not run.analysis:
            missing.append(run.dir.name)
            continue
        if "reference_frechet_distance" in run.analysis:
            references[key.dataset] = (run.analysis["reference_frechet_distance"], run.analysis["classifier"])
        cells = []
        for metric in ANALYSES:
            values = run.analysed(metric)
            cells.append(stats.fmt_ci(values, 1 if metric == "active_units" else 3))
            if values:
                csv_rows.append([*key, metric, len(values), *stats.mean_ci(values)])
        rows.append([dataset_label(key.dataset), key_label(key), f"{cells[0]} of {key.latent}", *cells[1:]])
    lines = [
        "### Aggregate posterior against the prior, active units, sample quality",
        "",
        "Per run, mean ± 95% CI over seeds. *KL fit*: KL(N(m, C) || N(0, I)) for a Gaussian fitted to one "
        "z ~ q(z|x) per test image. *MMD*: unbiased MMD^2 between those z and draws from N(0, I). *Active "
        "units*: Cov_x(E_q[z_u|x]) > 0.01 (Burda et al. 2016). *FD*: Frechet distance between classifier "
        "features of decoder-mean samples and of test images (lower is better).",
        "",
        format_table(["data set", "run", "active units", "KL fit (nats)", "MMD^2", "FD"], rows),
    ]
    for dataset, (reference, info) in references.items():
        lines.append(
            f"\n{dataset_label(dataset)}: FD between training and test images {reference:.3f} (the floor a "
            f"perfect model would reach with this many samples); classifier test accuracy "
            f"{info.get('test_accuracy')}, {info.get('epochs')} epoch(s) on "
            f"{info.get('train_images')} images."
        )
    if missing:
        lines.append(f"\nNot analysed: {', '.join(missing)}. {fill}")
    write_csv(
        figdir / "analysis.csv",
        ["dataset", "model", "reading", "latent_dim", "noise_dim", "metric", "seeds", "mean", "ci95"],
        csv_rows,
    )
    return "\n".join([*lines, "", "CSV: [report/analysis.csv](report/analysis.csv)"])


def runs_section(runs: list[RunResult], manifest: dict[str, Any], index: dict[str, Any]) -> str:
    """The run directories behind every figure, the seconds each part took (index.json, summed over
    sessions) and the sessions that worked on them (reproduce.json: commit, machine, device)."""
    spent = {entry["dir"]: entry.get("seconds", {}) for entry in index.get("runs", {}).values()}
    rows = [
        [
            r.dir.name,
            key_label(r.key),
            dataset_label(r.cfg.dataset),
            ",".join(map(str, r.cfg.seeds)),
            f"{r.trained_epochs}/{r.cfg.epochs}",
            r.cfg.train_subset or 60000,
            r.cfg.test_subset or 10000,
            ", ".join(f"{part} {seconds:.0f}" for part, seconds in spent.get(r.dir.name, {}).items()) or "-",
        ]
        for r in runs
    ]
    header = ["run", "configuration", "data set", "seeds", "epochs", "train images", "test images", "seconds"]
    lines = [
        "## Runs",
        "",
        "Every figure above comes from these run directories.",
        "",
        format_table(header, rows),
    ]
    sessions = manifest.get("sessions", [])
    if sessions:
        keys = ("started", "commit", "machine", "device", "torch", "jobs")
        lines += ["", "Sessions of `avae reproduce` on this directory:", ""]
        lines.append(
            format_table(list(keys), [[str(session.get(k, "-")) for k in keys] for session in sessions])
        )
    return "\n".join(lines)


def fill_command(profile: str | None, out: Path) -> str:
    """The command that fills a report's gaps with the settings and test points of its other rows,
    with the cost model's estimate of its time (DIR is this report's directory)."""
    if profile not in PROFILES:
        return (
            "Fill them with `avae evaluate` / `avae analyse` on each run, with the settings in its eval.json."
        )
    planned = get_profile(profile)
    seconds = sum(
        sum(estimate_run_seconds(run, planned, out, "cpu", measured=False)) for run in runs_for(planned)
    )
    return (
        f"`avae reproduce --profile {profile} --out DIR` fills them with the same settings and test points "
        f"(about {seconds / 60:.0f} min of one CPU core by the cost model; runs without checkpoints retrain)."
    )


def write_report(out: str | Path) -> Path:
    """Write OUT/report.md, with figures and CSV files under OUT/report/, from the run directories:
    a reproduction's report, or a sweep's when OUT holds sweep.json and no reproduce.json."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out} is not a directory; give the --out of `avae reproduce` or `avae sweep`")
    if (out / CONFIG).is_file():
        raise ConfigError(
            f"{out} is a single run, and `avae report` takes a folder of runs (the --out of `avae "
            f"reproduce` or `avae sweep`); for one run, `avae evaluate {out}` computes its figures into "
            "eval.json, and its model card README.md lists them"
        )
    if (out / SWEEP).exists() and not (out / MANIFEST).exists():
        return write_sweep_report(out, read_json(out / SWEEP))
    manifest: dict[str, Any] = read_json(out / MANIFEST) if (out / MANIFEST).exists() else {}
    runs = collect_runs(out)
    if not runs:
        raise ConfigError(f"no trained runs in {out}; run `avae reproduce --out {out}` first")
    table = index_runs(runs)
    present = {k.dataset for k in table}
    datasets = [d for d in DATASET_LABELS if d in present] + sorted(present - set(DATASET_LABELS))
    figdir = out / "report"
    figdir.mkdir(parents=True, exist_ok=True)
    iwae_key = f"iwae_k{manifest.get('settings', {}).get('iwae_k', 1000)}"
    fill = fill_command(manifest.get("profile"), out)
    sections = [
        header_section(runs, datasets, manifest.get("profile", "unknown (no reproduce.json)"))
        + train_only_note(manifest),
        table1_section(table, datasets, figdir),
        honest_section(table, datasets, figdir, iwae_key, fill),
        findings_section(table, datasets, figdir, iwae_key),
        curves_section(table, datasets, figdir, "fig6"),
        curves_section(table, datasets, figdir, "fig7"),
        grid_section(
            table,
            datasets,
            figdir,
            "## Fig. 8: samples from the prior (latent 10, noise 10)",
            "Decoder means for 64 draws z ~ p(z), first seed of each run.",
            ("vae-noise", "avae", "avb"),
            samples,
            "fig8",
        ),
        claims_section(table, datasets, figdir, "ais"),
        "## Beyond the paper",
        grid_section(
            table,
            datasets,
            figdir,
            "### Reconstructions (latent 10)",
            "Pairs of columns: a test image, then its reconstruction (decoder mean of one z ~ q(z|x)); "
            "first seed.",
            tuple(MODELS),
            recon,
            "recon",
        ),
        analysis_section(table, datasets, figdir, fill),
        runs_section(runs, manifest, read_json(out / INDEX) if (out / INDEX).exists() else {}),
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path


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

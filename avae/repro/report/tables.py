"""The report's tables over the finished runs, each also written as a CSV file under report/: Table 1
beside the paper's, the honest figures on shared test points, the analysis of the aggregate posterior,
the image grids of Fig. 8 and the reconstructions, and the run directories behind them all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from avae.core.models import MODELS, row_label
from avae.evaluation import stats
from avae.io import atomic_write_bytes, write_csv
from avae.repro.paper import PAPER_LATENTS, PAPER_TABLE1, RowKey, dataset_label, noise_of, rows_of
from avae.repro.report.claims import key_label
from avae.repro.report.figures import format_table
from avae.repro.results import RunResult, shared_points

Table = dict[RowKey, RunResult]


def table_rows(dataset: str, latent: int) -> list[RowKey]:
    """Every registered model and reading at one latent size, in registry order."""
    return [key for model in MODELS for key in rows_of(dataset, model, latent)]


def latents_of(table: Table, dataset: str) -> list[int]:
    """The latent sizes that `dataset` has runs at: the paper's, in its order, then any others (runs
    of the user's own, trained with another --latent-dim), smallest first."""
    present = {key.latent for key in table if key.dataset == dataset}
    return [z for z in PAPER_LATENTS if z in present] + sorted(present - set(PAPER_LATENTS))


def cell(values: list[float] | None, missing: str = "-") -> str:
    return stats.fmt_ci(values) if values else missing


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
        latents = latents_of(table, dataset)
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
    entry = run.entry("neg_elbo")
    points = entry.points if entry else "?"
    return (
        f" ({len(run.cfg.seeds)} seeds, {run.cfg.epochs} epochs, {run.cfg.train_subset or 60000} "
        f"training images, {points} test images)"
    )


EVALUATE_EACH_RUN = (
    "Fill them with `avae evaluate` / `avae analyse` on each run, with the settings in its eval.json."
)
HONEST_FIGURES = (("neg_elbo", "own"), ("neg_critic", "critic"), ("iwae_k1", "IWAE-1"))


def honest_section(
    table: Table, datasets: list[str], figdir: Path, iwae_key: str, fill: str, latents: tuple[int, ...]
) -> str:
    """IWAE and AIS tables at each of `latents` (those the profile evaluates honestly), and the runs
    there that still lack AIS."""
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
    csv_rows = []
    for dataset in datasets:
        for latent in (z for z in latents_of(table, dataset) if z in latents):
            for key_name in (iwae_key, "ais"):
                text, rows = honest_table(table, dataset, latent, key_name, iwae_key)
                lines += text
                csv_rows += rows
    lacking = [
        key
        for dataset in datasets
        for latent in latents_of(table, dataset)
        for key in table_rows(dataset, latent)
        if key in table and not table[key].entry("ais") and not table[key].divergence
    ]
    planned = [table[k].dir.name for k in lacking if k.latent in latents]
    unplanned = sorted({k.latent for k in lacking if k.latent not in latents})
    if any(
        entry is not None and not entry.is_log_likelihood
        for entry in (r.entry("neg_elbo") for r in table.values())
    ):
        lines += [
            "",
            "Caution: these runs use a Bernoulli decoder on continuous grey-level pixels (the paper's "
            "setting), which is not a normalised density on [0, 1]^784, so the figures are comparable "
            "between models but are not log-likelihoods.",
        ]
    if planned:
        lines += ["", f"Not evaluated with AIS: {', '.join(planned)}. {fill}"]
    if unplanned:
        count = sum(k.latent in unplanned for k in lacking)
        where = f"at latent {' and '.join(map(str, latents))} only" if latents else "at no latent size"
        lines += [
            "",
            f"Not evaluated with AIS, since the profile plans IWAE and AIS {where}: {count} run(s) at latent "
            f"{' and '.join(map(str, unplanned))}. `avae evaluate RUN_DIR --metrics iwae,ais` adds them to "
            "a run (with `--subset` and `--ais-steps` as the runs above were evaluated, to compare).",
        ]
    write_csv(
        figdir / "honest.csv",
        ["dataset", "model", "reading", "latent_dim", "points", "metric", "seeds", "mean", "ci95"],
        csv_rows,
    )
    return "\n".join([*lines, "", "CSV: [report/honest.csv](report/honest.csv)"])


def honest_table(
    table: Table, dataset: str, latent: int, key_name: str, iwae_key: str
) -> tuple[list[str], list[list[Any]]]:
    """The Markdown lines and CSV rows of one honest table: every run of `dataset` at `latent` on the
    test points that all of them have `key_name` (IWAE or AIS) on; nothing if none has it."""
    points = shared_points(table, dataset, key_name, latent)
    if points is None:
        return [], []
    iwae = (iwae_key, iwae_key.replace("iwae_k", "IWAE-"))
    figures = [*HONEST_FIGURES, iwae] + ([("ais", "AIS")] if key_name == "ais" else [])
    rows, csv_rows = [], []
    for key in (k for k in table_rows(dataset, latent) if k in table):
        run = table[key]
        values = [run.metric(name, points) for name, _ in figures]
        gap = "diverged" if run.divergence else "-"
        rows.append([row_label(key.model, key.reading), *(cell(v, gap) for v in values)])
        for (name, _), v in zip(figures, values, strict=True):
            mean, half = stats.mean_ci(v) if v else (float("nan"), float("nan"))
            csv_rows.append([dataset, key.model, key.reading, latent, points, name, len(v or []), mean, half])
    label = "AIS" if key_name == "ais" else iwae[1]
    title = f"### {dataset_label(dataset)}, latent {latent}: the first {points} test images ({label} points)"
    return ["", title, "", format_table(["model", *(f for _, f in figures)], rows)], csv_rows


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
    rows, csv_rows, missing = [], [], []
    spaces: dict[str, dict[tuple, tuple[list[str], dict[str, Any]]]] = {}  # data set -> space -> runs
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
        if run.feature_space is not None:
            of_dataset = spaces.setdefault(key.dataset, {})
            of_dataset.setdefault(run.feature_space, ([], run.analysis))[0].append(key_label(key))
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
    lines += [feature_spaces_note(dataset, groups) for dataset, groups in spaces.items()]
    if missing:
        lines.append(f"\nNot analysed: {', '.join(missing)}. {fill}")
    write_csv(
        figdir / "analysis.csv",
        ["dataset", "model", "reading", "latent_dim", "noise_dim", "metric", "seeds", "mean", "ci95"],
        csv_rows,
    )
    return "\n".join([*lines, "", "CSV: [report/analysis.csv](report/analysis.csv)"])


def floor_text(analysis: dict[str, Any]) -> str:
    info = analysis["classifier"]
    return (
        f"FD between training and test images {analysis['reference_frechet_distance']:.3f} (the floor a "
        f"perfect model would reach with this many samples); classifier test accuracy "
        f"{info.get('test_accuracy')}, {info.get('epochs')} epoch(s) on {info.get('train_images')} images."
    )


def feature_spaces_note(dataset: str, groups: dict[tuple, tuple[list[str], dict[str, Any]]]) -> str:
    """The classifier behind a data set's FDs, or, where its runs were measured with several (each
    output folder trains its own), which runs share each: only their FDs are comparable."""
    label = dataset_label(dataset)
    if len(groups) == 1:
        [(_, analysis)] = groups.values()
        return f"\n{label}: {floor_text(analysis)}"
    lines = [
        f"\n{label}: these FDs were measured with {len(groups)} feature classifiers (one is trained per "
        "output folder, so a run evaluated in another folder used that folder's); FDs are comparable "
        "only between runs that share one, and the claims test no pair across classifiers:",
        "",
    ]
    lines += [f"- {floor_text(analysis)} Runs: {', '.join(runs)}." for runs, analysis in groups.values()]
    return "\n".join(lines)


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

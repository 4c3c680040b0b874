"""`avae report DIR`: report.md, PNG figures and CSV files from the run directories of a
reproduction. It only reads: training, evaluation and analysis are `avae reproduce`'s (or
`avae evaluate` / `avae analyse`'s) work, and the report names the command that fills any gap.
The same run files always give the same report, byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avae.core.models import MODELS
from avae.errors import ConfigError
from avae.io import atomic_write_text, read_json
from avae.repro.costs import estimate_run_seconds
from avae.repro.paper import DATASET_LABELS, dataset_label
from avae.repro.plan import PROFILES, get_profile, runs_for
from avae.repro.report.caveats import convergence_warning, divergence_note
from avae.repro.report.claims import claims_section
from avae.repro.report.curves import curves_section
from avae.repro.report.findings import findings_section
from avae.repro.report.sweep_report import write_sweep_report
from avae.repro.report.tables import (
    EVALUATE_EACH_RUN,
    Table,
    analysis_section,
    grid_section,
    honest_section,
    recon,
    runs_section,
    samples,
    table1_section,
)
from avae.repro.results import INDEX, MANIFEST, SWEEP, RunResult, collect_runs, index_runs
from avae.training.runs import CONFIG


def header_section(runs: list[RunResult], datasets: list[str], profile: str) -> str:
    epochs = sorted({r.cfg.epochs for r in runs})
    images = sorted({r.cfg.train_subset or 60000 for r in runs})
    budget = (
        f"Training budget: {', '.join(map(str, epochs))} epoch(s) on {', '.join(f'{n:,}' for n in images)} "
        f"training images, {len(runs[0].cfg.seeds)} seeds per configuration. The paper trains on all "
        "60,000 images (epochs and number of runs unstated)."
    )
    budget += convergence_warning(runs, "each verdict below that tests one of them") + divergence_note(runs)
    return (
        "# Reproduction report: Variational Autoencoder Model Based on Adversarial Strategy (AVAE)\n\n"
        f"Profile `{profile}`, {len(runs)} runs, data sets: "
        f"{', '.join(dataset_label(d) for d in datasets)}. "
        "Written by `avae report` from the run directories alone.\n\n" + budget
    )


def train_only_note(manifest: dict[str, Any]) -> str:
    if manifest.get("settings", {}).get("evaluate", True):
        return ""
    return (
        "\n\n**Training only** (`avae reproduce --train-only`): each epoch's test -ELBO is all that was "
        "evaluated (Fig. 7's curves); the same command without `--train-only` adds every figure."
    )


def fill_command(profile: str | None, out: Path) -> str:
    """The command that fills a report's gaps with the settings and test points of its other rows,
    with the cost model's estimate of its time (DIR is this report's directory)."""
    if profile not in PROFILES:
        return EVALUATE_EACH_RUN
    planned = get_profile(profile)
    seconds = sum(
        sum(estimate_run_seconds(run, planned, out, "cpu", measured=False)) for run in runs_for(planned)
    )
    return (
        f"`avae reproduce --profile {profile} --out DIR` fills them with the same settings and test points "
        f"(about {seconds / 60:.0f} min of one CPU core by the cost model; runs without checkpoints retrain)."
    )


def honest_latents(manifest: dict[str, Any], table: Table) -> tuple[int, ...]:
    """The latent sizes whose runs the profile evaluates with IWAE and AIS; where reproduce.json
    does not say (a folder of runs of your own), every latent size with runs."""
    said = manifest.get("settings", {}).get("honest_latents")
    return tuple(said) if said is not None else tuple(sorted({key.latent for key in table}))


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
        honest_section(table, datasets, figdir, iwae_key, fill, honest_latents(manifest, table)),
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

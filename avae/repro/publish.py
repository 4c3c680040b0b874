"""`avae publish OUT DEST`: a reproduction's results as they go into a repository: every run's
config.json, metrics.csv, eval.json, analysis.json, model card and first sample and reconstruction
grids (no checkpoints), the manifest and index, the report regenerated from those files alone, and
INDEX.md saying what was run, with which command, on which commit and machine, and how long it took."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from avae.errors import ConfigError
from avae.io import atomic_write_text, read_json
from avae.repro.plan import (
    RunStatus,
    analysis_done,
    eval_steps,
    manifest_profile,
    missing_metrics,
    runs_for,
    status_of,
)
from avae.repro.report.figures import format_table
from avae.repro.report.report import write_report
from avae.repro.results import INDEX, MANIFEST, SWEEP, RunResult, collect_runs
from avae.training.runs import ANALYSIS, CONFIG, DIVERGED, EVAL, METRICS

RUN_FILES = (CONFIG, METRICS, EVAL, ANALYSIS, DIVERGED, "README.md")


def publish(out: str | Path, dest: str | Path) -> Path:
    """Copy the publishable files of reproduction (or sweep) OUT to DEST, write DEST/report.md and
    INDEX.md."""
    out, dest = Path(out), Path(dest)
    runs, pending = finished_runs(out)
    if not runs:
        raise ConfigError(f"no finished runs in {out}; give the --out of `avae reproduce`")
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; publish into a new folder")
    for run in runs:
        target = dest / run.dir.name
        target.mkdir(parents=True)
        seed = run.cfg.seeds[0]
        for name in (*RUN_FILES, f"samples_seed{seed}.png", f"recon_seed{seed}.png"):
            if (run.dir / name).exists():
                shutil.copyfile(run.dir / name, target / name)
    for name in (MANIFEST, INDEX, SWEEP):
        if (out / name).exists():
            shutil.copyfile(out / name, dest / name)
    write_report(dest)
    atomic_write_text(dest / "INDEX.md", index_text(dest, len(runs), pending))
    return dest


def finished_runs(out: Path) -> tuple[list[RunResult], list[str]]:
    """The runs of OUT trained to their last epoch and, where OUT's manifest names a known profile,
    with every planned metric and the analysis; and one line for each run left out (still training,
    evaluating, not started, or no longer planned): a half-trained run is never published as a
    result. A diverged run is an outcome, and is published with its record (runs.DIVERGED); a run
    copied in from published results without weights is published with the figures it has."""
    manifest = read_json(out / MANIFEST) if (out / MANIFEST).exists() else {}
    profile = manifest_profile(manifest)  # None: training complete is the test
    planned = {run.dir_name: run for run in runs_for(profile)} if profile else {}
    done, pending = [], []
    for run in collect_runs(out):
        plan = planned.pop(run.dir.name, None)
        if profile and plan is None:
            pending.append(f"{run.dir.name}: planned by an earlier version, not by profile {profile.name}")
        elif run.divergence:
            done.append(run)
        elif run.trained_epochs < run.cfg.epochs:
            pending.append(f"{run.dir.name}: trained {run.trained_epochs} of {run.cfg.epochs} epochs")
        elif plan and status_of(plan, profile, out)[0] == RunStatus.PUBLISHED:
            done.append(run)  # copied from published results without weights: its figures as they are
        elif plan and (
            missing_metrics(run.dir, run.cfg, eval_steps(plan, profile))
            or (profile.evaluate and not analysis_done(run.dir, run.cfg))
        ):
            pending.append(f"{run.dir.name}: trained, evaluation unfinished")
        else:
            done.append(run)
    pending += [f"{name}: no finished epoch yet" for name in planned]
    return done, pending


def index_text(dest: Path, count: int, pending: list[str] | None = None) -> str:
    """What was run, how (the command, per session: commit, machine, device) and how long it took."""
    manifest: dict[str, Any] = read_json(dest / MANIFEST) if (dest / MANIFEST).exists() else {}
    index: dict[str, Any] = read_json(dest / INDEX) if (dest / INDEX).exists() else {}
    profile = manifest.get("profile", "unknown")
    totals: dict[str, float] = {}
    for entry in index.get("runs", {}).values():
        for part, seconds in entry.get("seconds", {}).items():
            kind = "train" if part == "train" else ("analysis" if part == "analysis" else "evaluation")
            totals[kind] = totals.get(kind, 0.0) + seconds
    keys = ("started", "commit", "machine", "device", "torch", "jobs")
    sessions = manifest.get("sessions", [])
    lines = [
        f"# Results of `avae reproduce --profile {profile}`",
        "",
        f"{count} runs; each folder holds config.json (settings, versions, data checksums), metrics.csv, "
        "eval.json, analysis.json, a model card and the first seed's sample and reconstruction grids; "
        "no checkpoints. `avae report DIR` regenerates report.md from them.",
        "",
        f"Command: `avae reproduce --profile {profile} --out DIR`, then `avae report DIR`.",
        "",
        "Compute time, summed over runs and sessions (seconds of one process): "
        + (", ".join(f"{kind} {seconds:.0f}" for kind, seconds in sorted(totals.items())) or "not recorded")
        + ".",
    ]
    if sessions:
        rows = [[str(session.get(k, "-")) for k in keys] for session in sessions]
        lines += ["", "Sessions:", "", format_table(list(keys), rows)]
    diverged = sorted(path.parent.name for path in dest.glob(f"*/{DIVERGED}"))
    if diverged:
        lines += [
            "",
            f"Diverged: {len(diverged)} run(s), published with their {DIVERGED} (where the loss went "
            "non-finite), metrics.csv up to the epoch before and no figures:",
            "",
            *(f"- {name}" for name in diverged),
        ]
    if pending:
        lines += [
            "",
            f"Not in this folder: {len(pending)} planned run(s) that had not finished when it was "
            "published (the report shows them as not run):",
            "",
            *(f"- {line}" for line in pending),
        ]
    return "\n".join(lines) + "\n"

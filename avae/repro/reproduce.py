"""`avae reproduce`: train, evaluate and analyse whatever a profile's runs still need.

All seeds of one configuration train as one batched model; `jobs` > 1 runs independent
configurations in parallel processes. Each process records its run in `OUT/index.json` under a
file lock; the report reads the run directories themselves, so the index is a convenience only.

Two executors run the planned runs (`avae.repro.runner`): "local" (the default: this process, or `jobs`
worker processes) and "ray" (one Ray task per configuration, on a local Ray cluster or on the one at
`address`; Ray is the optional extra `avae[ray]`). Both run the same `execute_run`, which writes
everything a finished run is into its own run directory, so the same reuse and resume rules hold.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from avae.errors import AvaeError, ConfigError
from avae.io import atomic_write_text, check_writable_dir, read_json, write_json
from avae.repro.costs import estimate_run_seconds, eval_parts_left, host_seconds, plan_seconds, runs_at_once
from avae.repro.execute import Task
from avae.repro.plan import (
    PlannedRun,
    Profile,
    RunStatus,
    eval_steps,
    missing_metrics,
    pack_members,
    pick_runs,
    runs_for,
    select,
    status_of,
)
from avae.repro.probe import Probe
from avae.repro.progress import PlanProgress, WorkWatch, clock
from avae.repro.ray_cluster import check_executor, ray_cluster
from avae.repro.report.figures import format_table
from avae.repro.results import MANIFEST
from avae.repro.runner import default_jobs, run_tasks, train_in_packs, worker_runtime
from avae.training.config import Runtime
from avae.training.runs import divergence_label, read_divergence


def previous_sessions(out: Path) -> list[dict[str, Any]]:
    path = out / MANIFEST
    return read_json(path).get("sessions", []) if path.exists() else []


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def provenance(runtime: Runtime, jobs: int) -> dict[str, Any]:
    """What a reproduction ran on: the commit of this checkout (if it is one), machine, device."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    device = torch.cuda.get_device_name() if runtime.device.startswith("cuda") else cpu_name()
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit or "unknown (not a git checkout)",
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "device": f"{runtime.device}: {device or 'unknown'}",
        "torch": torch.__version__,
        "jobs": jobs,
    }


def dry_run_table(
    runs: list[PlannedRun], profile: Profile, out: Path, parts: dict[str, tuple[float, float]]
) -> str:
    """The --dry-run table of the runs with their estimated (training, evaluation) seconds `parts`."""
    rows = []
    for run in runs:
        status, epoch = status_of(run, profile, out)
        train_s, eval_s = parts[run.key]
        rows.append(
            [
                run.dir_name,
                ",".join(run.experiments),
                len(run.cfg.seeds),
                run.cfg.epochs,
                status_label(status, epoch, out / run.dir_name),
                ",".join(step.key for step in eval_steps(run, profile)),
                f"{train_s:.0f}",
                f"{eval_s:.0f}",
            ]
        )
    header = ["run", "experiments", "seeds", "epochs", "status", "metrics", "train s (est.)", "eval s (est.)"]
    return format_table(header, rows)


def status_label(status: RunStatus, epoch: int, run_dir: Path) -> str:
    if status == RunStatus.RESUME:
        return f"resume ({epoch} done)"
    if status == RunStatus.DIVERGED:
        return divergence_label(read_divergence(run_dir) or {"epoch": "?", "seed": "?"})
    if status == RunStatus.PUBLISHED:
        return "published, without weights (figures as they are)"
    return status


def diverged_note(runs: list[PlannedRun], out: Path) -> str:
    """One line per planned run that diverged earlier and is left alone, with how to go on."""
    lines = []
    for run in runs:
        record = read_divergence(out / run.dir_name)
        if record is not None:
            lines.append(
                f"avae reproduce: {run.dir_name} diverged earlier ({record['term']} non-finite at epoch "
                f"{record['epoch']}, step {record['step']}, seed {record['seed']}) and is not retried (the "
                f"same settings diverge again); the report shows it as diverged. To go on with it instead: "
                f"`avae train --resume --out {out / run.dir_name} --lr LOWER` (and --disc-lr / --adv-lr)."
            )
    return "\n".join(lines)


def published_note(runs: list[PlannedRun], profile: Profile, out: Path, status: dict[str, RunStatus]) -> str:
    """One line for the runs copied from published results without weights that lack a planned
    figure: they are reported as they are; only retraining adds the figure."""
    published = [run for run in runs if status[run.key] == RunStatus.PUBLISHED]
    if not published:
        return ""
    missing = set()
    for run in published:
        steps = missing_metrics(out / run.dir_name, run.cfg, eval_steps(run, profile))
        missing |= {step.key for step in steps}
    return (
        f"avae reproduce: {len(published)} runs were published without weights and lack "
        f"{', '.join(sorted(missing)) or 'their analysis'}; they are reported as they are (only "
        "retraining them, into another --out, could add it)"
    )


def reproduce(
    profile: str | Profile,
    out: str | Path,
    *,
    runtime: Runtime | None = None,
    jobs: int | None = None,
    dry_run: bool = False,
    tensorboard: bool = False,
    executor: str = "local",
    address: str | None = None,
    experiments: Sequence[str] = (),
    train_only: bool = False,
    run_names: Sequence[str] = (),
    pack: bool = False,
) -> list[dict[str, Any]]:
    """Train, evaluate and analyse every run of the profile that is not finished; only the runs of
    `experiments` (default all the profile's), and with `train_only` only their training. With
    `run_names`, only those runs, in that order (whole directory names or a unique start of one).

    `executor` "local" runs them here (`jobs` processes); "ray" runs each as one Ray task, on a
    local Ray cluster of `jobs` task slots or on the cluster at `address`, and then `out` must be
    a directory every node of the cluster reaches at the same path.

    `pack` trains the runs that can train together (same settings but for the data set and the
    latent and noise dimensions, which pad) as packs, one model each (`avae.training.packs`), and
    then evaluates such trained runs of equal sizes as evaluation packs
    (`avae.evaluation.packs.evaluate_pack`, each run's eval.json as it would be alone),
    before the runs' analyses and whatever else they need. It is off unless asked
    for: on a CPU a pack measured about 5% cheaper per member-step than its runs apart (within the
    noise; benchmarks/BENCH.md), and on a GPU, where more members per graph is where the speed is,
    packs have not been run or measured yet."""
    profile = select(profile, experiments, train_only)
    runtime = runtime or Runtime()
    jobs = default_jobs(runtime.device) if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
    if pack and executor != "local":
        raise ConfigError("--pack trains its packs in this process: use it with --executor local")
    if pack and tensorboard:
        raise ConfigError("--pack trains without --tensorboard (a pack logs no per-epoch callback)")
    check_executor(executor, address, runtime.device, need_ray=False)
    out = Path(out).resolve() if executor == "ray" else Path(out)  # the same path on every node
    planned = runs_for(profile)  # the manifest lists them all: --runs chooses what runs now, not the plan
    runs = pick_runs(planned, run_names) if run_names else planned
    status = {run.key: status_of(run, profile, out)[0] for run in runs}  # each reads a checkpoint: once
    packed = pack_members(runs, out) if pack else {}  # each packed run's pack, in members
    if note := published_note(runs, profile, out, status):
        print(note, file=sys.stderr, flush=True)
    if not dry_run:  # before any run is timed or anything is written
        check_executor(executor, address, runtime.device)
        check_writable_dir(out)  # an --out that is a file, or that this user may not write in
    # Steps are timed on this machine: not for a Ray cluster elsewhere, whose nodes may differ.
    probe = None if executor == "ray" and address else Probe(worker_runtime(runtime, jobs, executor).threads)
    parts = {
        run.key: estimate_run_seconds(
            run, profile, out, runtime.device, pack=packed.get(run.key, 0), probe=probe
        )
        for run in runs
    }
    timed = probe.said() if probe else ""  # what the estimate timed on this machine
    estimates = {key: sum(part) for key, part in parts.items()}
    total = sum(estimates.values())
    host = host_seconds((train for train, _ in parts.values()), runtime.device)
    longest = max(estimates.values(), default=0.0)
    left = sum(1 for seconds in estimates.values() if seconds)  # runs with work left: only they take a worker
    if dry_run:
        parallel = max(1, min(jobs, os.cpu_count() or 1, left))
        wall = plan_seconds(total, parallel, profile, out, runtime.device, executor, jobs, host, longest)
        print(dry_run_table(runs, profile, out, parts))
        print(
            f"\n{len(runs)} runs of profile {profile.name!r} on {runtime.device}: about {clock(total)} of "
            f"compute in all (estimate{timed}), about {clock(wall)} with --jobs {jobs}"
        )
        if runtime.device.startswith("cuda") and not torch.cuda.is_available():
            print(
                f"note: this machine has no CUDA device; the estimate is for {runtime.device} on another "
                "machine, from the cost model and runs measured on CUDA, not from this machine",
                file=sys.stderr,
            )
        return []
    parallel = max(1, min(jobs, left))
    wall = plan_seconds(total, parallel, profile, out, runtime.device, executor, jobs, host, longest)
    print(
        f"avae reproduce: profile {profile.name!r}, {len(runs)} runs, {left} with work left; about "
        f"{clock(wall)} on {runtime.device} with --jobs {jobs} "
        f"(estimate from the cost model{timed}; --dry-run lists every run)",
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / MANIFEST,
        {
            "profile": profile.name,
            "settings": json.loads(json.dumps(asdict(profile))),
            "runs": [{"key": r.key, "dir": r.dir_name, "experiments": r.experiments} for r in planned],
            "sessions": [*previous_sessions(out), provenance(runtime, jobs)],
        },
    )
    worker = worker_runtime(runtime, jobs, executor)
    if note := diverged_note(runs, out):
        print(note, file=sys.stderr, flush=True)
    left_alone = (RunStatus.DIVERGED, RunStatus.PUBLISHED)
    tasks = [
        Task(run, profile, out, worker, tensorboard) for run in runs if status[run.key] not in left_alone
    ]
    eval_parts = {
        task.run.key: eval_parts_left(task.run, profile, out, runtime.device, probe) for task in tasks
    }
    with (
        ray_cluster(executor, address, jobs, worker) as cluster,
        PlanProgress(
            {task.run.key: estimates[task.run.key] for task in tasks},
            cluster.slots() if cluster else runs_at_once(total, host, parallel, runtime.device, executor),
            enabled=runtime.progress,
            watch=WorkWatch.of_tasks(tasks, parts, eval_parts),
        ) as progress,
    ):
        packs = train_in_packs(tasks, progress, replace(worker, threads=runtime.threads)) if pack else None
        results, failures = run_tasks(packs.tasks if packs else tasks, jobs, progress, cluster)
    if packs is not None:
        failures = [*packs.failures, *failures]
    atomic_write_text(out / "reproduce.log", "\n".join(json.dumps(r) for r in results) + "\n")
    if failures:
        raise AvaeError(
            f"{len(failures)} of {len(tasks)} runs failed ({'; '.join(failures)}); the others are "
            f"finished: fix the cause, rerun the same command (only those run), then `avae report {out}`"
        )
    trained = f"\n{len(runs)} runs ({sum(r['trained'] for r in results)} trained); "
    if profile.evaluate:
        print(f"{trained}write the report with `avae report {out}`")
    else:
        print(f"{trained}training only: the same command without --train-only evaluates them")
    return results

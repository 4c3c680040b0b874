"""How many planned runs are executed (`run_tasks`): here, one after another; in worker processes
(`run_in_pool`, which survives a worker's death); or as Ray tasks on a `RayCluster`; and how many at
a time, with how many threads each. `avae reproduce` and `avae sweep` plan the runs; each run is
`avae.repro.execute.execute_run`, with the same reuse and resume rules for every executor."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from avae.errors import AvaeError, ConfigError
from avae.evaluation.packs import evaluate_pack
from avae.repro.execute import PartClock, Task, execute_run, locked_update_index, summary_entry
from avae.repro.plan import EvalStep, PlannedRun, missing_metrics, packs_of
from avae.repro.progress import Outcomes, PlanProgress
from avae.repro.ray_cluster import RayCluster
from avae.training.config import Runtime
from avae.training.packs import SAME_SIZES, PackEntry, pack_key, train_pack
from avae.training.runs import read_divergence, trained_epoch
from avae.watchdog import reap_on_death


def worker_runtime(runtime: Runtime, jobs: int, executor: str = "local") -> Runtime:
    """How each planned run runs. The plan's bar replaces the per-run bars. Local worker processes
    use --threads torch threads each, or else share the cores (cores / jobs each); a Ray task uses
    the CPUs it declares (--threads, at least 1) and the GPU Ray gives it ("cuda"), and reads the
    data directory by an absolute path."""
    if executor == "ray":
        return replace(
            runtime,
            progress=False,
            threads=max(1, runtime.threads),
            device="cuda" if runtime.device.startswith("cuda") else runtime.device,
            data_dir=str(Path(runtime.data_dir).resolve()) if runtime.data_dir else None,
        )
    shared = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    return replace(runtime, progress=False, threads=runtime.threads or shared)


GPU_MEMORY_PER_JOB = 2 << 30  # bytes a configuration's process may take on a GPU (context and all)


def default_jobs(device: str) -> int:
    """Configurations at a time when --jobs is not given: 1 on a CPU (each process uses every core);
    on CUDA, as many processes as CPU cores and free GPU memory allow (a graphed step is short, so
    several processes keep one GPU busy; 8 on an H200 ran the quick profile in 93 s)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return 1
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return max(1, min(os.cpu_count() or 1, free // GPU_MEMORY_PER_JOB, 16))


def run_tasks(
    tasks: list[Task], jobs: int, progress: PlanProgress, cluster: RayCluster | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every task, in this process, in `jobs` worker processes or, given a cluster, as Ray
    tasks; each is announced as it finishes, and a failed run (e.g. diverged) does not stop the
    others. Returns (results, one line per failed run)."""
    outcomes = Outcomes(len(tasks), progress)
    if cluster is not None:
        progress.started(f"{len(tasks)} runs queued on the Ray cluster")
        cluster.run(tasks, outcomes)
    elif jobs == 1:
        for task in tasks:
            progress.started(task.run.dir_name)
            outcomes.record(task, lambda task=task: execute_run(task))
    else:
        progress.started(f"{jobs} runs at a time")
        with reap_on_death():
            run_in_pool(tasks, jobs, progress, outcomes)
    return outcomes.results, outcomes.failures


def run_in_pool(
    tasks: list[Task], jobs: int, progress: PlanProgress, outcomes: Outcomes, function=None
) -> None:
    """Run the tasks in `jobs` worker processes. A worker that dies (killed, out of memory) breaks
    the pool: the runs not finished go to a fresh pool, where they resume from their checkpoints. If
    that pool breaks too, each run left gets a process of its own, so that only the run whose
    process dies is recorded as failed. (`function`: what a worker calls, `execute_run` but in
    tests.)"""
    function = function or execute_run
    left = pool_round(tasks, jobs, function, outcomes)
    if left:
        progress.started(f"a worker process died; {len(left)} unfinished runs go to a fresh pool")
        left = pool_round(left, jobs, function, outcomes)
    for task in left:
        progress.started(f"a worker process died again; {task.run.dir_name} runs alone")
        if pool_round([task], 1, function, outcomes):
            outcomes.record(task, raise_died)


def pool_round(left: list[Task], jobs: int, function, outcomes: Outcomes) -> list[Task]:
    """One process pool over the tasks; returns those its broken pool did not finish."""
    broken: list[Task] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(function, task): task for task in left}
        for future in as_completed(futures):
            if isinstance(future.exception(), BrokenProcessPool):
                broken.append(futures[future])
            else:
                outcomes.record(futures[future], future.result)
    return broken


def raise_died() -> None:
    raise AvaeError(
        "its worker process died, also when it ran alone (killed, or out of memory?); the run keeps "
        "its last checkpoint: rerun the same command to resume it"
    )


@dataclass
class PackRound:
    """What `train_in_packs` leaves: the tasks still to run (`run_tasks`: a packed run's analysis,
    marked `packed`, and every other run) and one line per run that diverged in its pack."""

    tasks: list[Task]
    failures: list[str] = field(default_factory=list)


def train_in_packs(tasks: list[Task], progress: PlanProgress, runtime: Runtime) -> PackRound:
    """Train the tasks' runs that can train together (`avae.repro.plan.packs_of`) as packs
    (`avae.training.packs`), one pack after another in this process with `runtime`, then evaluate
    the trained runs that could pack as evaluation packs (`evaluation_packs`, `evaluate_in_packs`);
    each run is then left with what is still missing (its analysis) alone. A run that diverges in
    its pack is recorded as diverged, as an unpacked run would be, and fails; a pack that cannot
    start (another process trains one of its runs) leaves its runs to train alone. Each run's
    index.json entry is charged its members' share of the pack's training seconds as they are
    spent (`PartClock`), so a session stopped in the middle of a pack keeps them."""
    by_key = {task.run.key: task for task in tasks}
    out = tasks[0].out if tasks else Path()
    done = PackRound([])
    for group in packs_of([task.run for task in tasks], out):
        members = sum(len(run.cfg.seeds) for run in group)
        progress.started(f"a pack of {len(group)} runs, {members} members: {group[0].dir_name}, ...")
        entries = [PackEntry(run.cfg, out / run.dir_name) for run in group]
        clock = PartClock(functools.partial(charge_by_members, group, out))
        try:
            outcomes = train_pack(entries, resume=True, runtime=runtime, on_epoch=clock.on_epoch())
        except ConfigError as error:
            progress.started(f"a pack could not start ({error}); its runs train alone")
            continue
        clock.charge("train")
        for run, outcome in zip(group, outcomes, strict=True):
            if outcome.diverged is None:
                by_key[run.key] = replace(by_key[run.key], packed=True)
                continue
            del by_key[run.key]
            done.failures.append(f"{run.dir_name}: {outcome.diverged}")
            progress.finished(run.key, f"avae: run failed: {done.failures[-1]}")
    for tasks_of_pack in evaluation_packs(list(by_key.values())):
        evaluate_in_packs(tasks_of_pack, progress, runtime)
    done.tasks = list(by_key.values())
    return done


def charge_by_members(runs: list[PlannedRun], out: Path, part: str, seconds: float) -> None:
    """Charge `seconds` spent on `part` of a pack of `runs` to each run's index.json entry, shared by
    members among the runs still in the pack (one that diverged in it is charged no more)."""
    runs = [run for run in runs if read_divergence(out / run.dir_name) is None] or runs
    members = sum(len(run.cfg.seeds) for run in runs)
    for run in runs:
        share = {part: seconds * len(run.cfg.seeds) / members}
        locked_update_index(out, run.key, summary_entry(out / run.dir_name, run.cfg), share)


def evaluation_packs(tasks: list[Task]) -> list[list[Task]]:
    """The tasks whose runs are trained (to their epochs, not diverged) and could form an
    evaluation pack (`avae.training.packs.pack_key` of `SAME_SIZES`: evaluation does not pad), in
    groups of two or more: those just trained as a pack, and those a reproduction interrupted after
    their training, so that their evaluation is packed too."""
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        run_dir = task.out / task.run.dir_name
        if trained_epoch(run_dir) >= task.run.cfg.epochs and read_divergence(run_dir) is None:
            groups.setdefault(pack_key(task.run.cfg, SAME_SIZES), []).append(task)
    return [group for group in groups.values() if len(group) > 1]


def evaluate_in_packs(tasks: list[Task], progress: PlanProgress, runtime: Runtime) -> None:
    """The figures that the runs of one trained pack still lack, each computed for every run that
    lacks it by one evaluation pack (`avae.evaluation.packs.evaluate_pack`: one model, one call;
    each run's eval.json as `evaluate_run` writes it). A figure one run alone lacks, and any that an
    evaluation pack could not compute, are left to the run's own task (`execute_run` evaluates what
    eval.json still lacks, so nothing is evaluated twice). Each run's index.json entry is charged
    its members' share of the seconds."""
    steps: dict[str, tuple[EvalStep, list[Task]]] = {}
    for task in tasks:
        run_dir = task.out / task.run.dir_name
        for step in missing_metrics(run_dir, task.run.cfg, task.eval_plan()):
            same = json.dumps([step.key, step.family, step.settings], sort_keys=True, default=list)
            steps.setdefault(same, (step, []))[1].append(task)
    for step, group in steps.values():
        if len(group) < 2:
            continue
        dirs = [task.out / task.run.dir_name for task in group]
        progress.started(f"{step.key} of {len(group)} packed runs as one model: {dirs[0].name}, ...")
        started = time.perf_counter()
        try:
            evaluate_pack(dirs, metrics=(step.family,), settings=step.settings, runtime=runtime)
        except (AvaeError, RuntimeError) as error:  # RuntimeError: out of memory, say
            progress.started(
                f"{step.key} could not be evaluated as a pack ({error}); its runs evaluate alone"
            )
            continue
        charge_by_members([task.run for task in group], group[0].out, step.key, time.perf_counter() - started)

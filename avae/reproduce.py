"""`avae reproduce`: train, evaluate and analyse whatever a profile's runs still need.

All seeds of one configuration train as one batched model; `jobs` > 1 runs independent
configurations in parallel processes. Each process records its run in `OUT/index.json` under a
file lock; the report reads the run directories themselves, so the index is a convenience only.

Two executors run the planned runs: "local" (the default: this process, or `jobs` worker processes)
and "ray" (one Ray task per configuration, on a local Ray cluster or on the one at `address`; Ray
is the optional extra `avae[ray]`). Both run the same `execute_run`, which writes everything a
finished run is into its own run directory, so the same reuse and resume rules hold for both.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from avae.analysis import analyse_run, classifier_path, ensure_classifier
from avae.config import Runtime, TrainConfig, config_hash
from avae.errors import AvaeError, ConfigError
from avae.evaluate import evaluate_run
from avae.figures import format_table, image_grid
from avae.io import atomic_write_text, file_lock, read_json, write_json
from avae.nets import MemberRandom
from avae.plan import (
    EvalStep,
    PlannedRun,
    Profile,
    analysis_done,
    estimate_run_seconds,
    eval_steps,
    get_profile,
    missing_metrics,
    runs_for,
    status_of,
)
from avae.results import INDEX, MANIFEST
from avae.runs import EVAL, checkpoint_epoch, read_config
from avae.train import train

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'avae[ray]'"


@dataclass
class Task:
    """One planned run for a worker process, with how to run it.

    With a profile, the run gets the profile's evaluation plan and analysis (`avae reproduce`).
    Without one (`avae sweep`), it gets `steps` and no analysis."""

    run: PlannedRun
    profile: Profile | None
    out: Path
    runtime: Runtime
    tensorboard: bool = False
    steps: list[EvalStep] | None = None  # the evaluation plan; None: the profile's

    def eval_plan(self) -> list[EvalStep]:
        """The metrics this run must have in eval.json, as (key, family, settings)."""
        if self.steps is not None:
            return self.steps
        if self.profile is None:
            raise ConfigError("a task needs a profile or evaluation steps")
        return eval_steps(self.run, self.profile)


def locked_update_index(
    out: Path, key: str, entry: dict[str, Any], seconds: dict[str, float] | None = None
) -> None:
    """Merge one run's summary into OUT/index.json, under an exclusive lock on OUT/.index.lock; the
    seconds of each part are added to what earlier sessions recorded."""
    with file_lock(out / ".index.lock"):
        path = out / INDEX
        index = read_json(path) if path.exists() else {"runs": {}}
        before = index.setdefault("runs", {}).get(key, {}).get("seconds", {})
        spent = {
            part: round(before.get(part, 0.0) + (seconds or {}).get(part, 0.0), 1)
            for part in {*before, *(seconds or {})}
        }
        index["runs"][key] = {**entry, "seconds": dict(sorted(spent.items()))}
        write_json(path, index)


def rebuild_index(out: str | Path) -> dict[str, Any]:
    """index.json from the run directories alone (if the index was lost or is stale)."""
    out = Path(out)
    index: dict[str, Any] = {"runs": {}}
    for config in sorted(out.glob("*/config.json")):
        cfg = read_config(config.parent)
        index["runs"][config_hash(cfg)] = summary_entry(config.parent, cfg)
    write_json(out / INDEX, index)
    return index


def summary_entry(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    record = read_json(run_dir / EVAL) if (run_dir / EVAL).exists() else {}
    return {
        "dir": run_dir.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "latent_dim": cfg.model.latent_dim,
        "noise_dim": cfg.model.noise_dim,
        "seeds": list(cfg.seeds),
        "epochs": cfg.epochs,
        "trained_epochs": checkpoint_epoch(run_dir),
        "metrics": {k: {"mean": v["mean"], "sem": v["sem"]} for k, v in record.get("metrics", {}).items()},
    }


def execute_run(task: Task) -> dict[str, Any]:
    """Train (or resume), evaluate and analyse one planned run; index.json accumulates the seconds
    each part took, over every session that worked on the run."""
    cfg, run_dir, runtime = task.run.cfg, task.out / task.run.dir_name, task.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    started, seconds = time.perf_counter(), {}
    trained = checkpoint_epoch(run_dir) < cfg.epochs
    if trained:
        callback = tensorboard_callback(run_dir, cfg) if task.tensorboard else None
        train(cfg, run_dir, resume=True, runtime=runtime, on_epoch=callback)
        seconds["train"] = time.perf_counter() - started
    evaluated = []
    for key, family, settings in missing_metrics(run_dir, cfg, task.eval_plan()):
        part = time.perf_counter()
        evaluate_run(run_dir, metrics=(family,), settings=settings, runtime=runtime)
        evaluated.append(key)
        seconds[key] = time.perf_counter() - part
    if task.profile is not None and not analysis_done(run_dir, cfg):
        part = time.perf_counter()
        analyse_run(
            run_dir,
            classifier=classifier_path(task.out, cfg.dataset),
            samples=task.profile.analysis_samples,
            runtime=runtime,
        )
        evaluated.append("analysis")
        seconds["analysis"] = time.perf_counter() - part
    locked_update_index(task.out, task.run.key, summary_entry(run_dir, cfg), seconds)
    return {
        "dir": task.run.dir_name,
        "trained": trained,
        "evaluated": evaluated,
        "seconds": round(time.perf_counter() - started, 1),
    }


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


def tensorboard_callback(run_dir: Path, cfg: TrainConfig):
    """An on_epoch callback writing training scalars and sample grids for TensorBoard, or None
    (with a message) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional extra: imported only when asked for
    except ImportError:
        print(
            "avae: --tensorboard needs the tensorboard package: pip install 'avae[tensorboard]'; "
            "training without it",
            file=sys.stderr,
        )
        return None
    writer = SummaryWriter(str(run_dir / "tensorboard"))

    def on_epoch(epoch: int, rows: list[dict[str, Any]], model) -> None:
        for row in rows:
            for key, value in row.items():
                if key.startswith(("train_", "test_")) and isinstance(value, (int, float)):
                    writer.add_scalar(f"seed{row['seed']}/{key}", value, epoch)
        device = next(model.parameters()).device
        with torch.no_grad():
            samples = model.sample(64, MemberRandom(cfg.seeds, "samples", device)).float().cpu().numpy()
        for member, seed in enumerate(cfg.seeds):
            writer.add_image(
                f"seed{seed}/samples", image_grid(samples[member].clip(0, 1)), epoch, dataformats="HW"
            )
        writer.flush()

    return on_epoch


def dry_run_table(profile: Profile, out: Path, device: str) -> tuple[str, float]:
    rows, total = [], 0.0
    for run in runs_for(profile):
        status, epoch = status_of(run, profile, out)
        train_s, eval_s = estimate_run_seconds(run, profile, out, device)
        total += train_s + eval_s
        rows.append(
            [
                run.dir_name,
                ",".join(run.experiments),
                len(run.cfg.seeds),
                run.cfg.epochs,
                f"{status} ({epoch} done)" if status == "resume" else status,
                ",".join(k for k, _, _ in eval_steps(run, profile)),
                f"{train_s:.0f}",
                f"{eval_s:.0f}",
            ]
        )
    header = ["run", "experiments", "seeds", "epochs", "status", "metrics", "train s (est.)", "eval s (est.)"]
    return format_table(header, rows), total


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
) -> list[dict[str, Any]]:
    """Train, evaluate and analyse every run of the profile that is not finished.

    `executor` "local" runs them here (`jobs` processes); "ray" runs each as one Ray task, on a
    local Ray cluster of `jobs` task slots or on the cluster at `address`, and then `out` must be
    a directory every node of the cluster reaches at the same path."""
    profile = get_profile(profile)
    runtime = runtime or Runtime()
    jobs = default_jobs(runtime.device) if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
    check_executor(executor, address, runtime.device, need_ray=False)
    out = Path(out).resolve() if executor == "ray" else Path(out)  # the same path on every node
    runs = runs_for(profile)
    if dry_run:
        table, total = dry_run_table(profile, out, runtime.device)
        print(table)
        print(
            f"\n{len(runs)} runs of profile {profile.name!r} on {runtime.device}: about {total / 60:.1f} min "
            f"of compute in all (estimate), about {total / 60 / min(jobs, os.cpu_count() or 1):.1f} min "
            f"with --jobs {jobs}"
        )
        return []
    check_executor(executor, address, runtime.device)  # before anything is written
    estimates = {run.key: sum(estimate_run_seconds(run, profile, out, runtime.device)) for run in runs}
    parallel = max(1, min(jobs, len(runs)))
    left = sum(1 for seconds in estimates.values() if seconds)
    print(
        f"avae reproduce: profile {profile.name!r}, {len(runs)} runs, {left} with work left; about "
        f"{clock(sum(estimates.values()) / parallel)} on {runtime.device} with --jobs {jobs} "
        "(estimate from the cost model; --dry-run lists every run)",
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / MANIFEST,
        {
            "profile": profile.name,
            "settings": json.loads(json.dumps(asdict(profile))),
            "runs": [{"key": r.key, "dir": r.dir_name, "experiments": r.experiments} for r in runs],
            "sessions": [*previous_sessions(out), provenance(runtime, jobs)],
        },
    )
    worker = worker_runtime(runtime, jobs, executor)
    tasks = [Task(run, profile, out, worker, tensorboard) for run in runs]
    with (
        ray_cluster(executor, address, jobs, worker) as cluster,
        PlanProgress(
            estimates, cluster.slots() if cluster else parallel, enabled=runtime.progress
        ) as progress,
    ):
        for dataset in profile.datasets:  # once per data set, before the workers need it
            progress.started(f"the feature classifier for {dataset} (trained once, cached)")
            classifier = (classifier_path(out, dataset), dataset, profile.classifier_epochs)
            if cluster is None:
                prepare_classifier(*classifier, profile.classifier_subset, runtime)
            else:  # on a worker: the driver may have no GPU, or another file system view
                cluster.call(prepare_classifier, *classifier, profile.classifier_subset, worker)
        results, failures = run_tasks(tasks, jobs, progress, cluster)
    atomic_write_text(out / "reproduce.log", "\n".join(json.dumps(r) for r in results) + "\n")
    if failures:
        raise AvaeError(
            f"{len(failures)} of {len(tasks)} runs failed ({'; '.join(failures)}); the others are "
            f"finished: fix the cause, rerun the same command (only those run), then `avae report {out}`"
        )
    print(
        f"\n{len(runs)} runs ({sum(r['trained'] for r in results)} trained); "
        f"write the report with `avae report {out}`"
    )
    return results


def prepare_classifier(path: Path, dataset: str, epochs: int, subset: int, runtime: Runtime) -> None:
    """Train and cache the feature classifier of `dataset` at `path` unless it is there (a Ray task
    returns nothing, so that no network travels back to the driver)."""
    ensure_classifier(path, dataset, epochs=epochs, subset=subset, runtime=runtime)


def worker_runtime(runtime: Runtime, jobs: int, executor: str = "local") -> Runtime:
    """How each planned run runs. The plan's bar replaces the per-run bars. Local worker processes
    share the cores (cores / jobs torch threads each); a Ray task uses the CPUs it declares
    (--threads, at least 1) and the GPU Ray gives it ("cuda"), and reads the data directory by an
    absolute path."""
    if executor == "ray":
        return replace(
            runtime,
            progress=False,
            threads=max(1, runtime.threads),
            device="cuda" if runtime.device.startswith("cuda") else runtime.device,
            data_dir=str(Path(runtime.data_dir).resolve()) if runtime.data_dir else None,
        )
    return replace(
        runtime,
        progress=False,
        threads=max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else runtime.threads,
    )


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
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(execute_run, task): task for task in tasks}
            progress.started(f"{jobs} runs at a time")
            for future in as_completed(futures):
                outcomes.record(futures[future], future.result)
    return outcomes.results, outcomes.failures


class Outcomes:
    """The results and failures of a plan's runs, each announced on the plan's bar as it comes."""

    def __init__(self, total: int, progress: PlanProgress):
        self.total, self.progress = total, progress
        self.results: list[dict[str, Any]] = []
        self.failures: list[str] = []

    def record(self, task: Task, outcome: Callable[[], dict[str, Any]]) -> None:
        """Call `outcome` (the run's result, or its exception) and announce it."""
        try:
            self.results.append(outcome())
            self.progress.finished(task.run.key, announce(self.results[-1], len(self.results), self.total))
        except AvaeError as exc:  # from a Ray task: the task's error, whose `cause` is avae's own
            self.failures.append(f"{task.run.dir_name}: {getattr(exc, 'cause', None) or exc}")
            self.progress.finished(task.run.key, f"avae: run failed: {self.failures[-1]}")


# --- the Ray executor ----------------------------------------------------------------------------


def import_ray():
    """The `ray` module, or a one-sentence error naming the install command."""
    try:
        import ray  # the optional extra: imported only for --executor ray
    except ImportError:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed; install it with {RAY_INSTALL}"
        ) from None
    return ray


def check_executor(executor: str, address: str | None, device: str, *, need_ray: bool = True) -> None:
    """Refuse an unknown executor, an --address without Ray, a device Ray cannot place and, when
    `need_ray`, a missing Ray, in one sentence each, before anything is written."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise ConfigError("--address names a Ray cluster; give it with --executor ray")
    if executor == "ray" and device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"--executor ray takes --device cpu or cuda (Ray assigns the GPU), got {device!r}")
    if executor == "ray" and need_ray:
        import_ray()


def ray_cluster(
    executor: str, address: str | None, jobs: int, runtime: Runtime
) -> contextlib.AbstractContextManager[RayCluster | None]:
    """A `with` context holding the Ray cluster for --executor ray, else None (the local executor)."""
    return RayCluster(address, jobs, runtime) if executor == "ray" else contextlib.nullcontext()


class RayCluster:
    """The Ray cluster one command runs its tasks on.

    Without `address` it starts a local cluster with room for `jobs` tasks (jobs x the CPUs of one
    task); with one (host:port, "auto" or a ray:// client address) it connects to that cluster. A
    cluster this command started or connected to is let go on exit; one already initialised by the
    caller (a test, a notebook) is used and left as it is. Every task declares its resources:
    `runtime.threads` CPUs and, on CUDA, 1/jobs of a GPU, so `jobs` runs share each GPU. Ray retries
    a task whose worker or node died; the retry resumes from the run's last checkpoint."""

    def __init__(self, address: str | None, jobs: int, runtime: Runtime):
        self.ray, self.address, self.jobs, self.runtime = import_ray(), address, jobs, runtime
        cuda = runtime.device.startswith("cuda")
        self.resources = {"num_cpus": runtime.threads, "num_gpus": 1 / jobs if cuda else 0}
        self.owned = False

    def __enter__(self) -> RayCluster:
        if not self.ray.is_initialized():
            try:
                if self.address:
                    self.ray.init(address=self.address)
                else:
                    self.ray.init(num_cpus=self.jobs * self.runtime.threads, include_dashboard=False)
            except ConnectionError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"cannot reach the Ray cluster at {self.address} ({first}); start it with "
                    "`ray start --head` or check --address"
                ) from None
            self.owned = True
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.ray.shutdown()

    def slots(self) -> int:
        """How many tasks the cluster runs at a time (its CPUs / the CPUs of one task)."""
        cpus = self.ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.resources["num_cpus"]))

    def remote(self, function: Callable[..., Any]):
        """`function` as a Ray remote function with this command's per-task resources."""
        return self.ray.remote(function).options(**self.resources)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run function(*args) as one task on the cluster and wait for its result."""
        return self.ray.get(self.remote(function).remote(*args))

    def run(self, tasks: list[Task], outcomes: Outcomes) -> None:
        """Submit every task at once (Ray queues what does not fit) and record each as it finishes.
        Each task writes its run directory itself, so a run that finished is kept whatever becomes
        of this driver."""
        execute = self.remote(execute_run)
        pending = {execute.remote(task): task for task in tasks}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                outcomes.record(pending.pop(ref), lambda ref=ref: self.ray.get(ref))


class PlanProgress:
    """One bar over a reproduction's planned work, each run weighted by its estimated cost, with
    elapsed time, time left and the current run. Off when stderr is not a terminal (or progress is
    off): then each finished run is one printed line."""

    def __init__(self, estimates: dict[str, float], parallel: int, enabled: bool):
        self.estimates, self.parallel = estimates, parallel
        self.total, self.done, self.current = max(sum(estimates.values()), 1e-9), 0.0, ""
        self.bar = tqdm(
            total=self.total,
            desc="reproduce",
            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}",
            disable=None if enabled else True,  # None: off unless stderr is a terminal
            ncols=shutil.get_terminal_size().columns,  # 80 where a terminal reports no width
        )
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self.tick, daemon=True)

    def __enter__(self) -> PlanProgress:
        self.refresh()
        self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.ticker.join()
        self.bar.close()

    def tick(self) -> None:
        while not self.stop.wait(1.0):
            self.refresh()

    def left(self) -> float:
        elapsed = self.bar.format_dict["elapsed"]
        if self.done > 0:  # the pace so far, on the cost model's weights
            return elapsed * (self.total - self.done) / self.done
        return max(0.0, self.total / self.parallel - elapsed)

    def refresh(self) -> None:
        self.bar.set_postfix_str(f"~{clock(self.left())} left (estimate), now: {self.current}", refresh=True)

    def started(self, name: str) -> None:
        self.current = name
        self.refresh()

    def finished(self, key: str, line: str) -> None:
        self.done += self.estimates.get(key, 0.0)
        if self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line)
            self.bar.update(self.estimates.get(key, 0.0))
            self.refresh()


def clock(seconds: float) -> str:
    """h:mm:ss or m:ss."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def announce(result: dict[str, Any], done: int, total: int) -> str:
    what = (
        "trained"
        if result["trained"]
        else ("evaluated" if result["evaluated"] else "finished earlier, reused")
    )
    extra = f" ({', '.join(result['evaluated'])})" if result["evaluated"] else ""
    return f"[{done}/{total}] {result['dir']}: {what}{extra}, {result['seconds']} s"

"""How planned runs are executed: one run (`execute_run`: train or resume, evaluate, analyse, into
its own run directory), many runs (`run_tasks`: here, in worker processes, or as Ray tasks), the
index of finished runs, and the overall progress bar. `avae reproduce` and `avae sweep` plan the
runs; this module runs them, with the same reuse and resume rules for every executor."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from avae.core.nets import MemberRandom
from avae.errors import AvaeError, ConfigError, check_choice
from avae.evaluation.analysis import analyse_run, classifier_path, ensure_classifier
from avae.evaluation.evaluate import evaluate_run
from avae.io import file_lock, read_json, write_json
from avae.repro.plan import (
    EvalStep,
    PlannedRun,
    Profile,
    analysis_done,
    eval_steps,
    missing_metrics,
)
from avae.repro.results import INDEX
from avae.training.config import Runtime, TrainConfig
from avae.training.images import image_grid
from avae.training.runs import EVAL, trained_epoch
from avae.training.train import train
from avae.watchdog import reap_on_death

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
        """The metrics this run must have in eval.json."""
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
        "trained_epochs": trained_epoch(run_dir),
        "metrics": {k: {"mean": v["mean"], "sem": v["sem"]} for k, v in record.get("metrics", {}).items()},
    }


def execute_run(task: Task) -> dict[str, Any]:
    """Train (or resume), evaluate and analyse one planned run; index.json accumulates the seconds
    each part took, over every session that worked on the run."""
    cfg, run_dir, runtime = task.run.cfg, task.out / task.run.dir_name, task.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    started, seconds = time.perf_counter(), {}
    trained = trained_epoch(run_dir) < cfg.epochs
    if trained:
        callback = tensorboard_callback(run_dir, cfg) if task.tensorboard else None
        train(cfg, run_dir, resume=True, runtime=runtime, on_epoch=callback)
        seconds["train"] = time.perf_counter() - started
    evaluated = []
    for step in missing_metrics(run_dir, cfg, task.eval_plan()):
        part = time.perf_counter()
        evaluate_run(run_dir, metrics=(step.family,), settings=step.settings, runtime=runtime)
        evaluated.append(step.key)
        seconds[step.key] = time.perf_counter() - part
    if task.profile is not None and task.profile.evaluate and not analysis_done(run_dir, cfg):
        part = time.perf_counter()
        classifier = prepare_classifier(task.profile, task.out, cfg.dataset, runtime)
        if classifier.trained:
            seconds["classifier"] = time.perf_counter() - part
        part = time.perf_counter()
        samples = task.profile.analysis_samples
        analyse_run(run_dir, classifier=classifier.path, samples=samples, runtime=runtime)
        evaluated.append("analysis")
        seconds["analysis"] = time.perf_counter() - part
    locked_update_index(task.out, task.run.key, summary_entry(run_dir, cfg), seconds)
    return {
        "dir": task.run.dir_name,
        "trained": trained,
        "evaluated": evaluated,
        "seconds": round(time.perf_counter() - started, 1),
    }


@dataclass(frozen=True)
class Classifier:
    path: Path
    trained: bool  # by this call (else it was cached)


def prepare_classifier(profile: Profile, out: Path, dataset: str, runtime: Runtime) -> Classifier:
    """The feature classifier of `dataset` for the analysis, trained by the first run that needs it
    (under a file lock, so parallel runs train it once) and cached in OUT; no run waits for it
    before its own training."""
    path = classifier_path(out, dataset)
    cached = path.exists()
    epochs, subset = profile.classifier_epochs, profile.classifier_subset
    ensure_classifier(path, dataset, epochs=epochs, subset=subset, runtime=runtime)
    return Classifier(path, trained=not cached)


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


class Outcomes:
    """The results and failures of a plan's runs, each announced on the plan's bar as it comes."""

    def __init__(self, total: int, progress: PlanProgress):
        self.total, self.progress = total, progress
        self.results: list[dict[str, Any]] = []
        self.failures: list[str] = []

    def record(self, task: Task, outcome: Callable[[], dict[str, Any]]) -> None:
        """Call `outcome` (the run's result, or whatever it raises) and announce it. An error of
        avae's own is the user's to fix and is one sentence; any other exception is a fault of the
        code, whose traceback goes to OUT/failures.log."""
        try:
            result = outcome()
        except Exception as exc:  # every run's outcome is recorded, and the others go on
            cause = getattr(exc, "cause", None) or exc  # a Ray task's error wraps the task's own
            if not isinstance(cause, AvaeError):
                log = log_failure(task, cause)
                cause = f"{type(cause).__name__}: {cause} (not an error avae foresaw; traceback in {log})"
            self.failures.append(f"{task.run.dir_name}: {cause}")
            self.progress.finished(task.run.key, f"avae: run failed: {self.failures[-1]}")
        else:
            self.results.append(result)
            self.progress.finished(task.run.key, announce(result, len(self.results), self.total))


FAILURES = "failures.log"


def log_failure(task: Task, error: BaseException) -> Path:
    """Append the run's name and the error's traceback (with a worker's, where it travelled along)
    to OUT/failures.log; returns the log's path."""
    path = task.out / FAILURES
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    with contextlib.suppress(OSError), path.open("a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {task.run.dir_name}\n{''.join(lines)}\n")
    return path


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
    check_choice("executor", executor, EXECUTORS)
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
        self.reaper = reap_on_death()

    def __enter__(self) -> RayCluster:
        if not self.ray.is_initialized():
            try:
                if self.address:
                    self.ray.init(address=self.address)
                else:
                    self.reaper.__enter__()  # the local cluster's processes die with this driver
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
            if not self.address:
                self.reaper.__exit__(None, None, None)

    def slots(self) -> int:
        """How many tasks the cluster runs at a time (its CPUs / the CPUs of one task)."""
        cpus = self.ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.resources["num_cpus"]))

    def remote(self, function: Callable[..., Any]):
        """`function` as a Ray remote function with this command's per-task resources."""
        return self.ray.remote(function).options(**self.resources)

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

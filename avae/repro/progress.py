"""What a plan's runs come to as they finish: each outcome recorded (`Outcomes`; a fault's traceback
goes to failures.log) and announced on the plan's one progress bar (`PlanProgress`)."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from avae.errors import AvaeError
from avae.repro.execute import Task
from avae.repro.plan import EvalStep, missing_metrics
from avae.training.config import TrainConfig
from avae.training.runs import trained_epoch


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


# The time left is the plan's estimate until this share of its estimated work is done, then the pace
# so far (early on, the pace would be mostly the runs' start: loading data, building models).
PACE_AFTER = 0.02

# Where stderr is not a terminal (a run in the background, its output in a log), a line on the
# plan's progress is printed this often, so that a log of hours-long runs says where they stand.
LOG_EVERY_SECONDS = 600.0


@dataclass(frozen=True)
class Training:
    """One run's training as its plan estimated it: its run directory, the epoch it started this
    plan at, the epochs it trains to, and the estimated seconds of those epochs."""

    run_dir: Path
    start: int
    epochs: int
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    """One run's evaluation as its plan estimated it: its run directory and configuration, the
    figures it must have (`steps`), and the estimated seconds of each part it lacked when the plan
    began, by eval.json key (`avae.repro.costs.eval_part_seconds`; "analysis" is credited only when
    the run ends)."""

    run_dir: Path
    cfg: TrainConfig
    steps: tuple[EvalStep, ...]
    seconds: Mapping[str, float]


# A plan reads its runs' epochs (each checkpoint's header) and figures (eval.json) at most this often.
WATCH_EVERY_SECONDS = 30.0


class WorkWatch:
    """The estimated seconds of work each run has done since its plan began, by key: its share of
    its training estimate by the epochs it has trained since (its run directory's epoch), and the
    estimates of the evaluation parts its eval.json has gained since, read at most every `every`
    seconds, so that a plan's time left moves within hours-long runs."""

    def __init__(
        self,
        runs: Mapping[str, Training],
        evaluations: Mapping[str, Evaluation] | None = None,
        every: float = WATCH_EVERY_SECONDS,
    ) -> None:
        if bad := [key for key, run in runs.items() if run.start >= run.epochs]:
            raise ValueError(f"runs with no training left cannot be watched: {bad}")
        self.runs, self.evaluations, self.every = dict(runs), dict(evaluations or {}), every
        self.read_at = -float("inf")
        self.seen: dict[str, float] = {}
        self.trained: dict[str, float] = {}
        self.evaluated: dict[str, float] = {}

    @classmethod
    def of_tasks(
        cls,
        tasks: list[Task],
        parts: Mapping[str, tuple[float, float]],
        eval_parts: Mapping[str, Mapping[str, float]] | None = None,
    ) -> WorkWatch:
        """A watch over the tasks' runs that have training left (`parts`: each run's estimated
        (training, evaluation) seconds, by key) and over those with evaluation parts left
        (`eval_parts`: each run's estimated seconds by part, as `avae.repro.costs.eval_parts_left`
        gives them)."""
        runs, evaluations = {}, {}
        for task in tasks:
            key, run_dir = task.run.key, task.out / task.run.dir_name
            seconds = parts.get(key, (0.0, 0.0))[0]
            start = trained_epoch(run_dir)
            if seconds > 0 and start < task.run.cfg.epochs:
                runs[key] = Training(run_dir, start, task.run.cfg.epochs, seconds)
            figures = {part: s for part, s in (eval_parts or {}).get(key, {}).items() if part != "analysis"}
            if figures:
                evaluations[key] = Evaluation(run_dir, task.run.cfg, tuple(task.eval_plan()), figures)
        return cls(runs, evaluations)

    def __call__(self) -> dict[str, float]:
        if time.monotonic() - self.read_at >= self.every:
            self.read_at = time.monotonic()
            self.trained = {key: self.training_done(key) for key in self.runs}
            self.evaluated = {key: self.evaluation_done(key) for key in self.evaluations}
            keys = self.trained.keys() | self.evaluated.keys()
            self.seen = {key: self.trained.get(key, 0.0) + self.evaluated.get(key, 0.0) for key in keys}
        return self.seen

    def training_done(self, key: str) -> float:
        """The estimated seconds of training run `key` has done since its plan began; what was
        seen before, where its run directory cannot be read now (being written) or its training
        was already all done."""
        run, before = self.runs[key], self.trained.get(key, 0.0)
        if before >= run.seconds:
            return before
        try:
            epoch = trained_epoch(run.run_dir)
        except (AvaeError, OSError, ValueError):  # no news
            return before
        fraction = (epoch - run.start) / (run.epochs - run.start)
        return run.seconds * min(1.0, max(0.0, fraction))

    def evaluation_done(self, key: str) -> float:
        """The estimated seconds of the evaluation parts run `key` lacked when its plan began and
        has in its eval.json now; what was seen before where eval.json cannot be read now."""
        evaluation, before = self.evaluations[key], self.evaluated.get(key, 0.0)
        if before >= sum(evaluation.seconds.values()):
            return before
        try:
            lacking = {
                step.key
                for step in missing_metrics(evaluation.run_dir, evaluation.cfg, list(evaluation.steps))
            }
        except (AvaeError, OSError, ValueError, AttributeError, TypeError):  # no news (or not a record)
            return before
        return sum(seconds for part, seconds in evaluation.seconds.items() if part not in lacking)


class PlanProgress:
    """One bar over a reproduction's planned work, each run weighted by its estimated cost, with
    elapsed time, time left and the current run. Where stderr is not a terminal the bar is off: each
    finished run is one printed line, and every `log_every` seconds one line says how many runs have
    ended (finished or failed), the time elapsed and the time left. With progress off, only the
    finished runs' lines. `estimates`: the seconds of each run that will be run, by key. `watch`,
    if given, says how many of those seconds each unfinished run has done so far (`WorkWatch`):
    the bar and the time left count them, not only the runs that ended."""

    def __init__(
        self,
        estimates: dict[str, float],
        parallel: float,
        enabled: bool,
        log_every: float = LOG_EVERY_SECONDS,
        watch: Callable[[], Mapping[str, float]] | None = None,
    ):
        self.estimates, self.parallel, self.watch = estimates, parallel, watch
        self.total, self.done, self.current = max(sum(estimates.values()), 1e-9), 0.0, ""
        self.ended: set[str] = set()
        # wall seconds, as the plan's estimate said: no sooner than its longest run (`plan_seconds`)
        self.planned = max(sum(estimates.values()) / parallel, *estimates.values(), 0.0)
        self.runs_done, self.began = 0, time.monotonic()
        self.busy, self.busy_at = 0.0, self.began  # run-seconds in flight so far (`account`), and when
        self.accounting = threading.Lock()  # the ticker's thread and the caller's both account
        self.bar = tqdm(
            total=self.total,
            desc="reproduce",
            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}",
            disable=None if enabled else True,  # None: off unless stderr is a terminal
            ncols=shutil.get_terminal_size().columns,  # 80 where a terminal reports no width
        )
        self.log_every = log_every if enabled and self.bar.disable else None
        self.logged = self.began
        self.printing = threading.Lock()  # the ticker's lines and the finished runs' lines, whole
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
        while not self.stop.wait(min(1.0, self.log_every or 1.0)):
            self.refresh()
            if self.log_every is not None and time.monotonic() - self.logged >= self.log_every:
                self.logged = time.monotonic()
                self.log_line(self.status_line())

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def partial(self) -> dict[str, float]:
        """The estimated seconds each unfinished run has done so far, as the watch says."""
        partial = self.watch() if self.watch is not None else {}
        return {key: seconds for key, seconds in partial.items() if key not in self.ended}

    def work_done(self) -> float:
        """The estimated seconds of the plan done: the runs that ended, and what the watch says the
        others have done so far."""
        return self.done + sum(self.partial().values())

    def longest_left(self) -> float:
        """The estimated seconds left of the unfinished run with the most left: its epochs follow
        one another, however many runs share the plan."""
        partial = self.partial()
        unfinished = (key for key in self.estimates if key not in self.ended)
        return max((self.estimates[key] - partial.get(key, 0.0) for key in unfinished), default=0.0)

    def paced(self, work: float) -> bool:
        """Whether enough work is done for the pace so far to give the time left."""
        return work > 0 and work >= PACE_AFTER * self.total

    def in_flight(self) -> float:
        """How many runs go at once now: `parallel`, or fewer when fewer are unfinished."""
        return min(self.parallel, len(self.estimates) - len(self.ended))

    def account(self) -> float:
        """The run-seconds so far: each second of wall time times the runs in flight then, so that
        a stretch with one run left counts once and a stretch with two side by side twice."""
        with self.accounting:
            now = time.monotonic()
            self.busy += (now - self.busy_at) * self.in_flight()
            self.busy_at = now
            return self.busy

    def left(self, work: float | None = None) -> float:
        """The wall seconds left: once enough work is done (`paced`), at one run's pace so far (the
        run-seconds per estimated second done, `account`), what is left shared by the runs in
        flight, but never less than the run with the most left takes on its own; before that, what
        is left of the plan's estimate."""
        elapsed, work = self.elapsed(), self.work_done() if work is None else work
        if not self.paced(work):
            return max(0.0, self.planned - elapsed)
        at_once = self.in_flight()
        if at_once <= 0:
            return 0.0
        per_run = self.account() / work  # wall seconds one run takes per estimated second
        return max(self.total - work, at_once * self.longest_left()) * per_run / at_once

    def status_line(self) -> str:
        """Where the plan stands, for a log: the time of day, runs ended, time elapsed and left."""
        return (
            f"{time.strftime('%H:%M:%S')} {self.runs_done} of {len(self.estimates)} runs ended, "
            f"{clock(self.elapsed())} elapsed, {self.left_text(self.work_done())}"
            + (f", now: {self.current}" if self.current else "")
        )

    def left_text(self, work: float | None = None) -> str:
        """The time left, or, while too little work is done to pace it (`paced`) and the estimate
        has passed, that estimate."""
        work = self.work_done() if work is None else work
        if not self.paced(work) and 0 < self.planned < self.elapsed():
            return f"past the estimate of {clock(self.planned)}"
        return f"~{clock(self.left(work))} left (estimate)"

    def refresh(self) -> None:
        work = self.work_done()
        self.bar.n = min(self.total, work)
        self.bar.set_postfix_str(f"{self.left_text(work)}, now: {self.current}", refresh=True)

    def started(self, name: str) -> None:
        self.current = name
        self.refresh()

    def finished(self, key: str, line: str) -> None:
        self.account()  # the seconds up to now with this run still in flight
        self.ended.add(key)  # first: the ticker never counts its epochs and its estimate at once
        self.done += self.estimates.get(key, 0.0)
        self.runs_done += 1
        if self.bar.disable:
            self.log_line(line)
        else:
            self.bar.write(line)
            self.refresh()

    def log_line(self, line: str) -> None:
        with self.printing:
            print(line, flush=True)


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

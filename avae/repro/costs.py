"""What a planned run will cost: the cost model behind `avae reproduce --dry-run`, the progress
bar's time remaining and a report's "fill" estimate.

Training is timed, in this order of preference, by the run's own latest epochs (a resumed run), by
finished runs in the same --out that cost the same (`Measured`), and by the fitted per-step cost of
`avae bench`. On a CPU, training that these put above PROBE_ABOVE_SECONDS is also timed by a few of
the run's own steps on this machine (`avae.repro.probe`), and the slower figure counts: epochs timed
earlier may have run on another machine. Evaluation is timed by what alike runs' parts took
(index.json), else by the estimators' own cost model (`avae.evaluation.cost_model.metric_seconds`);
on a CPU, when that model puts it above PROBE_ABOVE_SECONDS, each part is the larger of the two
after the model is scaled to this machine (`part_factors`: IWAE with the run's own model, and AIS
and BDMC by a step of their own, at the run's shape; the rest by IWAE's rate). Each
training, evaluation and analysis call has a fixed cost besides its steps, and a plan as a whole more
(`plan_seconds`): training the feature classifiers and starting the executor (worker processes, Ray).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avae.core.models import MODELS
from avae.data.datasets import SPLIT_SIZES
from avae.evaluation.analysis import classifier_path
from avae.evaluation.cost_model import decoder_rate, device_kind, metric_seconds, test_points, train_points
from avae.io import read_json
from avae.likelihood.scoring import EvalSettings
from avae.repro.plan import EvalStep, PlannedRun, Profile, RunStatus, eval_steps, missing_metrics, status_of
from avae.repro.probe import PROBE_ABOVE_SECONDS, Probe
from avae.repro.results import INDEX
from avae.training.config import TrainConfig, make_config
from avae.training.runs import CONFIG, METRICS, read_metrics

# Seconds per training step (batch 100, fp32, one CPU thread) as a + b * S for S members, fitted
# to `avae bench`'s figures in benchmarks/bench.json when this checkout has them; otherwise the
# model's built-in figure in the registry (`cpu_step_ms`: for the benchmarked models about twice the
# slowest measured on the 2-core development machine; AVB-AC's is derived from a measured ratio to
# AVAE's), or the dearest registered one's. GPU: fitted to the
# committed H200 benchmark's graphed steps (`gpu_step_seconds`), else GPU_STEP_MS per step.
BENCH_JSON = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.json"
GPU_BENCH_JSON = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu-h200" / "gpu_bench.json"
BATCH = 100
GPU_STEP_MS = 10.0  # without a GPU benchmark: an eager CUDA step, a pessimistic figure

# Fixed costs, measured for issue 20 on the shared 2-core development machine as process time with
# one torch thread (what they take on an idle core; smoke-profile runs, 2 members):
TRAIN_CALL_SECONDS = 0.1  # a training call beyond its steps: model, checkpoint, card, sample grid
# On CUDA a training call also loads its data to the device and captures its graphs: measured on one
# H200 (2026-12-04, paper-scale runs, results/measurement/logs): 10-14 s beyond the epochs' own
# seconds for a process's second and later runs, 20-24 s for its first.
GPU_TRAIN_CALL_SECONDS = 12.0
EVAL_CALL_SECONDS = 0.1  # an evaluation call beyond its passes: load the run, eval.json, card (0.07)
ANALYSIS_SECONDS = 1.1  # an analysis beyond its passes: Frechet distances, grids (1.06-1.21)
# The feature classifier: trained at this many images per second (batch 128: 9.2 steps/s), then
# tested on the 10,000 test images (1 epoch on 2,000 images took 8.0 s in all). CUDA: a guess.
CLASSIFIER_IMAGES_PER_SECOND = {"cpu": 1.2e3, "cuda": 1.0e5}
CLASSIFIER_TEST_SECONDS = {"cpu": 6.5, "cuda": 1.0}
# Starting the executor, wall time measured here (the machine shared, load about 5): a worker process
# (spawned for local --jobs > 1, or Ray's) importing avae took 4.9-7.0 s (2.5-3.4 s of process
# time), the workers side by side, one per core; Ray's local cluster took 8.4-9.9 s to start
# (`ray.init(num_cpus=2, include_dashboard=False)`, Ray 2.60, first task included) and 1.3-1.5 s to
# stop. It waits on its own processes more than it computes, so an idle machine is hardly faster.
WORKER_START_SECONDS = 5.0
RAY_START_SECONDS = 10.0


def builtin_step_ms(model: str) -> tuple[float, float]:
    """The registry's built-in CPU step cost of `model`, (a, b) ms for a + b * S members; a model
    without one costs as the dearest registered model."""
    known = [cls.cpu_step_ms for cls in MODELS.values() if cls.cpu_step_ms is not None]
    return MODELS[model].cpu_step_ms or max(known)


def fit_step_cost(entries: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Least-squares a + b * S (seconds per step) through measured (S, ms/step) points."""
    points = [(e["members"], e["ms_per_step"] / 1e3) for e in entries]
    if not points:
        return None
    if len(points) == 1:
        s, t = points[0]
        return 0.0, t / s
    n = len(points)
    mean_s = sum(p[0] for p in points) / n
    mean_t = sum(p[1] for p in points) / n
    var = sum((p[0] - mean_s) ** 2 for p in points)
    slope = sum((p[0] - mean_s) * (p[1] - mean_t) for p in points) / var
    return max(0.0, mean_t - slope * mean_s), max(slope, 1e-9)


def bench_entries(model: str, bench: Path) -> list[dict[str, Any]]:
    try:
        results = json.loads(bench.read_text()) if bench.exists() else {}
    except (OSError, ValueError):
        return []
    return [
        e
        for e in results.get("training", [])
        if e.get("model") == model and e.get("precision") == "fp32" and not e.get("compile")
    ]


def gpu_step_seconds(model: str, members: int, bench: Path = GPU_BENCH_JSON) -> float:
    """Seconds per graphed CUDA training step, fitted through the committed GPU benchmark's
    (S, graphed ms) points of `model` (measured on one H200), plus 5% for the per-epoch test pass;
    GPU_STEP_MS per step without them."""
    try:
        results = json.loads(bench.read_text()) if bench.exists() else {}
    except (OSError, ValueError):
        results = {}
    entries = [
        {"members": e["members"], "ms_per_step": e["graphed_ms"]}
        for e in results.get("training", [])
        if e.get("model") == model and "graphed_ms" in e
    ]
    fitted = fit_step_cost(entries)
    if fitted is None:
        return GPU_STEP_MS / 1e3 * max(1.0, members / 8)
    a, b = fitted
    return 1.05 * (a + b * members)


# A training epoch's test pass (its test -ELBO) per test image, as a share of a training step's cost
# per training image: a forward pass only (bench.json, 5 members: 0.2 for AVB, 0.39 for the VAE).
TEST_PASS_SHARE = 0.3


def estimate_train_seconds(
    model: str,
    members: int,
    epochs: int,
    train_images: int = 60000,
    device: str = "cpu",
    bench: Path = BENCH_JSON,
    test_images: int = SPLIT_SIZES["test"],
) -> float:
    """Wall time of one training process (`members` seeds of `model` trained together) for
    `epochs` epochs over `train_images` images, with the test pass over `test_images` after each
    epoch."""
    steps = train_images // BATCH
    if device.startswith("cuda"):
        return epochs * steps * gpu_step_seconds(model, members) + GPU_TRAIN_CALL_SECONDS
    entries = bench_entries(model, bench)
    fitted = fit_step_cost(entries)
    if fitted is None:
        a_ms, b_ms = builtin_step_ms(model)
        a, b = a_ms / 1e3, b_ms / 1e3
        eval_s = TEST_PASS_SHARE * steps * (a + b * members) * test_images / train_images
    else:
        a, b = fitted
        per_10k = max(e["test_pass_s_per_10k"] / e["members"] for e in entries)
        eval_s = members * per_10k * test_images / 10_000
    return float(epochs * (steps * (a + b * members) + eval_s)) + TRAIN_CALL_SECONDS


RECENT_EPOCHS = 10  # a run's latest epochs time the epochs it has left


def measured_epoch_seconds(run_dir: Path, device: str) -> float | None:
    """The pace of the run's latest recorded epochs (metrics.csv times every epoch in wall seconds)
    if the run started on the same kind of device (config.json); None for a run with no epoch yet.
    The pace is their lower quartile, not their median: an epoch timed beside other work, at a low
    priority, or while its process was paused only takes longer than the run's own pace, never
    less, so the fast end of the latest epochs is what the command that resumes the run gives it
    (measured: epochs of 36-44 s on this project's CPU recorded as 100-3,456 s under such loads)."""
    metrics, config = run_dir / METRICS, run_dir / CONFIG
    if not (metrics.exists() and config.exists()):
        return None
    if not same_device_kind(read_json(config).get("device", ""), device):
        return None
    per_epoch = {row["epoch"]: float(row["seconds"]) for row in read_metrics(metrics)}
    return lower_quartile([per_epoch[epoch] for epoch in sorted(per_epoch)[-RECENT_EPOCHS:]])


def same_device_kind(recorded: object, device: str) -> bool:
    return str(recorded).split(":")[0] == device.split(":")[0]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def lower_quartile(values: list[float]) -> float | None:
    """The lower quartile of `values`; of two, the smaller: their quartile would lie a quarter of
    the way to the larger, so one slow epoch of two would set most of it (measured: epochs of 269
    and 1,554 s, the second paused for 1,292 s, timed a run at 590 s an epoch)."""
    if len(values) < 3:
        return min(values) if values else None
    return statistics.quantiles(values, n=4, method="inclusive")[0]


@dataclass
class Measured:
    """What runs costing the same as a planned run (same model, members, training and test images,
    in the same --out, on the same kind of device) took: seconds per epoch, and the seconds of each
    evaluation part (index.json); the estimates use them before the cost model."""

    epoch_seconds: float | None = None
    part_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def alike(cls, run: PlannedRun, out: Path, device: str) -> Measured:
        index = out / INDEX
        entries = read_json(index).get("runs", {}) if index.exists() else {}
        alike = [
            entry
            for key, entry in entries.items()
            if key != run.key and costs_alike(run.cfg, out / entry["dir"], device)
        ]
        epochs = [measured_epoch_seconds(out / e["dir"], device) for e in alike]
        parts = {part for e in alike for part in e.get("seconds", {})}
        return cls(
            median([s for s in epochs if s is not None]),
            {p: median([e["seconds"][p] for e in alike if p in e.get("seconds", {})]) for p in parts},
        )


def costs_alike(cfg: TrainConfig, run_dir: Path, device: str) -> bool:
    """Whether the run in `run_dir` started on the same kind of device as `device` and trains and
    evaluates as much as `cfg` does."""
    path = run_dir / CONFIG
    if not path.exists():
        return False
    record = read_json(path)
    if not same_device_kind(record.get("device", ""), device):
        return False
    other = make_config(record["config"])
    shape = (other.model.name, len(other.seeds), other.train_subset, other.test_subset, other.batch_size)
    return shape == (cfg.model.name, len(cfg.seeds), cfg.train_subset, cfg.test_subset, cfg.batch_size)


def estimate_eval_seconds(
    run: PlannedRun,
    profile: Profile,
    device: str,
    steps: list[EvalStep],
    measured: Measured | None = None,
    probe: Probe | None = None,
) -> float:
    """Evaluation and analysis time of the steps a run still needs: the sum of `eval_part_seconds`."""
    return sum(eval_part_seconds(run, profile, device, steps, measured, probe).values())


def eval_part_seconds(
    run: PlannedRun,
    profile: Profile,
    device: str,
    steps: list[EvalStep],
    measured: Measured | None = None,
    probe: Probe | None = None,
) -> dict[str, float]:
    """Seconds of each evaluation step a run still needs, by its eval.json key, and of its analysis
    ("analysis"): what alike runs took for each part (`measured`), else the cost model's figure
    (each part a call of its own, as `execute_run` makes them). On a CPU, when the cost model puts
    the whole over PROBE_ABOVE_SECONDS, `probe` scales its figures to this machine (`part_factors`), and
    each part is the larger of that and what alike runs took (which may have been timed on another
    machine)."""
    test, members, model = test_points(run.cfg), len(run.cfg.seeds), run.cfg.model.name
    took = measured.part_seconds if measured else {}
    settings = {step.key: EvalSettings(**{**step.settings, "k": (1, profile.iwae_k)}) for step in steps}
    modelled = {
        step.key: EVAL_CALL_SECONDS
        + metric_seconds(step.family, settings[step.key], test, members, device, model)
        for step in steps
    }
    modelled["analysis"] = ANALYSIS_SECONDS + 3 * profile.analysis_samples * members / decoder_rate(device)
    factors = part_factors(probe, device, steps, settings, run.cfg, sum(modelled.values()))
    if factors is None:
        return {key: took.get(key) or seconds for key, seconds in modelled.items()}
    return {key: max(took.get(key) or 0.0, factors[key] * seconds) for key, seconds in modelled.items()}


def eval_parts_left(
    run: PlannedRun, profile: Profile, out: Path, device: str, probe: Probe | None = None
) -> dict[str, float]:
    """`eval_part_seconds` of the steps the run in `out` still lacks, timed by alike runs there
    (`Measured`) before the cost model: what `estimate_run_seconds` sums ({} for a run with nothing
    left, or a profile that evaluates nothing)."""
    status, _ = status_of(run, profile, out)
    if status in (RunStatus.FINISHED, RunStatus.DIVERGED, RunStatus.PUBLISHED) or not profile.evaluate:
        return {}
    todo = missing_metrics(out / run.dir_name, run.cfg, eval_steps(run, profile))
    return eval_part_seconds(run, profile, device, todo, Measured.alike(run, out, device), probe)


def part_factors(
    probe: Probe | None,
    device: str,
    steps: list[EvalStep],
    settings: dict[str, EvalSettings],
    cfg: TrainConfig,
    modelled: float,
) -> dict[str, float] | None:
    """How many times the cost model's figure each evaluation part (by eval.json key, and the
    "analysis") of a run of `cfg` takes on this machine: on a CPU, when the cost model puts the
    parts at over PROBE_ABOVE_SECONDS (`modelled`) in all, `probe`'s measured factors
    (`Probe.part_factor`: IWAE, AIS and BDMC timed at the run's shape, the rest by IWAE's rate);
    otherwise None (the cost model's figures stand, and nothing is timed)."""
    if probe is None or device_kind(device) != "cpu" or modelled <= PROBE_ABOVE_SECONDS:
        return None
    members, points = len(cfg.seeds), test_points(cfg)
    factors = {
        step.key: probe.part_factor(step.family, settings[step.key], members, points, cfg.model)
        for step in steps
    }
    return factors | {"analysis": probe.eval_factor()}


def probed_train_seconds(probe: Probe, cfg: TrainConfig, members: int, epochs: int, images: int) -> float:
    """`estimate_train_seconds` with the step timed on this machine by `probe`."""
    steps = images // cfg.batch_size
    per_epoch = steps * probe.step_seconds(cfg, members) * (1 + TEST_PASS_SHARE * test_points(cfg) / images)
    return epochs * per_epoch + TRAIN_CALL_SECONDS


def train_seconds_here(
    train_s: float, timed: bool, probe: Probe | None, cfg: TrainConfig, members: int, epochs: int, device: str
) -> float:
    """The training figure `train_s` (the run's share of `members` members, for `epochs` epochs),
    checked on this machine: on a CPU, when the whole pack's figure is over PROBE_ABOVE_SECONDS,
    `probe` times the run's own steps. A figure `timed` from epochs that ran (the run's own or
    alike runs') counts only where slower, since they may have run on another machine; a modelled
    one is replaced."""
    share = len(cfg.seeds) / members
    if probe is None or device_kind(device) != "cpu" or train_s / share <= PROBE_ABOVE_SECONDS:
        return train_s
    probed = probed_train_seconds(probe, cfg, members, epochs, train_points(cfg)) * share
    return max(train_s, probed) if timed else probed


def estimate_run_seconds(
    run: PlannedRun,
    profile: Profile,
    out: Path,
    device: str,
    measured: bool = True,
    pack: int = 0,
    probe: Probe | None = None,
) -> tuple[float, float]:
    """(training, evaluation) seconds the run still needs; with `measured`, timed by the run's own
    latest epochs, else by alike runs in `out` (`Measured`), else by the cost model; on a CPU,
    `probe` times long training on this machine too (the slower figure counts) and scales a long
    evaluation's cost model (`estimate_eval_seconds`). `pack`: the members of the pack the run
    trains in (`avae.training.packs`; 0: alone), whose cost the cost model shares among its runs by
    members (a packed run's metrics.csv records its share)."""
    status, epoch = status_of(run, profile, out)
    if status in (RunStatus.FINISHED, RunStatus.DIVERGED, RunStatus.PUBLISHED):
        return 0.0, 0.0
    cfg = run.cfg
    alike = Measured.alike(run, out, device) if measured else None
    train_s = 0.0
    if epoch < cfg.epochs:
        left, members = cfg.epochs - epoch, max(pack, len(cfg.seeds))
        images, share = train_points(cfg), len(cfg.seeds) / members
        own = measured_epoch_seconds(out / run.dir_name, device) if measured and epoch else None
        per_epoch = own or (alike.epoch_seconds if alike else None)
        if per_epoch:
            train_s = left * per_epoch
        else:
            whole = estimate_train_seconds(
                cfg.model.name, members, left, images, device, test_images=test_points(cfg)
            )
            train_s = whole * share
        train_s = train_seconds_here(train_s, bool(per_epoch), probe, cfg, members, left, device)
    if not profile.evaluate:
        return train_s, 0.0
    todo = missing_metrics(out / run.dir_name, cfg, eval_steps(run, profile))
    return train_s, estimate_eval_seconds(run, profile, device, todo, alike, probe)


def classifier_seconds(epochs: int, images: int, device: str) -> float:
    """Wall time of training the feature classifier for `epochs` epochs over `images` images and
    testing it."""
    kind = device_kind(device)
    return epochs * images / CLASSIFIER_IMAGES_PER_SECOND[kind] + CLASSIFIER_TEST_SECONDS[kind]


def start_seconds(executor: str, jobs: int) -> float:
    """Wall time of starting the executor of `jobs` runs at a time: none for local runs in this
    process; the workers' imports for local worker processes; Ray's cluster and its workers."""
    if executor == "local" and jobs == 1:
        return 0.0
    workers = WORKER_START_SECONDS * math.ceil(jobs / (os.cpu_count() or 1))
    return workers + (RAY_START_SECONDS if executor == "ray" else 0.0)


def classifiers_seconds(profile: Profile, out: Path, device: str) -> float:
    """Compute time of the feature classifiers the profile's analyses need and `out` does not cache
    yet (each trained once, by the first run that reaches its analysis)."""
    images = profile.classifier_subset or SPLIT_SIZES["train"]
    return sum(
        classifier_seconds(profile.classifier_epochs, images, device)
        for dataset in (profile.datasets if profile.evaluate else ())
        if not classifier_path(out, dataset).exists()
    )


def host_seconds(training: Iterable[float], device: str) -> float:
    """The part of a plan's compute that runs on the host rather than on a GPU, given each run's
    training seconds still to do: on CUDA, each training call's fixed cost (its data to the device,
    the graphs' capture); nothing on a CPU, where all of it is the host's."""
    if not device.startswith("cuda"):
        return 0.0
    return GPU_TRAIN_CALL_SECONDS * sum(1 for seconds in training if seconds > 0)


def runs_at_once(compute: float, host: float, parallel: int, device: str, executor: str) -> float:
    """How many seconds of the plan's `compute` pass per second of wall time with `parallel` runs
    at a time. On a CPU (a core each) and under Ray (whose tasks may each have a GPU of their own):
    `parallel`. Local processes on one CUDA device time-slice it (their kernels do not overlap), so
    they run side by side only until the GPU is busy: the wall time is the larger of the GPU's part
    of the work (all but `host`) and the work shared by `parallel`. Measured on one H200: 16
    processes of the full profile's Table 1 did in 300 s what one process does alone (GPU-bound);
    8 processes of the quick profile, whose runs are short and mostly the host's, took 93 s for
    about 810 s of their own time (issue 23)."""
    if not device.startswith("cuda") or executor != "local" or parallel <= 1 or compute <= 0:
        return float(parallel)
    return compute / max(compute - min(host, compute), compute / parallel)


def plan_seconds(
    compute: float,
    parallel: int,
    profile: Profile,
    out: Path,
    device: str,
    executor: str,
    jobs: int,
    host: float = 0.0,
    longest: float = 0.0,
) -> float:
    """Wall time of a profile's plan whose runs need `compute` seconds (`estimate_run_seconds`),
    `host` of them on the host (`host_seconds`): with the classifiers still to train, `parallel`
    runs at a time (`runs_at_once`), after the executor has started; nothing when no run has work
    left. No plan ends before its `longest` run, whose epochs follow one another (in a process of
    its own, or in a `--pack`'s): two runs of 1:24 and 0:41 left take 1:24 with --jobs 2, not
    their total halved (1:02, said for the paper profile's last two runs)."""
    if not compute:
        return 0.0
    at_once = runs_at_once(compute, host, parallel, device, executor)
    shared = (compute + classifiers_seconds(profile, out, device)) / at_once
    return max(shared, longest) + start_seconds(executor, jobs)

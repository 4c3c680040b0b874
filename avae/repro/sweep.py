"""`avae sweep`: train every point of a grid of settings, with reproduce's machinery.

A sweep is a list of planned runs without a profile: each point of the grid's Cartesian product is
one configuration (all its seeds trained together as members), run as one task by the local or the
Ray executor (`avae.repro.runner.run_tasks`), in OUT/<the run directory name of `avae reproduce`>. So
the same rules hold: a finished run (checkpoint at the last epoch, every asked-for metric in
eval.json) is reused, an unfinished one resumes, and OUT/index.json lists every run. OUT/sweep.json
lists the points of the last sweep, their run directories and their final test figures.

Grid syntax: `KEY=V1,V2,...` per setting, with the names of `avae train --help` (underscores or
dashes); a list setting such as `hidden` separates its widths by "/" (`hidden=256/64/32,200/200`).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from avae.core.models import MODELS, ModelConfig
from avae.errors import AvaeError, ConfigError
from avae.evaluation.cost_model import metric_seconds, test_points, train_points
from avae.evaluation.evaluate import parse_metrics
from avae.io import write_json
from avae.likelihood.scoring import EvalSettings
from avae.repro.costs import (
    estimate_train_seconds,
    host_seconds,
    part_factors,
    runs_at_once,
    train_seconds_here,
)
from avae.repro.execute import Task
from avae.repro.plan import EvalStep, PlannedRun, missing_metrics, pack_members
from avae.repro.probe import Probe
from avae.repro.progress import PlanProgress, WorkWatch, clock
from avae.repro.ray_cluster import check_executor, ray_cluster
from avae.repro.report.figures import format_table
from avae.repro.results import SWEEP
from avae.repro.runner import default_jobs, run_tasks, train_in_packs, worker_runtime
from avae.training.config import MODEL_KEYS, TRAIN_KEYS, Runtime, TrainConfig, field_types
from avae.training.runs import (
    EVAL,
    checkpoint_epoch,
    divergence_label,
    metric_entries,
    read_divergence,
    read_record,
)

LIST_SEPARATOR = "/"
GRID_KEYS = (MODEL_KEYS | TRAIN_KEYS | {"model"}) - {"seeds"}
FIELD_TYPES = {**field_types(ModelConfig), **field_types(TrainConfig)}
# The eval.json key that shows a metric family is done, at evaluate's default settings.
METRIC_KEYS = {
    "elbo": "neg_elbo",
    "critic": "neg_critic",
    "iwae": f"iwae_k{max(EvalSettings().k)}",
    "sivi": f"sivi_k{EvalSettings().sivi_k}",
    "ais": "ais",
    "bdmc": "bdmc_forward",
}


def parse_grid(items: list[str], given: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """{setting: values} from `KEY=V1,V2` items, each value typed as its setting; a syntax error,
    an unknown setting, a repeated key or value, or a setting also in `given` is refused."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--grid item {item!r} is not KEY=V1,V2,...; e.g. adv_weight=0.01,0.1,1")
        if key == "seeds":
            raise ConfigError(
                "--grid cannot vary seeds: they are every point's members; give them with --seeds"
            )
        if key not in GRID_KEYS:
            raise ConfigError(
                f"--grid: unknown setting {key!r}; use the names of `avae train --help`, e.g. adv_weight"
            )
        if key in grid or key in (given or {}):
            raise ConfigError(f"--grid: {key} is given twice (in --grid or as an option); give it once")
        values = [parse_value(key, v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--grid {key}: no values; give them as {key}=V1,V2")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {key}: a value is listed twice in {text!r}")
        grid[key] = values
    if not grid:
        raise ConfigError("--grid needs at least one KEY=V1,V2 item")
    return grid


def parse_value(key: str, text: str) -> Any:
    """One grid value as its setting's type: int, float, str, or a "/"-separated list of ints."""
    kind = FIELD_TYPES.get(key, str)
    try:
        if kind is tuple:
            return tuple(int(v) for v in text.split(LIST_SEPARATOR))
        if kind in (int, float):
            return kind(text)
    except ValueError:
        what = f"integers separated by {LIST_SEPARATOR!r}" if kind is tuple else f"a number ({kind.__name__})"
        raise ConfigError(f"--grid {key}: {text!r} is not {what}") from None
    return text


def metric_steps(metrics: tuple[str, ...], model: str) -> list[EvalStep]:
    """The evaluation plan of one sweep run: each asked-for metric the model has, at evaluate's
    default settings, on the run's test points (--test-subset)."""
    cls = MODELS[model]
    skip = {"critic"} if not cls.has_critic else set()
    skip |= {"sivi"} if not cls.semi_implicit else set()
    return [EvalStep(METRIC_KEYS[m], m) for m in metrics if m not in skip]


def plan_sweep(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[tuple[dict[str, Any], PlannedRun]]:
    """(point, planned run) for every point of the grid in order; a point whose configuration is
    invalid is refused in one sentence naming it. Points with one configuration share its run."""
    points = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        try:
            run = PlannedRun({**base, **point}, ["sweep"], honest=False)
        except ConfigError as exc:
            text = ", ".join(f"{k}={shown(v)}" for k, v in point.items())
            raise ConfigError(f"grid point {text}: {exc}") from None
        points.append((point, run))
    return points


def estimate_seconds(
    run: PlannedRun,
    steps: list[EvalStep],
    out: Path,
    device: str,
    pack: int = 0,
    probe: Probe | None = None,
) -> tuple[float, float]:
    """The cost model's (training, evaluation) seconds for what the run still needs: training
    epochs left and missing metrics. `pack`: the members of the pack the run trains in (0: alone),
    whose training time is shared among its runs by members, as
    `avae.repro.costs.estimate_run_seconds` shares it. On a CPU, `probe` times long training on
    this machine and scales long evaluation to it (`part_factors`), as for `avae reproduce`."""
    cfg, run_dir = run.cfg, out / run.dir_name
    if read_divergence(run_dir) is not None:
        return 0.0, 0.0  # not retried
    epoch = checkpoint_epoch(run_dir)
    train = 0.0
    if epoch < cfg.epochs:
        images, members = train_points(cfg), max(pack, len(cfg.seeds))
        whole = estimate_train_seconds(
            cfg.model.name, members, cfg.epochs - epoch, images, device, test_images=test_points(cfg)
        )
        modelled = whole * len(cfg.seeds) / members
        train = train_seconds_here(
            modelled,
            timed=False,
            probe=probe,
            cfg=cfg,
            members=members,
            epochs=cfg.epochs - epoch,
            device=device,
        )
    return train, sum(sweep_eval_parts(run, steps, out, device, probe).values())


def sweep_eval_parts(
    run: PlannedRun, steps: list[EvalStep], out: Path, device: str, probe: Probe | None = None
) -> dict[str, float]:
    """The cost model's seconds of each metric the run in `out` still lacks, by eval.json key; on a
    CPU, `probe` scales a long evaluation to this machine (`part_factors`), as for `avae reproduce`."""
    cfg, run_dir = run.cfg, out / run.dir_name
    if read_divergence(run_dir) is not None:
        return {}
    points, members = test_points(cfg), len(cfg.seeds)
    todo = missing_metrics(run_dir, cfg, steps)
    settings = {step.key: EvalSettings(**step.settings) for step in todo}
    modelled = {
        step.key: metric_seconds(step.family, settings[step.key], points, members, device, cfg.model.name)
        for step in todo
    }
    factors = part_factors(probe, device, todo, settings, cfg, sum(modelled.values()))
    return {key: seconds * (factors[key] if factors else 1.0) for key, seconds in modelled.items()}


def sweep(
    base: dict[str, Any],
    grid: dict[str, list[Any]] | list[str],
    out: str | Path,
    *,
    metrics: str | tuple[str, ...] = ("elbo",),
    runtime: Runtime | None = None,
    jobs: int | None = None,
    executor: str = "local",
    address: str | None = None,
    pack: bool = False,
) -> dict[str, Any]:
    """Train and evaluate every point of `grid` (or of `KEY=V1,V2` items) over the settings `base`,
    one task per configuration, and write OUT/sweep.json; returns its content. Everything is
    checked before anything is written. `pack`, as for `avae.repro.reproduce.reproduce`: the
    configurations that can train together (a grid over seeds, data sets, latent or noise
    dimensions) train as packs in this process and are evaluated as evaluation packs."""
    runtime = runtime or Runtime()
    jobs = default_jobs(runtime.device) if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
    if pack and executor != "local":
        raise ConfigError("--pack trains its packs in this process: use it with --executor local")
    grid = parse_grid(grid, base) if isinstance(grid, list) else grid
    chosen = parse_metrics(metrics)
    points = plan_sweep(base, grid)
    check_executor(executor, address, runtime.device)
    out = Path(out).resolve() if executor == "ray" else Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    runs = {run.key: run for _, run in points}  # one task per distinct configuration
    steps = {key: metric_steps(chosen, run.cfg.model.name) for key, run in runs.items()}
    packed = pack_members(list(runs.values()), out) if pack else {}  # each packed run's pack, in members
    worker = worker_runtime(runtime, jobs, executor)
    # Steps are timed on this machine: not for a Ray cluster elsewhere, whose nodes may differ.
    probe = None if executor == "ray" and address else Probe(worker.threads)
    parts = {
        key: estimate_seconds(run, steps[key], out, runtime.device, packed.get(key, 0), probe)
        for key, run in runs.items()
    }
    estimates = {key: sum(part) for key, part in parts.items()}
    total, host = sum(estimates.values()), host_seconds((t for t, _ in parts.values()), runtime.device)
    at_once = runs_at_once(total, host, max(1, min(jobs, len(runs))), runtime.device, executor)
    print(
        f"avae sweep: {len(points)} points, {len(runs)} runs, "
        f"{sum(1 for s in estimates.values() if s)} with work left; about "
        f"{clock(max(total / at_once, *estimates.values(), 0.0))} on {runtime.device} with --jobs {jobs} "
        f"(estimate{probe.said() if probe else ''})",
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    diverged = {key for key, run in runs.items() if read_divergence(out / run.dir_name) is not None}
    for key in diverged:  # the same settings diverge again at the same step
        print(f"avae sweep: {runs[key].dir_name} diverged earlier and is not retried", file=sys.stderr)
    left = {key: run for key, run in runs.items() if key not in diverged}
    tasks = [Task(run, None, out, worker, steps=steps[key]) for key, run in left.items()]
    eval_parts = {
        key: sweep_eval_parts(run, steps[key], out, runtime.device, probe) for key, run in left.items()
    }
    with (
        ray_cluster(executor, address, jobs, worker) as cluster,
        PlanProgress(
            {key: estimates[key] for key in left},
            cluster.slots() if cluster else at_once,
            enabled=runtime.progress,
            watch=WorkWatch.of_tasks(tasks, parts, eval_parts),
        ) as bar,
    ):
        packs = train_in_packs(tasks, bar, replace(worker, threads=runtime.threads)) if pack else None
        _, failures = run_tasks(packs.tasks if packs else tasks, jobs, bar, cluster)
    if packs is not None:
        failures = [*packs.failures, *failures]
    record = sweep_record(points, grid, base, chosen, out)
    write_json(out / SWEEP, record)
    print(sweep_table(record))
    if failures:
        raise AvaeError(
            f"{len(failures)} of {len(tasks)} runs failed ({'; '.join(failures)}); the others are "
            f"finished: fix the cause and rerun the same command (only those run)"
        )
    print(f"\n{len(points)} points written to {out / SWEEP}")
    return record


def sweep_record(
    points: list[tuple[dict[str, Any], PlannedRun]],
    grid: dict[str, list[Any]],
    base: dict[str, Any],
    metrics: tuple[str, ...],
    out: Path,
) -> dict[str, Any]:
    """sweep.json: the grid, the shared settings and, per point, its run directory and the final
    test figures in its eval.json (mean and sem over members, and each member's value)."""
    entries = []
    for point, run in points:
        have = metric_entries(read_record(out / run.dir_name, EVAL, run.cfg.epochs))
        figures = {
            key: {
                "mean": have[key].mean,
                "sem": have[key].sem,
                "per_member": {str(m.seed): m.value for m in have[key].per_member},
            }
            for key in (step.key for step in metric_steps(metrics, run.cfg.model.name))
            if key in have
        }
        entry = {"point": point, "dir": run.dir_name, "key": run.key, "figures": figures}
        if (record := read_divergence(out / run.dir_name)) is not None:
            entry["diverged"] = {k: record[k] for k in ("epoch", "step", "seed", "term")}
        entries.append(entry)
    return {"grid": grid, "settings": base, "metrics": list(metrics), "points": entries}


def sweep_table(record: dict[str, Any]) -> str:
    """The points with their figures (mean ± sem over members, nats), one row each."""
    keys = list(record["grid"])
    metric_keys = sorted({k for entry in record["points"] for k in entry["figures"]}) or [
        METRIC_KEYS[m] for m in record["metrics"]
    ]
    rows = [
        [*(shown(entry["point"][k]) for k in keys), entry["dir"]]
        + [
            f"{entry['figures'][m]['mean']:.2f} ± {entry['figures'][m]['sem']:.2f}"
            if m in entry["figures"]
            else missing_cell(entry)
            for m in metric_keys
        ]
        for entry in record["points"]
    ]
    return format_table([*keys, "run", *metric_keys], rows)


def missing_cell(entry: dict[str, Any]) -> str:
    diverged = entry.get("diverged")
    return divergence_label(diverged) if diverged else "-"


def shown(value: Any) -> str:
    """A grid value as written in --grid (a list setting's items joined by "/")."""
    if isinstance(value, (list, tuple)):
        return LIST_SEPARATOR.join(str(v) for v in value)
    return str(value)

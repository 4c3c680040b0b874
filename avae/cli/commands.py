"""The `avae` commands: each turns its parsed options (`avae.cli.parser`) into a call of the library.
Every command has --help; bad input is refused in one sentence before any work starts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avae.bench.cpu import cmd_bench
from avae.cli.options import EVAL_SETTINGS, EVALUATE_OPTIONS, TRAIN_OPTIONS, read_config_file
from avae.cli.parser import build_parser
from avae.core.nets import MemberRandom
from avae.data import datasets as data
from avae.errors import AvaeError, ConfigError, check_choice
from avae.evaluation.analysis import analyse_run, classifier_path, ensure_classifier
from avae.evaluation.cost_model import metric_seconds, points_evaluated, test_points
from avae.evaluation.evaluate import EvalSettings, evaluate_run, parse_metrics
from avae.io import check_writable_dir, os_error_sentence
from avae.repro.costs import classifier_seconds
from avae.repro.publish import publish
from avae.repro.report.figures import format_table
from avae.repro.report.report import write_report
from avae.repro.reproduce import reproduce
from avae.repro.sweep import sweep
from avae.training.config import PRESETS, Runtime, make_config
from avae.training.images import save_image_grid
from avae.training.runs import load_run, metric_entries, read_config, resume_config
from avae.training.train import train


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    return name


def check_threads(args: argparse.Namespace) -> None:
    """Refuse a --threads below 1 or above this machine's cores (left out, torch chooses). On a Ray
    cluster given by --address, the tasks run on its nodes, whose cores this machine cannot see."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(
            f"--threads must be a positive integer, got {threads}; leave it out for torch's choice"
        )
    cores = os.cpu_count() or 1
    if threads > cores and not getattr(args, "address", None):
        raise ConfigError(
            f"--threads {threads} is more than this machine's {cores} CPU cores; give at most {cores}"
        )


def runtime_of(args: argparse.Namespace, *, check_device: bool = True) -> Runtime:
    """The how-to-run settings of a command, in the one object every layer takes."""
    return Runtime(
        device=resolve_device(args.device) if check_device else args.device,
        data_dir=getattr(args, "data_dir", None),
        progress=not getattr(args, "no_progress", False),
        threads=getattr(args, "threads", None) or 0,
        compile=getattr(args, "compile", False),
    )


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if args.preset:
        check_choice("preset", args.preset, PRESETS)
        settings.update(PRESETS[args.preset])
    settings.update(read_config_file(args.config) if args.config else {})
    for flag, _ in TRAIN_OPTIONS:
        key = flag[2:].replace("-", "_")
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    return settings


def cmd_train(args: argparse.Namespace) -> int:
    given = train_overrides(args)
    cfg = resume_config(Path(args.out), given) if args.resume else make_config(given)
    runtime = runtime_of(args)
    check_writable_dir(args.out)
    out = train(cfg, args.out, resume=args.resume, runtime=runtime)
    print(f"run written to {out}")
    return 0


WRITABLE_RUN = "make it writable, or copy the run to a writable folder and give that"


def cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = parse_metrics(args.metrics) + (("bdmc",) if args.bdmc else ())
    given = {}
    for flag, _ in EVALUATE_OPTIONS:
        key = flag[2:].replace("-", "_")
        if key in EVAL_SETTINGS and getattr(args, key) is not None:
            given[key] = getattr(args, key)
    settings, runtime = EvalSettings(**given), runtime_of(args)
    if Path(args.run_dir).is_dir():  # else evaluate_run says it is not a run directory
        check_writable_dir(args.run_dir, "RUN_DIR", WRITABLE_RUN)
    announce_evaluation(Path(args.run_dir), metrics, settings, runtime)
    result = evaluate_run(args.run_dir, metrics=metrics, settings=settings, runtime=runtime)
    print(
        f"{result['model']} on {result['dataset']} ({result['pixels']} pixels, {result['likelihood']} "
        f"decoder), epoch {result['epoch']}; negative log p(x)-type figures in nats, lower is better"
    )
    entries = metric_entries(result)
    rows = []
    for key in result["evaluated"]:
        m = entries[key]
        rows.append(
            [
                key,
                f"{m.kind} ({'log-likelihood' if m.is_log_likelihood else 'NOT a log-likelihood'})",
                f"{m.mean:.2f} ± {m.sem_points:.2f}",
                f"{m.sem:.2f}" if m.members > 1 else "-",
                m.points,
                f"{m.seconds:.1f}",
            ]
        )
    header = ["metric", "what it bounds or estimates", "mean ± sem (points)", "sem (members)", "points", "s"]
    print(format_table(header, rows))
    if "bdmc_reverse" in result["evaluated"]:
        print(f"BDMC gap (reverse - forward, simulated data): {entries['bdmc_reverse'].gap:.3f} nats")
    for note in result["notes"]:
        print(note)
    print(f"written to {Path(args.run_dir) / 'eval.json'}")
    return 0


def announce_evaluation(run_dir: Path, metrics, settings: EvalSettings, runtime: Runtime) -> None:
    """One line with the cost model's estimate before an evaluation starts; past about 10 minutes,
    a second line with the --subset that would take about a minute."""
    if not (run_dir / "config.json").is_file():
        return  # evaluate_run says what is wrong with the directory
    cfg = read_config(run_dir)
    points, members = test_points(cfg), len(cfg.seeds)
    device, model = runtime.device, cfg.model.name
    seconds = sum(metric_seconds(m, settings, points, members, device, model) for m in metrics)
    used = points_evaluated(settings, points)
    print(
        f"avae evaluate: {', '.join(metrics)} on {used} test points x {members} members: "
        f"about {seconds / 60:.1f} min on {runtime.device} (estimate)",
        flush=True,
    )
    if seconds > 600:
        subset = max(1, int(used * 60 / seconds))
        print(f"avae evaluate: that is long; --subset {subset} would take about a minute", flush=True)


def cmd_sample(args: argparse.Namespace) -> int:
    if args.n <= 0:
        raise ConfigError(f"--n must be positive, got {args.n}")
    cfg, model, _ = load_run(args.run_dir, resolve_device(args.device))
    if not 0 <= args.member < len(cfg.seeds):
        raise ConfigError(f"--member must be in 0..{len(cfg.seeds) - 1} for this run, got {args.member}")
    device = next(model.parameters()).device
    images = model.sample(args.n, MemberRandom([args.seed] * len(cfg.seeds), "samples", device))
    out = args.out or Path(args.run_dir) / "samples.png"
    path = save_image_grid(images[args.member].float().cpu().numpy(), out, rows=max(1, round(args.n**0.5)))
    print(f"{args.n} samples of member {args.member} (seed {cfg.seeds[args.member]}) written to {path}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    names = data.DATASETS if args.dataset == "all" else (args.dataset,)
    for name in names:
        if name not in data.DATASETS:
            raise ConfigError(f"unknown dataset {name!r}; choose mnist, fashion-mnist or all")
    for name in names:
        data.fetch(name, args.data_dir)
        print(f"{name}: verified in {data.resolve_data_dir(args.data_dir) / name}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    rows = data.describe(args.data_dir)
    print(f"data directory: {data.resolve_data_dir(args.data_dir)}")
    print(
        format_table(
            ["dataset", "file", "present", "verified", "source"],
            [[r["dataset"], r["file"], r["present"], r["verified"], r.get("source") or "-"] for r in rows],
        )
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    # a dry run estimates for any device; Ray's workers, not this driver, need the GPU
    check_device = not args.dry_run and args.executor == "local"
    if not args.dry_run:
        check_writable_dir(args.out)
    reproduce(
        args.profile,
        args.out,
        runtime=runtime_of(args, check_device=check_device),
        jobs=args.jobs,
        dry_run=args.dry_run,
        tensorboard=args.tensorboard,
        executor=args.executor,
        address=args.address,
        experiments=args.experiments,
        train_only=args.train_only,
        run_names=args.runs,
        pack=args.pack,
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """`avae sweep`: the train options are the settings every point shares, --grid what varies."""
    check_writable_dir(args.out)
    sweep(
        train_overrides(args),
        args.grid,
        args.out,
        metrics=args.metrics,
        runtime=runtime_of(args, check_device=args.executor == "local"),
        jobs=args.jobs,
        executor=args.executor,
        address=args.address,
        pack=args.pack,
    )
    return 0


def cmd_analyse(args: argparse.Namespace) -> int:
    runtime = runtime_of(args)
    run_dir = Path(args.run_dir)
    cfg, _, _ = load_run(run_dir)
    check_writable_dir(run_dir, "RUN_DIR", WRITABLE_RUN)
    classifier = None  # the user's own data has no labels, so no classifier features
    if cfg.dataset in data.DATASETS:
        if args.classifiers:
            path = Path(args.classifiers) / classifier_path(args.classifiers, cfg.dataset).name
        else:
            path = classifier_path(run_dir.resolve().parent, cfg.dataset)
        if not path.exists():
            announce_classifier(path, cfg.dataset, args.classifier_epochs, runtime.device)
        classifier = ensure_classifier(path, cfg.dataset, epochs=args.classifier_epochs, runtime=runtime)
    analyse_run(run_dir, classifier=classifier, samples=args.samples, runtime=runtime)
    print(f"written to {run_dir / 'analysis.json'}")
    return 0


def announce_classifier(path: Path, dataset: str, epochs: int, device: str) -> None:
    """One line before the feature classifier trains: what, how long (estimate), where it is kept."""
    check_writable_dir(path.parent, "--classifiers")
    images = data.SPLIT_SIZES["train"]
    print(
        f"avae analyse: training the feature classifier for {dataset} once ({epochs} epochs on {images} "
        f"images, about {classifier_seconds(epochs, images, device) / 60:.1f} min on {device}, estimate); "
        f"it is kept in {path} for later runs",
        flush=True,
    )


def cmd_publish(args: argparse.Namespace) -> int:
    print(f"published to {publish(args.out, args.dest)}")
    return 0


def cmd_bench_checked(args: argparse.Namespace) -> int:
    """`avae bench`, refused at once when its --out cannot be written (not after the measurements)."""
    check_writable_dir(args.out)
    return cmd_bench(args)


def cmd_report(args: argparse.Namespace) -> int:
    print(f"report written to {write_report(args.dir)}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
    "data_fetch": cmd_data_fetch,
    "data_info": cmd_data_info,
    "reproduce": cmd_reproduce,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "publish": cmd_publish,
    "analyse": cmd_analyse,
    "bench": cmd_bench_checked,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser(HANDLERS).parse_args(argv)
    threads = torch.get_num_threads()
    try:
        check_threads(args)
        if getattr(args, "threads", None):  # the whole command, evaluation and analysis included
            torch.set_num_threads(args.threads)
        return args.func(args)
    except AvaeError as exc:
        print(f"avae: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the last line of defence: a file the precise checks did not foresee
        print(f"avae: error: {os_error_sentence(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "avae: interrupted; finished epochs are checkpointed, continue with --resume",
            file=sys.stderr,
        )
        return 130
    finally:
        torch.set_num_threads(threads)  # as it was, for a caller in the same process
